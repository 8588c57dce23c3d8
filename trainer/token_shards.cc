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
#include "kernels/hash.h"
#include "absl/strings/str_format.h"
#include "trainer/safetensors.h"

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

absl::Status write_shard(const std::string& path, std::span<const uint16_t> tokens) {
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    return shard_error(path, absl::StrCat(tokens.size(),
                                          " tokens are more than a shard header "
                                          "can count (",
                                          INT32_MAX, ")"));
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  std::string_view pieces[] = {{reinterpret_cast<const char*>(header), sizeof(header)},
                               {reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes()}};
  return write_file_atomically(path, pieces);
}

absl::StatusOr<Shard> read_shard(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::ErrnoToStatus(errno, absl::StrCat("token shard ", path, ": cannot open"));
  struct stat st;
  int stat_rc = ::fstat(fd, &st);
  int stat_errno = errno;
  size_t size = stat_rc == 0 ? static_cast<size_t>(st.st_size) : 0;
  void* map = MAP_FAILED;
  if (stat_rc == 0 && size >= static_cast<size_t>(kShardHeaderBytes))
    map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (stat_rc != 0)
    return absl::ErrnoToStatus(stat_errno, absl::StrCat("token shard ", path, ": cannot stat"));
  if (size < static_cast<size_t>(kShardHeaderBytes))
    return shard_error(path, absl::StrCat("file is ", size, " bytes, shorter than the ",
                                          kShardHeaderBytes, "-byte header"));
  if (map == MAP_FAILED)
    return absl::ErrnoToStatus(map_errno, absl::StrCat("token shard ", path, ": cannot mmap"));

  Shard shard;
  shard.path_ = path;
  shard.mapping_ = std::shared_ptr<const void>(
      map, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  const auto* header = static_cast<const int32_t*>(map);
  if (header[0] != kShardMagic)
    return shard_error(path, absl::StrCat("bad magic number ", header[0], ", expected ",
                                          kShardMagic, " (not an llm.c-style token shard?)"));
  if (header[1] != kShardVersion)
    return shard_error(path, absl::StrCat("unsupported version ", header[1],
                                          "; switchyard reads "
                                          "version ",
                                          kShardVersion, " (uint16 tokens)"));
  int64_t count = header[2];
  if (count < 0) return shard_error(path, absl::StrCat("negative token count ", count));
  uint64_t body = size - kShardHeaderBytes;
  uint64_t expected = static_cast<uint64_t>(count) * sizeof(uint16_t);
  if (body != expected)
    return shard_error(
        path, absl::StrCat("the header says ", count, " tokens (", expected,
                           " bytes) but the body has ", body, " bytes",
                           body < expected ? " (truncated?)" : " (extra bytes after the tokens)"));
  shard.tokens_ = {
      reinterpret_cast<const uint16_t*>(static_cast<const char*>(map) + kShardHeaderBytes),
      static_cast<size_t>(count)};
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
    std::span<const uint16_t> tokens = shard.tokens();
    auto bad = std::find_if(tokens.begin(), tokens.end(),
                            [&](uint16_t t) { return t >= options.vocab_size; });
    if (bad != tokens.end())
      return shard_error(path, absl::StrCat("token ", *bad, " at position ", bad - tokens.begin(),
                                            " is >= vocab_size ", options.vocab_size,
                                            " (tokenized for another vocabulary?)"));
    int64_t n = static_cast<int64_t>(tokens.size());
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

TokenBatch ShardLoader::next_batch(int64_t batch_size) {
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
    std::span<const uint16_t> tokens =
        shards_[s].tokens().subspan((window - window_starts_[s]) * T, T + 1);
    int32_t* in = batch.inputs.data<int32_t>() + row * T;
    int32_t* tg = batch.targets.data<int32_t>() + row * T;
    std::copy(tokens.begin(), tokens.end() - 1, in);
    std::copy(tokens.begin() + 1, tokens.end(), tg);
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
    return absl::InvalidArgumentError(
        absl::StrCat("the inputs hold only ", total, " bytes: too few for a val split of ",
                     val_tokens, " tokens plus training data; add text or lower min_val_tokens"));
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
