// How a global sequence of S tokens is spread over the N ranks of a sequence-parallel ring
// (../shared/design/ring-attention.md, section 5):
//   contiguous  rank r holds [r*S/N, (r+1)*S/N)                          (the paper's layout)
//   zigzag      rank r holds chunks r and 2N-1-r of 2N equal chunks      (balanced causal work)
//   striped     rank r holds tokens t with t mod N == r                  (balanced causal work)
// Local token i of rank r is global token positions(r)[i]; local order follows global order.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace ringattn {

enum class RingLayout { Contiguous, Zigzag, Striped };

std::string_view layout_name(RingLayout layout);
// Raises an Error naming the accepted values when `name` is not one of them.
RingLayout parse_layout(std::string_view name);

// Raises an Error (naming S, N and the layout's requirement) unless S splits evenly:
// contiguous and striped need S % N == 0, zigzag needs S % (2N) == 0.
void check_layout_split(RingLayout layout, int64_t seq_len, int ranks);

// Global positions of the S/N tokens rank r holds, in local order (ascending).
std::vector<int64_t> layout_positions(RingLayout layout, int64_t seq_len, int ranks, int rank);

}  // namespace ringattn
