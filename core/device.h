#pragma once

#include <string_view>

namespace ringattn {

enum class Device { CPU, CUDA };

inline std::string_view device_name(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

}  // namespace ringattn
