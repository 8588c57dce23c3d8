#pragma once
// Counter-based randomness: values that are pure functions of their coordinates (seed,
// index, split, ...), so data, initialisation and sampling never depend on the order in
// which things are computed, nor on how work is spread over ranks.
#include <cstdint>

namespace sy {

// The splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A short stream of uniform draws from one hashed key.
class HashDraws {
 public:
  explicit HashDraws(uint64_t key) : state_(key) {}
  // Uniform in [0, n) by a 128-bit multiply; the bias (n / 2^64) is far below anything a run
  // could notice.
  uint64_t below(uint64_t n) {
    state_ = mix64(state_);
    return static_cast<uint64_t>((static_cast<unsigned __int128>(state_) * n) >> 64);
  }

 private:
  uint64_t state_;
};

}  // namespace sy
