#include "model/data/make_source.h"

#include "core/error.h"
#include "model/data/file_source.h"
#include "model/data/retrieval.h"

namespace ringattn {

std::unique_ptr<BatchSource> make_batch_source(const TrainConfig& cfg) {
  std::unique_ptr<BatchSource> src;
  switch (cfg.data.source) {
    case DataSource::Retrieval: {
      RetrievalOptions o;
      o.key_digits = int(cfg.data.retrieval.key_digits);
      o.value_digits = int(cfg.data.retrieval.value_digits);
      o.num_records = cfg.data.retrieval.num_records;
      o.questions = cfg.data.retrieval.questions;
      o.key_vocab = cfg.data.retrieval.key_vocab;
      o.value_vocab = cfg.data.retrieval.value_vocab;
      o.loss_on_all_tokens = cfg.data.retrieval.loss_on_all_tokens;
      o.answer_marker = cfg.data.retrieval.answer_marker;
      o.record_format = cfg.data.retrieval.record_format;
      src = std::make_unique<RetrievalSource>(o, cfg.seed);
      break;
    }
    case DataSource::Text:
      src = std::make_unique<TextFileSource>(cfg.data.text_files, cfg.seed);
      break;
    case DataSource::Tokens:
      src = std::make_unique<TokenFileSource>(std::vector<std::string>{cfg.data.token_file},
                                              cfg.model.vocab_size, cfg.seed);
      break;
  }
  RA_CHECK(src, "data.source: unknown source {}", int(cfg.data.source));
  RA_CHECK(cfg.model.vocab_size >= src->vocab_size(),
           "model.vocab_size = {} is smaller than the vocabulary of the data, {} ({})",
           cfg.model.vocab_size, src->vocab_size(), src->describe());
  return src;
}

BatchRequest make_batch_request(const TrainConfig& cfg, const Mesh& mesh, int64_t step, int micro,
                                int64_t seq_len, Split split, int64_t batch_size) {
  if (batch_size < 0) batch_size = cfg.train.batch_size;
  BatchRequest r;
  r.step = step;
  r.split = split;
  r.data_ranks = mesh.size(Axis::DP) * mesh.size(Axis::FSDP);
  r.data_rank = mesh.coord(Axis::DP) * mesh.size(Axis::FSDP) + mesh.coord(Axis::FSDP);
  r.micro = micro;
  r.micro_steps = int(cfg.train.micro_batches);
  const int64_t parts = int64_t(r.data_ranks) * r.micro_steps;
  RA_CHECK(parts >= 1 && batch_size % parts == 0,
           "train.batch_size = {} must be a multiple of mesh.dp x mesh.fsdp x "
           "train.micro_batches = {}",
           batch_size, parts);
  r.batch_per_rank = batch_size / parts;
  r.sp_rank = mesh.coord(Axis::SP);
  r.sp_size = mesh.size(Axis::SP);
  r.layout = cfg.attention.layout;
  r.seq_len = seq_len;
  r.validate();
  return r;
}

}  // namespace ringattn
