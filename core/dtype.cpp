#include "core/dtype.h"

#include "core/error.h"

namespace ringattn {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
    case DType::U8:
      return 1;
  }
  RA_FAIL("unknown dtype {}", int(t));
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::U8:
      return "U8";
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64, DType::U8})
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while (!(man & 0x400u));
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (absu >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf (>= 65520)
  if (absu < 0x38800000u) {                        // subnormal or zero in half
    if (absu < 0x33000000u) return sign;           // below half of the smallest subnormal
    uint32_t exp = absu >> 23;
    uint32_t man = (absu & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14 + (127 - 15 - exp) ... places man at half's subnormal scale
    uint32_t half_man = man >> (shift - 0);
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_man & 1u))) ++half_man;
    return sign | uint16_t(half_man);
  }
  uint32_t v = absu + 0xc8000000u;  // rebias exponent 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);   // round to nearest even
  return sign | uint16_t(v >> 13);
}

void convert_floats(const void* src, DType st, void* dst, DType dt, size_t n) {
  RA_CHECK(is_floating(st) && is_floating(dt), "convert_floats: {} -> {} is not a float conversion",
           dtype_name(st), dtype_name(dt));
  // The mixed-precision pair in loops of their own, without the per-element dispatch below, so
  // that the compiler vectorises them: the CPU's bf16 GEMM widens both operands on every call.
  if (st == DType::BF16 && dt == DType::F32) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    float* d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
    return;
  }
  if (st == DType::F32 && dt == DType::BF16) {
    const float* s = static_cast<const float*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
    return;
  }
  auto load = [&](size_t i) -> float {
    switch (st) {
      case DType::F32:
        return static_cast<const float*>(src)[i];
      case DType::BF16:
        return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      default:
        return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    }
  };
  for (size_t i = 0; i < n; ++i) {
    float x = load(i);
    switch (dt) {
      case DType::F32:
        static_cast<float*>(dst)[i] = x;
        break;
      case DType::BF16:
        static_cast<uint16_t*>(dst)[i] = f32_to_bf16(x);
        break;
      default:
        static_cast<uint16_t*>(dst)[i] = f32_to_f16(x);
        break;
    }
  }
}

}  // namespace ringattn
