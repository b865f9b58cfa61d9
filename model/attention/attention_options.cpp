#include "model/attention/attention_options.h"

#include "core/error.h"

namespace ringattn {

std::string_view impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::Vanilla:
      return "vanilla";
    case AttentionImpl::Blockwise:
      return "blockwise";
    case AttentionImpl::Ring:
      return "ring";
  }
  return "?";
}

AttentionImpl parse_impl(std::string_view name) {
  for (AttentionImpl i : {AttentionImpl::Vanilla, AttentionImpl::Blockwise, AttentionImpl::Ring})
    if (impl_name(i) == name) return i;
  RA_FAIL("unknown attention implementation '{}': expected vanilla, blockwise or ring", name);
}

std::string_view kernel_name(AttentionKernel kernel) {
  return kernel == AttentionKernel::Fused ? "fused" : "tiles";
}

}  // namespace ringattn
