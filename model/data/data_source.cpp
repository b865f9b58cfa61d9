#include "model/data/data_source.h"

#include <cstring>

#include "core/error.h"

namespace ringattn {

std::string_view split_name(Split split) {
  return split == Split::Train ? "train" : "validation";
}

int64_t BatchRequest::global_batch() const {
  return int64_t(data_ranks) * micro_steps * batch_per_rank;
}

int64_t BatchRequest::sample_index(int64_t b) const {
  return step * global_batch() + (int64_t(data_rank) * micro_steps + micro) * batch_per_rank + b;
}

void BatchRequest::validate() const {
  RA_CHECK(step >= 0, "data: step must be >= 0, got {}", step);
  RA_CHECK(data_ranks >= 1 && data_rank >= 0 && data_rank < data_ranks,
           "data: data rank {} out of range for {} data-parallel ranks", data_rank, data_ranks);
  RA_CHECK(micro_steps >= 1 && micro >= 0 && micro < micro_steps,
           "data: micro-batch {} out of range for {} micro-batches per step", micro, micro_steps);
  RA_CHECK(batch_per_rank >= 1, "data: batch per rank must be >= 1, got {}", batch_per_rank);
  RA_CHECK(sp_size >= 1 && sp_rank >= 0 && sp_rank < sp_size,
           "data: sp rank {} out of range for {} sequence-parallel ranks", sp_rank, sp_size);
  check_layout_split(layout, seq_len, sp_size);
}

Batch BatchSource::get(const BatchRequest& req) const {
  req.validate();
  check_seq_len(req.seq_len);
  Batch batch;
  batch.seq_len = req.seq_len;
  batch.positions = layout_positions(req.layout, req.seq_len, req.sp_size, req.sp_rank);
  const int64_t B = req.batch_per_rank, Sl = batch.local_len();
  batch.tokens = Tensor::empty({B, Sl}, DType::I32, Device::CPU, "batch tokens");
  batch.targets = Tensor::empty({B, Sl}, DType::I32, Device::CPU, "batch targets");
  batch.loss_mask = Tensor::empty({B, Sl}, DType::F32, Device::CPU, "batch loss mask");
  batch.answer_mask = Tensor::zeros({B, Sl}, DType::U8, Device::CPU, "batch answer mask");
  if (has_segments())
    batch.segment_ids = Tensor::empty({B, Sl}, DType::I32, Device::CPU, "batch segment ids");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t sample = req.sample_index(b);
    batch.samples.push_back(sample);
    SampleSlots slots{batch.tokens.data<int32_t>() + b * Sl, batch.targets.data<int32_t>() + b * Sl,
                      batch.loss_mask.data<float>() + b * Sl,
                      batch.answer_mask.data<uint8_t>() + b * Sl,
                      has_segments() ? batch.segment_ids.data<int32_t>() + b * Sl : nullptr};
    fill_sample(sample, req.split, req.seq_len, batch.positions, slots);
  }
  return batch;
}

std::vector<AnswerSlot> answer_slots(const Batch& batch) {
  std::vector<AnswerSlot> out;
  const int64_t Sl = batch.local_len();
  const uint8_t* m = batch.answer_mask.data<uint8_t>();
  for (int64_t b = 0; b < batch.batch(); ++b)
    for (int64_t i = 0; i < Sl; ++i)
      if (m[b * Sl + i]) out.push_back({b, i, batch.positions[size_t(i)], int(m[b * Sl + i])});
  return out;
}

void AnswerTally::reset(int64_t rows) {
  correct.assign(size_t(rows * kMaxAnswers), 0);
  total.assign(size_t(rows * kMaxAnswers), 0);
}

void AnswerTally::add(int64_t row, int answer, bool right) {
  RA_CHECK(answer >= 1 && answer <= kMaxAnswers, "answer id {} outside [1, {}]", answer,
           kMaxAnswers);
  const size_t i = size_t(row * kMaxAnswers + answer - 1);
  RA_CHECK(i < total.size(), "answer tally: row {} outside the {} rows reset", row,
           total.size() / kMaxAnswers);
  total[i] += 1;
  correct[i] += right ? 1 : 0;
}

int64_t AnswerTally::answers() const {
  int64_t n = 0;
  for (int64_t t : total) n += t > 0 ? 1 : 0;
  return n;
}

int64_t AnswerTally::exact() const {
  int64_t n = 0;
  for (size_t i = 0; i < total.size(); ++i) n += total[i] > 0 && correct[i] == total[i] ? 1 : 0;
  return n;
}

AnswerTally tally_answers(const Batch& batch, const Tensor& predictions) {
  RA_CHECK(predictions.dtype() == DType::I32 && predictions.is_contiguous() &&
               predictions.shape() == batch.tokens.shape(),
           "tally_answers: predictions must be a contiguous I32 tensor of shape {}, got {}",
           shape_str(batch.tokens.shape()), predictions.str());
  AnswerTally t;
  t.reset(batch.batch());
  const int64_t Sl = batch.local_len();
  const int32_t* pred = predictions.data<int32_t>();
  const int32_t* tgt = batch.targets.data<int32_t>();
  for (const AnswerSlot& s : answer_slots(batch)) {
    const int64_t k = s.row * Sl + s.local;
    t.add(s.row, s.answer, pred[k] == tgt[k]);
  }
  return t;
}

}  // namespace ringattn
