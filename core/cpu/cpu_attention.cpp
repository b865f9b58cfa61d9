#include "core/cpu/cpu_attention.h"

#include "core/error.h"

namespace ringattn::cpu {

void attention_forward_init(const AttentionForwardState&, int64_t, int64_t, int, int) {
  RA_FAIL("cpu attention: not yet written");
}
void attention_forward_block(const AttentionTileProblem&, const AttentionForwardState&,
                             AttentionTileStats*) {
  RA_FAIL("cpu attention: not yet written");
}
void attention_forward_finish(const AttentionForwardState&, float*, float*, int64_t, int64_t, int,
                              int) {
  RA_FAIL("cpu attention: not yet written");
}
void attention_backward_delta(const float*, const float*, float*, int64_t, int64_t, int, int) {
  RA_FAIL("cpu attention: not yet written");
}
void attention_backward_block(const AttentionTileProblem&, const AttentionBackwardArgs&,
                              AttentionTileStats*) {
  RA_FAIL("cpu attention: not yet written");
}

}  // namespace ringattn::cpu
