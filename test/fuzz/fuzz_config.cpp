// Fuzzes the config parser (core/json_config.h, model/train_config.h): JSON text, then the typed
// config and the cross-key validation for several world sizes. The first line of the input, when
// it contains '=', is also applied as a --set override. Only ringattn::Error may come out: any
// other exception (nlohmann's, std::) would reach the user as an unclear message.
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "model/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ringattn;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    JsonConfig json(train_schema());
    const size_t nl = text.find('\n');
    const std::string_view first = text.substr(0, nl);
    if (first.find('=') != std::string_view::npos && first.front() != '{') {
      json.set(first);
      json.load_text(nl == std::string_view::npos ? "{}" : text.substr(nl + 1), "fuzz.json");
    } else {
      json.load_text(text, "fuzz.json");
    }
    const TrainConfig cfg = to_train_config(json);
    for (int world : {1, 2, 3, 4, 8}) {
      try {
        (void)validate(cfg, world);
      } catch (const Error&) {
      }
    }
    (void)json.dump();
  } catch (const Error&) {
  }
  return 0;
}
