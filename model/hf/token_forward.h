// Running the model on given token ids (ringattn forward): logits and the next-token loss, so the
// model can be compared with another implementation (transformers' LlamaForCausalLM with
// labels = input_ids computes the same loss: the mean cross-entropy of the B x (S - 1)
// predictions of token t + 1 from tokens 0..t).
#pragma once

#include <cstdint>
#include <string>

#include "comm/mesh.h"
#include "core/tensor.h"
#include "model/attention/layout.h"
#include "model/data/data_source.h"
#include "model/transformer.h"

namespace ringattn {

// Token ids from a file, as an I32 [B, S] tensor:
//   * a token file (RATOKENS, model/data/token_file.h): its tokens in rows of `seq_len`
//     (seq_len <= 0: one row of every token; a remainder shorter than seq_len is dropped);
//   * a safetensors file with an integer tensor "input_ids" (I32 or I64, [S] or [B, S]), e.g.
//     what transformers' tokenizer returned, saved with safetensors.torch.save_file.
// Errors name the file and what was expected.
Tensor read_input_ids(const std::string& path, int64_t seq_len = 0);

// This rank's shard of `input_ids` ([B, S] I32, the same on every rank): the tokens at the
// layout's positions for sp rank `sp_rank` of `sp_size`, targets the next token (kIgnoreIndex
// at position S - 1), loss_mask 1 wherever there is a target.
Batch make_token_batch(const Tensor& input_ids, RingLayout layout, int sp_rank, int sp_size);

struct TokenForward {
  Tensor logits;        // [B, S, vocab] F32 in global order on every rank (when asked for)
  double loss_sum = 0;  // next-token cross-entropy summed over the predictions
  double tokens = 0;    // predictions: B x (S - 1)
  double loss() const { return tokens > 0 ? loss_sum / tokens : 0.0; }
};

// Runs `model` on `input_ids` split over mesh's sp ranks by `layout` (ranks on other axes hold
// the same sequence and compute the same result). With `logits`, the full logits are built and
// gathered over sp; without, only the loss is computed, blockwise (no [tokens, vocab] buffer).
// Collective over the mesh (the model's groups).
TokenForward forward_tokens(Transformer& model, Mesh& mesh, const Tensor& input_ids,
                            RingLayout layout, bool logits);

}  // namespace ringattn
