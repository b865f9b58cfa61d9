// Fuzzes the safetensors reader (core/safetensors.h): any byte string must either open and load
// every tensor, or raise ringattn::Error; never crash, leak, read out of bounds or allocate more
// than the file could hold.
#include <cstdint>

#include "core/error.h"
#include "core/safetensors.h"
#include "test/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ringattn;
  try {
    const SafetensorsFile f = SafetensorsFile::open(fuzz::as_file(data, size));
    for (const std::string& name : f.names()) {
      const TensorInfo& info = f.info(name);
      const Tensor t = f.load(name);
      if (uint64_t(t.nbytes()) != info.nbytes()) __builtin_trap();
      if (is_floating(info.dtype)) (void)f.load_f32(name);
    }
    (void)f.info("__no_such_tensor__");
  } catch (const Error&) {
    // Rejected with a message: what bad input must produce.
  }
  return 0;
}
