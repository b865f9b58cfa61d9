// CPU implementations of the backend's attention operations (see core/attention_tile.h).
#pragma once

#include "core/attention_tile.h"

namespace ringattn::cpu {

void attention_forward_init(const AttentionForwardState& st, int64_t batch, int64_t sq, int heads,
                            int head_dim);
void attention_forward_block(const AttentionTileProblem& p, const AttentionForwardState& st,
                             AttentionTileStats* stats);
void attention_forward_finish(const AttentionForwardState& st, float* o, float* lse, int64_t batch,
                              int64_t sq, int heads, int head_dim);
void attention_backward_delta(const float* dout, const float* o, float* delta, int64_t batch,
                              int64_t sq, int heads, int head_dim);
void attention_backward_block(const AttentionTileProblem& p, const AttentionBackwardArgs& a,
                              AttentionTileStats* stats);

}  // namespace ringattn::cpu
