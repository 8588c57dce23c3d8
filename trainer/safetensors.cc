#include "trainer/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "trainer/json.h"
#include "trainer/regular_file.h"
#include "trainer/stop.h"

namespace sy {

// The format is little-endian; so is every machine we build for, which lets tensor bytes
// go to and from disk without a swap.
static_assert(std::endian::native == std::endian::little, "switchyard assumes little-endian");

namespace {

// Closes a POSIX file descriptor on every return path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the error, for writers where close can be the first to notice.
  int close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

absl::Status file_error(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// Reads exactly `size` bytes at `offset`, retrying short reads.
absl::Status read_at(int fd, const std::string& path, void* dst, size_t size, uint64_t offset) {
  char* out = static_cast<char*>(dst);
  while (size > 0) {
    ssize_t n = ::pread(fd, out, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": read failed"));
    if (n == 0) return file_error(path, "unexpected end of file (was it truncated while read?)");
    out += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

bool parse_dtype(std::string_view name, DType* dtype) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kI32, DType::kI64}) {
    if (name == safetensors_dtype(d)) {
      *dtype = d;
      return true;
    }
  }
  return false;
}

// F16 has no Tensor dtype of its own: it is widened to F32 as it is read (exactly: every
// half value is a float).
float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  const uint32_t bits = exponent == 0x1f ? sign | 0x7f800000u | (mantissa << 13)  // inf, NaN
                                         : sign | ((exponent + 112) << 23) | (mantissa << 13);
  return std::bit_cast<float>(bits);
}

}  // namespace

namespace {

// One header entry, checked for form but not yet against the data region.
using Entry = SafetensorsReader::Entry;

int64_t stored_element_size(const Entry& e) { return e.f16 ? 2 : dtype_size(e.dtype); }
const char* stored_dtype_name(const Entry& e) { return e.f16 ? "F16" : safetensors_dtype(e.dtype); }

absl::StatusOr<Entry> parse_entry(const std::string& path, const std::string& name,
                                  const Json& value) {
  auto bad = [&](const std::string& what) {
    return file_error(path, absl::StrCat("tensor '", name, "': ", what));
  };
  if (!value.is_object()) return bad("header entry is not an object");
  Entry entry;
  entry.name = name;
  const Json* dtype = value.find("dtype");
  const Json* shape = value.find("shape");
  const Json* offsets = value.find("data_offsets");
  if (!dtype) return bad("header entry has no \"dtype\"");
  if (!shape) return bad("header entry has no \"shape\"");
  if (!offsets) return bad("header entry has no \"data_offsets\"");
  if (!dtype->is_string()) return bad("\"dtype\" is not a string");
  entry.f16 = dtype->as_string() == "F16";
  if (entry.f16) {
    entry.dtype = DType::kF32;
  } else if (!parse_dtype(dtype->as_string(), &entry.dtype)) {
    return bad(absl::StrCat("unsupported dtype \"", dtype->as_string(),
                            "\" (switchyard reads F32, BF16, F16, I32, I64)"));
  }
  if (!shape->is_array()) return bad("\"shape\" is not an array");
  for (const Json& dim : shape->as_array()) {
    if (!dim.is_int() || dim.as_int() < 0)
      return bad(absl::StrCat("\"shape\" ", to_json(*shape),
                              " holds something other than a non-negative integer"));
    entry.shape.push_back(dim.as_int());
  }
  if (!offsets->is_array() || offsets->as_array().size() != 2 || !offsets->as_array()[0].is_int() ||
      !offsets->as_array()[1].is_int() || offsets->as_array()[0].as_int() < 0 ||
      offsets->as_array()[1].as_int() < offsets->as_array()[0].as_int())
    return bad(absl::StrCat("\"data_offsets\" ", to_json(*offsets),
                            " is not [begin, end] with 0 <= begin <= end"));
  entry.begin = static_cast<uint64_t>(offsets->as_array()[0].as_int());
  entry.end = static_cast<uint64_t>(offsets->as_array()[1].as_int());
  return entry;
}

// Bytes that shape x element size needs, or -1 when that overflows int64 (a hostile shape).
int64_t expected_bytes(const Shape& shape, int64_t element_size) {
  unsigned __int128 n = static_cast<uint64_t>(element_size);
  for (int64_t d : shape) {
    n *= static_cast<uint64_t>(d);
    if (n > static_cast<unsigned __int128>(INT64_MAX)) return -1;
  }
  return static_cast<int64_t>(n);
}

}  // namespace

absl::Status write_file_atomically(const std::string& path,
                                   std::span<const std::string_view> pieces) {
  // The pid keeps two processes writing the same path (two ranks by mistake) from
  // interleaving into one temp file.
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0)
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot create temp file ", tmp));
  auto fail = [&](const char* what) {
    absl::Status status = absl::ErrnoToStatus(errno, absl::StrCat(tmp, ": ", what));
    ::unlink(tmp.c_str());
    return status;
  };
  for (std::string_view piece : pieces) {
    while (!piece.empty()) {
      ssize_t n = ::write(fd.get(), piece.data(), piece.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail("write failed");
      piece.remove_prefix(static_cast<size_t>(n));
    }
  }
  if (::fsync(fd.get()) != 0) return fail("fsync failed");
  if (fd.close() != 0) return fail("close failed");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename failed");
  // The rename itself lives in the directory: sync it so the new name survives a crash
  // (best effort: some filesystems refuse to open or sync a directory).
  std::string dir = std::filesystem::path(path).parent_path().string();
  Fd dir_fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) ::fsync(dir_fd.get());
  return absl::OkStatus();
}

absl::Status save_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  Json header = Json::Object();
  if (!metadata.empty()) {
    Json meta = Json::Object();
    for (const auto& [key, value] : metadata) meta.set(key, value);
    header.set("__metadata__", std::move(meta));
  }
  std::vector<std::string_view> pieces(1);  // [0]: header, filled in below
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    SY_CHECK(tensor.defined() && tensor.device().is_cpu())
        << "save_safetensors: tensor '" << name << "' must be a defined CPU tensor";
    SY_CHECK(!name.empty() && name != "__metadata__" && names.insert(name).second)
        << "save_safetensors: tensor name '" << name << "' is empty, reserved or repeated";
    Json::Array shape;
    for (int64_t d : tensor.shape()) shape.emplace_back(d);
    Json entry = Json::Object();
    entry.set("dtype", safetensors_dtype(tensor.dtype()));
    entry.set("shape", std::move(shape));
    entry.set("data_offsets", Json::Array{Json(offset), Json(offset + tensor.nbytes())});
    header.as_object().emplace_back(name, std::move(entry));
    offset += tensor.nbytes();
    pieces.emplace_back(static_cast<const char*>(tensor.raw()), tensor.nbytes());
  }
  std::string json = to_json(header);
  json.resize((json.size() + 7) / 8 * 8, ' ');  // the data then starts 8-byte aligned
  uint64_t length = json.size();
  char length_bytes[8];
  std::memcpy(length_bytes, &length, 8);
  std::string prefix = std::string(length_bytes, 8) + json;
  pieces[0] = prefix;
  return write_file_atomically(path, pieces);
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::open(const std::string& path) {
  // A FIFO or a device would block the open or the reads forever; a missing file keeps the
  // open's own error.
  std::error_code exists_error;
  if (std::filesystem::exists(path, exists_error))
    SY_RETURN_IF_ERROR(require_regular_file(path, "safetensors file"));
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0)
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot stat"));
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    return file_error(path, absl::StrCat("file is ", file_size,
                                         " bytes, too short for the 8-byte header length "
                                         "(not a safetensors file?)"));
  uint64_t header_len;
  SY_RETURN_IF_ERROR(read_at(fd.get(), path, &header_len, 8, 0));
  if (header_len > file_size - 8)
    return file_error(
        path, absl::StrCat("header length ", header_len, " is larger than the ", file_size - 8,
                           " bytes after it (truncated, or not a safetensors "
                           "file?)"));
  std::string header_text(header_len, '\0');
  SY_RETURN_IF_ERROR(read_at(fd.get(), path, header_text.data(), header_len, 8));
  absl::StatusOr<Json> header = parse_json(header_text);
  if (!header.ok())
    return file_error(path, absl::StrCat("header is not valid JSON: ", header.status().message()));
  if (!header->is_object()) return file_error(path, "header is not a JSON object");

  SafetensorsReader file;
  file.path_ = path;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header->as_object()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return file_error(path, "\"__metadata__\" is not an object");
      for (const auto& [key, item] : value.as_object()) {
        if (!item.is_string())
          return file_error(
              path, absl::StrCat("\"__metadata__\" value for \"", key, "\" is not a string"));
        file.metadata_[key] = item.as_string();
      }
      continue;
    }
    SY_ASSIGN_OR_RETURN(Entry entry, parse_entry(path, name, value));
    entries.push_back(std::move(entry));
  }

  // Check every range against the data region, then that the ranges tile it exactly.
  uint64_t data_start = 8 + header_len;
  uint64_t data_size = file_size - data_start;
  for (const Entry& e : entries) {
    if (e.end > data_size)
      return file_error(
          path, absl::StrCat("tensor '", e.name, "': data_offsets [", e.begin, ", ", e.end,
                             "] run past the ", data_size, " bytes of data (truncated file?)"));
    int64_t bytes = expected_bytes(e.shape, stored_element_size(e));
    if (bytes < 0 || static_cast<uint64_t>(bytes) != e.end - e.begin)
      return file_error(path, absl::StrCat("tensor '", e.name, "': shape ", shape_str(e.shape),
                                           " of ", stored_dtype_name(e), " needs ",
                                           bytes < 0 ? "more than 2^63" : absl::StrCat(bytes),
                                           " bytes, but data_offsets [", e.begin, ", ", e.end,
                                           "] hold ", e.end - e.begin));
  }
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : order) {
    if (e->begin < covered)
      return file_error(path, absl::StrCat("tensors '", previous->name, "' and '", e->name,
                                           "' overlap (bytes ", e->begin, "..", covered, ")"));
    if (e->begin > covered)
      return file_error(
          path, absl::StrCat("data bytes [", covered, ", ", e->begin, ") belong to no tensor"));
    covered = e->end;
    previous = e;
  }
  if (covered != data_size)
    return file_error(path, absl::StrCat(data_size - covered,
                                         " bytes after the last tensor "
                                         "(data is ",
                                         data_size, " bytes, tensors cover ", covered, ")"));

  file.data_start_ = data_start;
  for (Entry& e : entries) file.entries_.emplace(e.name, std::move(e));
  return file;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

bool SafetensorsReader::contains(const std::string& name) const {
  return entries_.count(name) > 0;
}

const SafetensorsReader::Entry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  SY_CHECK(it != entries_.end()) << path_ << ": no tensor '" << name << "' (check contains())";
  return it->second;
}

const Shape& SafetensorsReader::shape(const std::string& name) const { return entry(name).shape; }

std::string SafetensorsReader::stored_dtype(const std::string& name) const {
  return stored_dtype_name(entry(name));
}

absl::StatusOr<Tensor> SafetensorsReader::read(const std::string& name) const {
  const Entry& e = entry(name);
  Fd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": cannot open"));
  Tensor t = Tensor::empty(e.shape, e.dtype);
  if (!e.f16) {
    SY_RETURN_IF_ERROR(read_at(fd.get(), path_, t.raw(), t.nbytes(), data_start_ + e.begin));
    return t;
  }
  std::vector<uint16_t> half(static_cast<size_t>(t.numel()));
  SY_RETURN_IF_ERROR(
      read_at(fd.get(), path_, half.data(), half.size() * sizeof(uint16_t), data_start_ + e.begin));
  float* out = t.data<float>();
  for (size_t i = 0; i < half.size(); ++i) out[i] = f16_to_f32(half[i]);
  return t;
}

absl::StatusOr<Tensor> SafetensorsReader::read_rows(const std::string& name, int64_t begin,
                                                    int64_t end) const {
  const Entry& e = entry(name);
  SY_CHECK(!e.shape.empty() && 0 <= begin && begin <= end && end <= e.shape[0])
      << path_ << ": rows [" << begin << ", " << end << ") of '" << name << "' "
      << shape_str(e.shape);
  Shape shape = e.shape;
  shape[0] = end - begin;
  Tensor t = Tensor::empty(shape, e.dtype);
  uint64_t row_bytes = static_cast<uint64_t>(stored_element_size(e));
  for (size_t d = 1; d < e.shape.size(); ++d) row_bytes *= static_cast<uint64_t>(e.shape[d]);
  const uint64_t offset = data_start_ + e.begin + static_cast<uint64_t>(begin) * row_bytes;
  Fd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": cannot open"));
  if (!e.f16) {
    SY_RETURN_IF_ERROR(read_at(fd.get(), path_, t.raw(), t.nbytes(), offset));
    return t;
  }
  std::vector<uint16_t> half(static_cast<size_t>(t.numel()));
  SY_RETURN_IF_ERROR(read_at(fd.get(), path_, half.data(), half.size() * sizeof(uint16_t), offset));
  float* out = t.data<float>();
  for (size_t i = 0; i < half.size(); ++i) out[i] = f16_to_f32(half[i]);
  return t;
}

absl::StatusOr<SafetensorsFile> load_safetensors(const std::string& path) {
  SY_ASSIGN_OR_RETURN(SafetensorsReader reader, SafetensorsReader::open(path));
  SafetensorsFile file;
  file.path = path;
  file.metadata = reader.metadata();
  for (const std::string& name : reader.names()) {
    // Large checkpoints take minutes to read: a stop signal ends the load between tensors.
    SY_RETURN_IF_ERROR(check_stop(absl::StrCat("loading ", path)));
    SY_ASSIGN_OR_RETURN(Tensor t, reader.read(name));
    file.tensors.emplace(name, std::move(t));
  }
  return file;
}


absl::Status expect_tensor(const SafetensorsFile& file, const std::string& name, const Shape& shape,
                           DType dtype) {
  auto it = file.tensors.find(name);
  if (it == file.tensors.end())
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", file.path, ": no tensor '", name, "', the config needs one"));
  const Tensor& t = it->second;
  if (t.shape() != shape)
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", file.path, ": tensor '", name,
                                                   "' has shape ", shape_str(t.shape()),
                                                   ", the config expects ", shape_str(shape)));
  if (t.dtype() != dtype)
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", file.path, ": tensor '", name,
                                                   "' is ", dtype_name(t.dtype()),
                                                   ", the config expects ", dtype_name(dtype)));
  return absl::OkStatus();
}

}  // namespace sy
