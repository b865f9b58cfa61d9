// Stateless hashing for the data sources: every random choice is a hash of (seed, split, sample,
// purpose, index), so any token of any sample can be made on any rank without a generator that
// has to be advanced in order (which would force a rank to make the tokens before its shard).
#pragma once

#include <cstdint>

namespace ringattn::data_hash {

// The SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Order matters: combine(a, b) != combine(b, a), so (sample 1, index 2) and (2, 1) differ.
inline uint64_t combine(uint64_t h, uint64_t v) {
  return mix64(h ^ (v + 0x9e3779b97f4a7c15ull));
}

inline uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) {
  return combine(combine(mix64(a), b), c);
}

// Uniform enough in [0, n) for n far below 2^64 (the modulo bias is below n / 2^64).
inline uint64_t below(uint64_t h, uint64_t n) {
  return h % n;
}

}  // namespace ringattn::data_hash
