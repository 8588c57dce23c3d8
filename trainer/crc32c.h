#pragma once
// CRC-32C (Castagnoli, the polynomial of iSCSI, ext4 and RocksDB) for the checksums a
// checkpoint manifest keeps of its tensor files. Its own few lines because the Debian abseil
// this tree builds with (20220623) has no absl/crc yet.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sy {

// The CRC of `n` more bytes after data whose CRC was `crc` (0 for none): extending in pieces
// gives the CRC of the whole. crc32c("123456789") is 0xE3069283.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);
inline uint32_t crc32c(std::string_view bytes) {
  return crc32c_extend(0, bytes.data(), bytes.size());
}

struct FileChecksum {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

// The size and CRC-32C of a whole file, read in pieces (not held in memory).
absl::StatusOr<FileChecksum> checksum_file(const std::string& path);

}  // namespace sy
