#include "model/hf/token_forward.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <vector>

#include "comm/ordered_sum.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "model/attention/sequence_shard.h"
#include "model/data/token_file.h"

namespace ringattn {

namespace {

bool is_token_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  RA_CHECK(f.good(), "token ids file '{}' cannot be opened", path);
  char magic[8] = {};
  f.read(magic, 8);
  return f.gcount() == 8 && std::memcmp(magic, kTokenFileMagic, 8) == 0;
}

}  // namespace

Tensor read_input_ids(const std::string& path, int64_t seq_len) {
  if (is_token_file(path)) {
    const std::vector<uint32_t> all = read_token_file(path);
    const int64_t n = int64_t(all.size());
    const int64_t S = seq_len > 0 ? seq_len : n;
    RA_CHECK(n >= S, "token file '{}' holds {} tokens, fewer than one row of {}", path, n, S);
    const int64_t B = n / S;
    if (n % S != 0)
      log::warn("token file '{}': {} tokens make {} rows of {}; the last {} tokens are not used",
                path, n, B, S, n % S);
    Tensor ids = Tensor::empty({B, S}, DType::I32, Device::CPU, "input ids");
    for (int64_t i = 0; i < B * S; ++i) {
      RA_CHECK(all[size_t(i)] <= uint32_t(std::numeric_limits<int32_t>::max()),
               "token file '{}': token {} at index {} does not fit a 32-bit signed id", path,
               all[size_t(i)], i);
      ids.data<int32_t>()[i] = int32_t(all[size_t(i)]);
    }
    return ids;
  }
  const SafetensorsFile f = SafetensorsFile::open(path);
  RA_CHECK(f.contains("input_ids"),
           "token ids file '{}' is neither a token file (RATOKENS) nor a safetensors file with a "
           "tensor 'input_ids'",
           path);
  const TensorInfo& ti = f.info("input_ids");
  RA_CHECK((ti.dtype == DType::I32 || ti.dtype == DType::I64) &&
               (ti.shape.size() == 1 || ti.shape.size() == 2),
           "token ids file '{}': 'input_ids' is {} {}, expected I32 or I64 of shape [S] or [B, S]",
           path, dtype_name(ti.dtype), shape_str(ti.shape));
  const Tensor raw = f.load("input_ids");
  const int64_t B = ti.shape.size() == 2 ? ti.shape[0] : 1, S = ti.shape.back();
  RA_CHECK(B > 0 && S > 0, "token ids file '{}': 'input_ids' {} is empty", path,
           shape_str(ti.shape));
  RA_CHECK(seq_len <= 0 || seq_len == S,
           "token ids file '{}': 'input_ids' rows hold {} tokens, but a sequence length of {} "
           "was asked for",
           path, S, seq_len);
  Tensor ids = Tensor::empty({B, S}, DType::I32, Device::CPU, "input ids");
  for (int64_t i = 0; i < B * S; ++i) {
    const int64_t v =
        ti.dtype == DType::I32 ? int64_t(raw.data<int32_t>()[i]) : raw.data<int64_t>()[i];
    RA_CHECK(v >= 0 && v <= std::numeric_limits<int32_t>::max(),
             "token ids file '{}': input_ids[{}][{}] = {} is not a token id", path, i / S, i % S,
             v);
    ids.data<int32_t>()[i] = int32_t(v);
  }
  return ids;
}

Batch make_token_batch(const Tensor& input_ids, RingLayout layout, int sp_rank, int sp_size) {
  RA_CHECK(input_ids.ndim() == 2 && input_ids.dtype() == DType::I32 && input_ids.is_contiguous(),
           "token batch: input ids must be a contiguous [B, S] I32 tensor, got {}",
           input_ids.str());
  const int64_t B = input_ids.dim(0), S = input_ids.dim(1);
  if (sp_size > 1) check_layout_split(layout, S, sp_size);
  Batch batch;
  batch.seq_len = S;
  batch.positions = layout_positions(layout, S, sp_size, sp_rank);
  const int64_t Sl = batch.local_len();
  batch.tokens = Tensor::empty({B, Sl}, DType::I32, Device::CPU, "batch tokens");
  batch.targets = Tensor::empty({B, Sl}, DType::I32, Device::CPU, "batch targets");
  batch.loss_mask = Tensor::empty({B, Sl}, DType::F32, Device::CPU, "batch loss mask");
  const int32_t* ids = input_ids.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    batch.samples.push_back(b);
    for (int64_t i = 0; i < Sl; ++i) {
      const int64_t p = batch.positions[size_t(i)];
      const bool last = p + 1 == S;
      batch.tokens.data<int32_t>()[b * Sl + i] = ids[b * S + p];
      batch.targets.data<int32_t>()[b * Sl + i] = last ? kIgnoreIndex : ids[b * S + p + 1];
      batch.loss_mask.data<float>()[b * Sl + i] = last ? 0.0f : 1.0f;
    }
  }
  return batch;
}

TokenForward forward_tokens(Transformer& model, Mesh& mesh, const Tensor& input_ids,
                            RingLayout layout, bool logits) {
  Communicator& sp = mesh.axis(Axis::SP);
  const Batch batch = make_token_batch(input_ids, layout, sp.rank(), sp.size());
  TokenForward out;
  out.tokens = ordered_sum(sp, Transformer::loss_weight(batch));
  if (!logits) {
    StepStats s = model.forward_only(batch);
    s.all_reduce(sp);
    out.loss_sum = s.loss_sum;
    return out;
  }
  const Tensor local = model.forward_logits(batch);
  // The loss from the logits themselves, in float64: the same definition as the blockwise head.
  const int64_t rows = local.dim(0) * local.dim(1), V = local.dim(2);
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t t = batch.targets.data<int32_t>()[r];
    if (t < 0) continue;
    const float* x = local.data<float>() + r * V;
    const double m = *std::max_element(x, x + V);
    double sum = 0;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(double(x[j]) - m);
    loss += m + std::log(sum) - double(x[t]);
  }
  out.loss_sum = ordered_sum(sp, loss);
  out.logits = gather_sequence(sp, local, 1, batch.positions, batch.seq_len);
  return out;
}

}  // namespace ringattn
