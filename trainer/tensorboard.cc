#include "trainer/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "trainer/json.h"

namespace sy {
namespace {

std::array<uint32_t, 256> crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

// Protobuf wire format: a key is (field << 3) | wire type.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, int wire_type) {
  put_varint(out, (field << 3) | wire_type);
}
template <typename T>
void put_fixed(std::string& out, T value) {  // little-endian, as on every target we build for
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string event_header(int64_t step) {
  std::string e;
  put_key(e, 1, 1);
  put_fixed(e, wall_time());
  put_key(e, 2, 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = crc_table();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::open(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const auto seconds = static_cast<int64_t>(wall_time());
  const std::string path =
      (std::filesystem::path(dir) / absl::StrCat("events.out.tfevents.", seconds, ".", host))
          .string();
  std::ofstream out(path, std::ios::binary | std::ios::app);
  if (!out) {
    return absl::PermissionDeniedError(absl::StrCat("logging.tensorboard: cannot create ", path,
                                                    "; check that run_dir is writable"));
  }
  std::unique_ptr<TensorBoardWriter> w(new TensorBoardWriter(path, std::move(out)));
  std::string e = event_header(0);
  put_bytes(e, 3, "brain.Event:2");
  w->record(e);
  return w;
}

void TensorBoardWriter::record(const std::string& event) {
  std::string framed;
  const uint64_t length = event.size();
  put_fixed(framed, length);
  put_fixed(framed, masked_crc32c(&length, sizeof(length)));
  framed += event;
  put_fixed(framed, masked_crc32c(event.data(), event.size()));
  out_.write(framed.data(), static_cast<std::streamsize>(framed.size()));
  out_.flush();
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, double value) {
  std::string v;
  put_bytes(v, 1, tag);
  put_key(v, 2, 5);
  put_fixed(v, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(step);
  put_bytes(e, 5, summary);
  record(e);
}

void TensorBoardWriter::metrics_line(const std::string& json) {
  auto parsed = parse_json(json);
  if (!parsed.ok() || !parsed->is_object()) return;
  const Json* step = parsed->find("step");
  if (!step || !step->is_number()) return;
  for (const auto& [key, value] : parsed->as_object()) {
    if (key != "step" && value.is_number()) {
      scalar(key, static_cast<int64_t>(step->as_double()), value.as_double());
    }
  }
}

}  // namespace sy
