#pragma once
// Counter-based randomness: values that are pure functions of their coordinates (seed,
// index, split, ...), so data, initialisation and sampling never depend on the order in
// which things are computed, nor on how work is spread over ranks.
//
// The functions marked SY_HOST_DEVICE compile for CUDA kernels too, so a kernel draws the
// same bits as the host (kernels/cuda/sampling.cu).
#include <cstddef>
#include <cstdint>
#include <string_view>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__
#else
#define SY_HOST_DEVICE
#endif

namespace sy {

// The splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
SY_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A 64-bit mix of a seed, a string key and an index (FNV-1a over the key, then splitmix64):
// stable across platforms. The key is passed as bytes so device code can call it.
SY_HOST_DEVICE inline uint64_t hash_seed(uint64_t seed, const char* key, size_t key_size,
                                         uint64_t index) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (size_t i = 0; i < key_size; ++i) h = (h ^ static_cast<unsigned char>(key[i])) * 1099511628211ull;
  h ^= index + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return mix64(h);
}
inline uint64_t hash_seed(uint64_t seed, std::string_view key, uint64_t index = 0) {
  return hash_seed(seed, key.data(), key.size(), index);
}

// The uniform number in [0, 1) behind sampling_uniform (kernels/sampling.h), here so that
// the sampling kernel computes the same bits: the top 53 bits of the hash, exactly
// representable as a double.
SY_HOST_DEVICE inline double sampling_uniform_bits(uint64_t seed, uint64_t row_id,
                                                   uint64_t position) {
  const uint64_t h = hash_seed(seed, "sample", 6, row_id * 0x9e3779b97f4a7c15ull + position);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
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
