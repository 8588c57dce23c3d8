#include "trainer/token_shards.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/hash.h"
#include "trainer/regular_file.h"
#include "trainer/safetensors.h"
#include "trainer/stop.h"

namespace sy {

// Shards are little-endian on disk and mapped without a byte swap.
static_assert(std::endian::native == std::endian::little, "switchyard assumes little-endian");

namespace {

absl::Status shard_error(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("token shard ", path, ": ", what));
}

// A keyed bijection on [0, n): a 4-round balanced Feistel network on the smallest even bit
// width that covers n, cycle-walked until the value lands below n (the network permutes
// [0, 4^h) with 4^h < 4n, so fewer than 4 walks are expected).
class WindowShuffle {
 public:
  WindowShuffle(uint64_t n, uint64_t key) : n_(n) {
    while ((uint64_t{1} << (2 * half_bits_)) < n) ++half_bits_;
    for (int r = 0; r < kRounds; ++r) keys_[r] = mix64(key + static_cast<uint64_t>(r));
  }
  uint64_t operator()(uint64_t x) const {
    do {
      x = feistel(x);
    } while (x >= n_);
    return x;
  }

 private:
  static constexpr int kRounds = 4;
  uint64_t feistel(uint64_t x) const {
    uint64_t mask = (uint64_t{1} << half_bits_) - 1;
    uint64_t left = x >> half_bits_, right = x & mask;
    for (uint64_t key : keys_) {
      uint64_t next = left ^ (mix64(right ^ key) & mask);
      left = right;
      right = next;
    }
    return (left << half_bits_) | right;
  }

  uint64_t n_;
  int half_bits_ = 1;
  uint64_t keys_[kRounds];
};

}  // namespace

namespace {

template <typename T>
absl::Status write_any_shard(const std::string& path, std::span<const T> tokens, int32_t magic,
                             int32_t version) {
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    return shard_error(path, absl::StrCat(tokens.size(),
                                          " tokens are more than a shard header "
                                          "can count (",
                                          INT32_MAX, ")"));
  int32_t header[kShardHeaderInts] = {};
  header[0] = magic;
  header[1] = version;
  header[2] = static_cast<int32_t>(tokens.size());
  std::string_view pieces[] = {{reinterpret_cast<const char*>(header), sizeof(header)},
                               {reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes()}};
  return write_file_atomically(path, pieces);
}

}  // namespace

absl::Status write_shard(const std::string& path, std::span<const uint16_t> tokens) {
  return write_any_shard(path, tokens, kShardMagic, kShardVersion);
}

absl::Status write_wide_shard(const std::string& path, std::span<const uint32_t> tokens) {
  return write_any_shard(path, tokens, kWideShardMagic, kWideShardVersion);
}

namespace {

// Reads exactly `bytes` at `offset`, or says how much of the shard is missing.
absl::Status read_exactly(int fd, const std::string& path, void* out, size_t bytes, off_t offset) {
  auto* dst = static_cast<char*>(out);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, dst + done, bytes - done, offset + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("token shard ", path, ": read"));
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(
          "token shard ", path, ": the file ends at byte ", offset + static_cast<off_t>(done),
          ", but its header promised ", bytes - done,
          " bytes more; was it truncated or rewritten while the run used it? Restore the "
          "shard (or write new shards to another directory) and resume"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Shard::copy_tokens(int64_t begin, int64_t count, int32_t* out) const {
  SY_CHECK(begin >= 0 && count >= 0 && begin + count <= size())
      << path_ << ": tokens [" << begin << ", " << begin + count << ") of " << size();
  const size_t width = wide_ ? sizeof(uint32_t) : sizeof(uint16_t);
  const off_t offset = static_cast<off_t>(kShardHeaderBytes + begin * static_cast<int64_t>(width));
  if (wide_) {
    // uint32 ids below 2^31 (a vocabulary fits int32) read in place, bit for bit.
    return read_exactly(*fd_, path_, out, static_cast<size_t>(count) * width, offset);
  }
  std::vector<uint16_t> narrow(static_cast<size_t>(count));
  SY_RETURN_IF_ERROR(read_exactly(*fd_, path_, narrow.data(), narrow.size() * width, offset));
  std::copy(narrow.begin(), narrow.end(), out);
  return absl::OkStatus();
}

absl::StatusOr<Shard> read_shard(const std::string& path) {
  SY_RETURN_IF_ERROR(require_regular_file(path, "token shard"));
  // O_NONBLOCK: should the path become a FIFO after the check, the open still returns.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return absl::ErrnoToStatus(errno, absl::StrCat("token shard ", path, ": cannot open"));
  struct stat st;
  int stat_rc = ::fstat(fd, &st);
  int stat_errno = errno;
  if (stat_rc == 0 && !S_ISREG(st.st_mode)) {
    ::close(fd);
    return require_regular_file(path, "token shard");
  }
  auto owned_fd = std::shared_ptr<const int>(new int(fd), [](const int* f) {
    ::close(*f);
    delete f;
  });
  size_t size = stat_rc == 0 ? static_cast<size_t>(st.st_size) : 0;
  void* map = MAP_FAILED;
  if (stat_rc == 0 && size >= static_cast<size_t>(kShardHeaderBytes))
    map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  int map_errno = errno;
  if (stat_rc != 0)
    return absl::ErrnoToStatus(stat_errno, absl::StrCat("token shard ", path, ": cannot stat"));
  if (size < static_cast<size_t>(kShardHeaderBytes))
    return shard_error(path, absl::StrCat("file is ", size, " bytes, shorter than the ",
                                          kShardHeaderBytes, "-byte header"));
  if (map == MAP_FAILED)
    return absl::ErrnoToStatus(map_errno, absl::StrCat("token shard ", path, ": cannot mmap"));
  auto mapping = std::shared_ptr<const void>(
      map, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  // The header through pread too: the file may have shrunk since the fstat.
  int32_t header[kShardHeaderInts];
  SY_RETURN_IF_ERROR(read_exactly(fd, path, header, sizeof(header), 0));

  Shard shard;
  shard.path_ = path;
  shard.fd_ = std::move(owned_fd);
  shard.mapping_ = std::move(mapping);
  if (header[0] != kShardMagic && header[0] != kWideShardMagic)
    return shard_error(
        path, absl::StrCat("bad magic number ", header[0], ", expected ", kShardMagic, " or ",
                           kWideShardMagic, " (not an llm.c-style token shard?)"));
  shard.wide_ = header[0] == kWideShardMagic;
  const int32_t version = shard.wide_ ? kWideShardVersion : kShardVersion;
  if (header[1] != version)
    return shard_error(path, absl::StrCat("unsupported version ", header[1], " for magic ",
                                          header[0], "; switchyard reads version ", version,
                                          shard.wide_ ? " (uint32 tokens)" : " (uint16 tokens)"));
  int64_t count = header[2];
  if (count < 0) return shard_error(path, absl::StrCat("negative token count ", count));
  uint64_t body = size - kShardHeaderBytes;
  uint64_t expected =
      static_cast<uint64_t>(count) * (shard.wide_ ? sizeof(uint32_t) : sizeof(uint16_t));
  if (body != expected)
    return shard_error(
        path, absl::StrCat("the header says ", count, " tokens (", expected,
                           " bytes) but the body has ", body, " bytes",
                           body < expected ? " (truncated?)" : " (extra bytes after the tokens)"));
  const char* body_start = static_cast<const char*>(map) + kShardHeaderBytes;
  if (shard.wide_)
    shard.wide_tokens_ = {reinterpret_cast<const uint32_t*>(body_start),
                          static_cast<size_t>(count)};
  else
    shard.tokens_ = {reinterpret_cast<const uint16_t*>(body_start), static_cast<size_t>(count)};
  return shard;
}

absl::StatusOr<ShardLoader> ShardLoader::open(const ShardLoaderOptions& options) {
  SY_CHECK(options.seq_len > 0 && options.vocab_size > 0)
      << "seq_len " << options.seq_len << ", vocab_size " << options.vocab_size;
  SY_CHECK(options.world_size > 0 && options.rank >= 0 && options.rank < options.world_size)
      << "rank " << options.rank << " of " << options.world_size;
  glob_t matches;
  int rc = ::glob(options.pattern.c_str(), GLOB_ERR, nullptr, &matches);
  std::vector<std::string> paths;
  if (rc == 0) paths.assign(matches.gl_pathv, matches.gl_pathv + matches.gl_pathc);
  ::globfree(&matches);  // glob sorts the matches, which fixes the window numbering
  if (rc == GLOB_NOMATCH)
    return absl::NotFoundError(
        absl::StrCat("no token shards match the pattern '", options.pattern, "'"));
  if (rc != 0)
    return absl::InvalidArgumentError(absl::StrCat("cannot list token shards matching '",
                                                   options.pattern, "' (unreadable directory?)"));

  ShardLoader loader(options);
  loader.window_starts_.push_back(0);
  for (const std::string& path : paths) {
    SY_ASSIGN_OR_RETURN(Shard shard, read_shard(path));
    SY_RETURN_IF_ERROR(check_stop(absl::StrCat("opening token shards (at ", path, ")")));
    // Every token below the vocabulary, read in chunks with pread (never through the mapping:
    // a shard truncated meanwhile is an error, not a SIGBUS).
    constexpr int64_t kChunk = int64_t{1} << 20;
    std::vector<int32_t> chunk;
    for (int64_t begin = 0; begin < shard.size(); begin += kChunk) {
      chunk.resize(static_cast<size_t>(std::min(kChunk, shard.size() - begin)));
      SY_RETURN_IF_ERROR(
          shard.copy_tokens(begin, static_cast<int64_t>(chunk.size()), chunk.data()));
      for (size_t i = 0; i < chunk.size(); ++i) {
        // Wide tokens past INT32_MAX read as negative int32: compare them unsigned.
        const int64_t t = static_cast<int64_t>(static_cast<uint32_t>(chunk[i]));
        if (t >= options.vocab_size)
          return shard_error(
              path, absl::StrCat("token ", t, " at position ", begin + static_cast<int64_t>(i),
                                 " is >= vocab_size ", options.vocab_size,
                                 " (tokenized for another vocabulary?)"));
      }
    }
    int64_t n = shard.size();
    int64_t windows = n > 0 ? (n - 1) / options.seq_len : 0;
    loader.window_starts_.push_back(loader.window_starts_.back() + windows);
    loader.shards_.push_back(std::move(shard));
  }
  if (loader.windows_per_rank() == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("the ", paths.size(), " token shards matching '", options.pattern, "' hold ",
                     loader.num_windows(), " windows of seq_len + 1 = ", options.seq_len + 1,
                     " tokens, fewer than the ", options.world_size,
                     " data-parallel ranks; add data or shorten seq_len"));
  return loader;
}

int64_t ShardLoader::window_of(int64_t epoch, int64_t index) const {
  WindowShuffle shuffle(static_cast<uint64_t>(num_windows()),
                        mix64(mix64(options_.seed) ^ static_cast<uint64_t>(epoch)));
  return static_cast<int64_t>(
      shuffle(static_cast<uint64_t>(index * options_.world_size + options_.rank)));
}

absl::StatusOr<TokenBatch> ShardLoader::next_batch(int64_t batch_size) {
  SY_CHECK(batch_size > 0) << "batch_size " << batch_size;
  const int64_t T = options_.seq_len;
  TokenBatch batch;
  batch.inputs = Tensor::empty({batch_size, T}, DType::kI32);
  batch.targets = Tensor::empty({batch_size, T}, DType::kI32);
  batch.target_tokens = batch_size * T;
  for (int64_t row = 0; row < batch_size; ++row) {
    if (position_.index == windows_per_rank()) position_ = {position_.epoch + 1, 0};
    int64_t window = window_of(position_.epoch, position_.index++);
    size_t s = std::upper_bound(window_starts_.begin(), window_starts_.end(), window) -
               window_starts_.begin() - 1;
    const int64_t begin = (window - window_starts_[s]) * T;
    int32_t* in = batch.inputs.data<int32_t>() + row * T;
    int32_t* tg = batch.targets.data<int32_t>() + row * T;
    // One read of the window's T + 1 tokens; targets are the inputs shifted by one.
    window_tokens_.resize(static_cast<size_t>(T + 1));
    SY_RETURN_IF_ERROR(shards_[s].copy_tokens(begin, T + 1, window_tokens_.data()));
    std::copy_n(window_tokens_.begin(), T, in);
    std::copy_n(window_tokens_.begin() + 1, T, tg);
  }
  return batch;
}

absl::Status ShardLoader::set_position(const LoaderPosition& position) {
  if (position.epoch < 0 || position.index < 0 || position.index > windows_per_rank())
    return absl::InvalidArgumentError(absl::StrCat(
        "data position (epoch ", position.epoch, ", index ", position.index,
        ") does not fit shards '", options_.pattern, "', whose epochs hold ", windows_per_rank(),
        " windows per rank; did the data, seq_len or world size change since it was saved?"));
  position_ = position;
  return absl::OkStatus();
}

absl::Status write_text_shards(const std::vector<std::string>& input_files,
                               const std::string& output_dir, int64_t tokens_per_shard,
                               int64_t min_val_tokens) {
  namespace fs = std::filesystem;
  if (input_files.empty()) return absl::InvalidArgumentError("no input text files given");
  if (tokens_per_shard <= 0 || tokens_per_shard > INT32_MAX)
    return absl::InvalidArgumentError(
        absl::StrCat("tokens_per_shard must be in 1..", INT32_MAX, ", got ", tokens_per_shard));
  if (min_val_tokens <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("min_val_tokens must be positive, got ", min_val_tokens));

  std::vector<int64_t> sizes;
  int64_t total = 0;
  for (const std::string& file : input_files) {
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
      return absl::NotFoundError(absl::StrCat("input ", file, ": not a readable file"));
    sizes.push_back(static_cast<int64_t>(fs::file_size(file, ec)));
    if (ec) return absl::InvalidArgumentError(absl::StrCat("input ", file, ": ", ec.message()));
    total += sizes.back();
  }
  const int64_t val_tokens = std::max((total + 99) / 100, min_val_tokens);
  if (val_tokens >= total)
    return absl::InvalidArgumentError(absl::StrCat(
        "the inputs hold only ", total, " bytes: too few for a val split of ", val_tokens,
        " tokens plus training data; add text (or pass a smaller min_val_tokens to "
        "write_text_shards)"));
  const int64_t train_tokens = total - val_tokens;

  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec)
    return absl::InvalidArgumentError(
        absl::StrCat("output directory ", output_dir, ": ", ec.message()));
  for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
    std::string name = entry.path().filename().string();
    if ((name.starts_with("train_") || name.starts_with("val_")) && name.ends_with(".bin"))
      return absl::AlreadyExistsError(absl::StrCat("output directory ", output_dir,
                                                   " already holds shards (", name,
                                                   "); remove them or choose another directory"));
  }
  if (ec)
    return absl::InvalidArgumentError(
        absl::StrCat("output directory ", output_dir, ": ", ec.message()));

  struct Writer {
    const char* split;
    int next_index = 0;
    std::vector<uint16_t> tokens;
  };
  Writer train{"train", 0, {}}, val{"val", 0, {}};
  auto flush = [&](Writer& w) -> absl::Status {
    if (w.tokens.empty()) return absl::OkStatus();
    std::string path =
        (fs::path(output_dir) / absl::StrFormat("%s_%06d.bin", w.split, w.next_index++)).string();
    SY_RETURN_IF_ERROR(write_shard(path, w.tokens));
    w.tokens.clear();
    return absl::OkStatus();
  };

  int64_t emitted = 0;
  std::vector<char> chunk(1 << 20);
  for (size_t f = 0; f < input_files.size(); ++f) {
    std::ifstream in(input_files[f], std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("input ", input_files[f], ": cannot open"));
    int64_t read = 0;
    while (in) {
      in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      int64_t got = in.gcount();
      if (read + got > sizes[f]) break;  // reported below as a size change
      read += got;
      for (int64_t i = 0; i < got; ++i) {
        Writer& w = emitted < train_tokens ? train : val;
        w.tokens.push_back(static_cast<unsigned char>(chunk[i]));
        ++emitted;
        if (static_cast<int64_t>(w.tokens.size()) == tokens_per_shard) SY_RETURN_IF_ERROR(flush(w));
        if (emitted == train_tokens) SY_RETURN_IF_ERROR(flush(train));
      }
    }
    if (in.bad() || read != sizes[f])
      return absl::InvalidArgumentError(absl::StrCat("input ", input_files[f], ": read ", read,
                                                     " bytes of ", sizes[f],
                                                     " (was the file changed while being read?)"));
  }
  return flush(val);
}

}  // namespace sy
