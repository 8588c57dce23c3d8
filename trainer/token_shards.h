#pragma once
// Token shards in the llm.c `.bin` layout, and the loader that turns them into training
// windows for one data-parallel rank.
//
// A shard is a header of 256 little-endian int32 (header[0] = kShardMagic, header[1] =
// kShardVersion, header[2] = the number of tokens, the rest 0) followed by that many
// little-endian uint16 tokens. Vocabularies past 65536 ids (Llama-3, Qwen) use llm.c's wide
// layout: kWideShardMagic, kWideShardVersion and uint32 tokens. Files written by llm.c's data
// scripts load unchanged.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/check.h"
#include "trainer/tokenizer.h"

namespace sy {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int32_t kWideShardMagic = 20240801;
inline constexpr int32_t kWideShardVersion = 7;
inline constexpr int64_t kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;

// One shard's tokens. The loader reads them with pread on a descriptor kept open (copies share
// it), checking each read's length: a shard truncated or rewritten in place under a running job
// is an error naming it, never a SIGBUS from a mapping past the file's new end. (A shard
// replaced by rename keeps serving the old file's tokens, which the descriptor still holds.)
class Shard {
 public:
  const std::string& path() const { return path_; }
  // uint32 tokens (the wide layout) rather than uint16.
  bool wide() const { return wide_; }
  int64_t size() const { return static_cast<int64_t>(wide_ ? wide_tokens_.size() : tokens_.size()); }
  // The tokens of a uint16 shard (check !wide()); wide_tokens() those of a uint32 one. These
  // read through a read-only memory mapping: for tools and tests on files nobody changes
  // meanwhile (the loader does not use them).
  std::span<const uint16_t> tokens() const {
    SY_CHECK(!wide_) << path_ << " holds uint32 tokens: read wide_tokens()";
    return tokens_;
  }
  std::span<const uint32_t> wide_tokens() const {
    SY_CHECK(wide_) << path_ << " holds uint16 tokens: read tokens()";
    return wide_tokens_;
  }
  // Tokens [begin, begin + count) as int32, whichever the layout, read from the file (pread).
  // A file shorter now than its header promised (truncated since it was opened) is a
  // DataLoss error naming the shard and the bytes missing.
  absl::Status copy_tokens(int64_t begin, int64_t count, int32_t* out) const;

 private:
  friend absl::StatusOr<Shard> read_shard(const std::string& path);
  std::string path_;
  std::shared_ptr<const int> fd_;        // closes when the last copy goes
  std::shared_ptr<const void> mapping_;  // unmaps when the last copy goes
  std::span<const uint16_t> tokens_;
  std::span<const uint32_t> wide_tokens_;
  bool wide_ = false;
};

// Writes `tokens` as a shard at `path`, atomically (a temp file renamed into place, so a
// crash never leaves a half-written shard under the real name). More than INT32_MAX tokens
// is an error: the header holds the count as int32.
absl::Status write_shard(const std::string& path, std::span<const uint16_t> tokens);
// The same in the wide layout (uint32 tokens).
absl::Status write_wide_shard(const std::string& path, std::span<const uint32_t> tokens);

// Opens and validates one shard. Errors name the file and what is wrong: missing file, not a
// regular file (a FIFO would block the open forever), file shorter than the header, wrong
// magic (found vs expected), unsupported version, or a body that holds more or fewer tokens
// than the header says (both numbers).
absl::StatusOr<Shard> read_shard(const std::string& path);

// Where a loader is in its stream: `index` windows of epoch `epoch` taken by this rank.
// Saved in checkpoints; it means the same thing only for the same shards, seq_len, seed
// and world size.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderPosition&) const = default;
};

struct ShardLoaderOptions {
  std::string pattern;     // glob of shard files, e.g. "data/train_*.bin"
  int64_t seq_len = 0;     // T: a window is T + 1 tokens
  int64_t vocab_size = 0;  // every token must be below it
  int rank = 0;            // data-parallel rank r of world_size R
  int world_size = 1;
  uint64_t seed = 0;  // with the epoch, fixes the shuffle
};

// Serves training windows of T + 1 tokens: inputs are the first T, targets the last T.
//
// Windows: shard s of n tokens holds (n - 1) / T windows; window k of it covers tokens
// [k*T, k*T + T], so neighbouring windows share one token and every token after a shard's
// first is a target once per epoch. A window never crosses a shard boundary; the windows
// of all shards (sorted by path) are numbered 0..W-1.
//
// Order: each epoch visits the windows in a pseudo-random order fixed by (seed, epoch): a
// keyed Feistel bijection on [0, W) (cycle-walked into range), so it needs no O(W) table
// and any position is computed directly. Rank r takes entries r, r+R, r+2R, ... of that
// order, W / R of them per epoch, so all ranks step in lockstep; the W mod R windows at
// the end of an epoch's order are skipped that epoch (a different few each epoch).
class ShardLoader {
 public:
  // Opens and validates every shard matching the pattern up front (no match, a broken
  // shard, a token >= vocab_size naming shard and position, or fewer than R windows in all
  // is an error), so a bad file fails at start-up, not hours into a run. A stop signal
  // (trainer/stop.h) ends it between shards with Cancelled.
  static absl::StatusOr<ShardLoader> open(const ShardLoaderOptions& options);

  // The next `batch_size` windows of this rank as i32 [B, T] inputs and targets (every
  // target counts); moves into the next epoch as needed. A shard that lost tokens since
  // open() (truncated under the run) is an error naming it.
  absl::StatusOr<TokenBatch> next_batch(int64_t batch_size);

  LoaderPosition position() const { return position_; }
  // Restores a saved position; one past this run's epoch length is an error (the data,
  // seq_len or world size changed since it was saved).
  absl::Status set_position(const LoaderPosition& position);

  int64_t num_windows() const { return window_starts_.back(); }  // W, over all shards
  int64_t windows_per_rank() const { return num_windows() / options_.world_size; }
  const std::vector<Shard>& shards() const { return shards_; }

 private:
  explicit ShardLoader(const ShardLoaderOptions& options) : options_(options) {}
  // The global number of this rank's `index`-th window in `epoch`.
  int64_t window_of(int64_t epoch, int64_t index) const;

  ShardLoaderOptions options_;
  std::vector<Shard> shards_;
  std::vector<int64_t> window_starts_;  // window_starts_[s]: first window of shard s; back = W
  LoaderPosition position_;
  std::vector<int32_t> window_tokens_;  // next_batch's read buffer
};

// Byte-tokenizes text files into shards under `output_dir` (created if missing): the files
// are concatenated in the given order, and the stream is cut into `train_000000.bin`,
// `train_000001.bin`, ... of `tokens_per_shard` tokens (the last one shorter). The val
// split is the contiguous tail of the stream, max(1% of it, min_val_tokens) tokens (the
// default is one window at seq_len 1024), written the same way as `val_000000.bin`, ...;
// being a tail, no val window overlaps a train window. An output_dir that already holds
// train_*.bin or val_*.bin is an error, so stale shards never mix into a new data set.
// Backs `switchyard data --input TEXT... --output DIR`.
absl::Status write_text_shards(const std::vector<std::string>& input_files,
                               const std::string& output_dir, int64_t tokens_per_shard,
                               int64_t min_val_tokens = 1025);

}  // namespace sy
