// Whether the simulated GPU is built with AddressSanitizer (RINGATTN_SIM_ASAN), for the parts of
// core/cuda_sim that tell ASan about memory it cannot see by itself: fiber stacks (simt.cpp) and
// quarantined device memory (runtime.cpp).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define RINGATTN_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang
#define RINGATTN_SIM_ASAN 1
#endif
#endif
