#include "trainer/token_shards.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string test_dir() { return testing::fresh_test_dir("token_shards_test"); }
using testing::read_bytes;
using testing::write_bytes;

// A raw shard with any header values, to build broken ones.
std::string raw_shard(int32_t magic, int32_t version, int32_t count,
                      const std::vector<uint16_t>& tokens) {
  std::string bytes(kShardHeaderBytes, '\0');
  int32_t fields[3] = {magic, version, count};
  std::memcpy(bytes.data(), fields, sizeof(fields));
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  return bytes;
}

std::vector<uint16_t> iota_tokens(size_t n, uint16_t first) {
  std::vector<uint16_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

TEST(TokenShardsTest, WriteThenReadRoundTripsInTheLlmcLayout) {
  std::string dir = test_dir();
  std::string path = dir + "/a.bin";
  std::vector<uint16_t> tokens = {0, 1, 65535, 256, 42};
  ASSERT_TRUE(write_shard(path, tokens).ok());

  // The bytes are exactly llm.c's: magic, version, count, zeros, then uint16 tokens.
  EXPECT_EQ(read_bytes(path), raw_shard(20240520, 1, 5, tokens));
  absl::StatusOr<Shard> shard = read_shard(path);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ(shard->path(), path);
  EXPECT_EQ(std::vector<uint16_t>(shard->tokens().begin(), shard->tokens().end()), tokens);
  // Only the shard: the temp file was renamed, not left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);

  ASSERT_TRUE(write_shard(dir + "/empty.bin", {}).ok());
  absl::StatusOr<Shard> empty = read_shard(dir + "/empty.bin");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->tokens().empty());
}

TEST(TokenShardsTest, WideShardsHoldUint32TokensInLlmcsLlama3Layout) {
  std::string dir = test_dir();
  std::string path = dir + "/wide.bin";
  std::vector<uint32_t> tokens = {0, 65536, 151643, 7};
  ASSERT_TRUE(write_wide_shard(path, tokens).ok());
  std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), 1024u + 4 * tokens.size());
  int32_t header[3];
  std::memcpy(header, bytes.data(), sizeof(header));
  EXPECT_EQ(header[0], 20240801);
  EXPECT_EQ(header[1], 7);
  EXPECT_EQ(header[2], 4);
  absl::StatusOr<Shard> shard = read_shard(path);
  ASSERT_TRUE(shard.ok()) << shard.status();
  ASSERT_TRUE(shard->wide());
  EXPECT_EQ(std::vector<uint32_t>(shard->wide_tokens().begin(), shard->wide_tokens().end()),
            tokens);
  std::vector<int32_t> copied(3);
  ASSERT_TRUE(shard->copy_tokens(1, 3, copied.data()).ok());
  EXPECT_EQ(copied, (std::vector<int32_t>{65536, 151643, 7}));
  // The wide magic with the narrow version (or the reverse) is an error naming both.
  std::string wrong = bytes;
  const int32_t one = 1;
  std::memcpy(wrong.data() + 4, &one, 4);
  std::ofstream(dir + "/wrong.bin", std::ios::binary) << wrong;
  absl::StatusOr<Shard> bad = read_shard(dir + "/wrong.bin");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("version 1"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("uint32"), std::string::npos) << bad.status();
}

struct Broken {
  std::string name;
  std::string bytes;  // empty: no file at all
  std::vector<std::string> message_parts;
};

TEST(TokenShardsTest, EachBrokenShardSaysWhatIsWrong) {
  std::string dir = test_dir();
  std::vector<uint16_t> ten = iota_tokens(10, 1);
  std::vector<Broken> cases = {
      {"missing", "", {"cannot open", "No such file"}},
      {"short_header", std::string(100, '\0'), {"file is 100 bytes", "1024-byte header"}},
      {"bad_magic", raw_shard(12345, 1, 10, ten), {"bad magic number 12345", "expected 20240520"}},
      {"bad_version", raw_shard(20240520, 2, 10, ten), {"unsupported version 2"}},
      {"truncated",
       raw_shard(20240520, 1, 11, ten),
       {"header says 11 tokens (22 bytes)", "body has 20 bytes", "truncated"}},
      {"extra_bytes",
       raw_shard(20240520, 1, 10, ten) + "xyz",
       {"header says 10 tokens (20 bytes)", "body has 23 bytes", "extra bytes"}},
  };
  for (const Broken& c : cases) {
    std::string path = dir + "/" + c.name + ".bin";
    if (!c.bytes.empty()) write_bytes(path, c.bytes);
    absl::StatusOr<Shard> shard = read_shard(path);
    ASSERT_FALSE(shard.ok()) << c.name;
    std::string message(shard.status().message());
    EXPECT_NE(message.find(path), std::string::npos) << message;
    for (const std::string& part : c.message_parts)
      EXPECT_NE(message.find(part), std::string::npos) << c.name << ": " << message;
    // The loader reports the same problem at open time.
    absl::StatusOr<ShardLoader> loader = ShardLoader::open({path, 2, 256});
    ASSERT_FALSE(loader.ok()) << c.name;
  }
}

TEST(TokenShardsTest, TokenOutsideTheVocabularyNamesShardAndPosition) {
  std::string dir = test_dir();
  std::vector<uint16_t> tokens = iota_tokens(20, 0);
  tokens[13] = 50;
  ASSERT_TRUE(write_shard(dir + "/train_000000.bin", iota_tokens(20, 0)).ok());
  ASSERT_TRUE(write_shard(dir + "/train_000001.bin", tokens).ok());
  absl::StatusOr<ShardLoader> loader = ShardLoader::open({dir + "/train_*.bin", 4, 50});
  ASSERT_FALSE(loader.ok());
  std::string message(loader.status().message());
  EXPECT_NE(message.find(dir + "/train_000001.bin"), std::string::npos) << message;
  EXPECT_NE(message.find("token 50 at position 13 is >= vocab_size 50"), std::string::npos)
      << message;
}

TEST(TokenShardsTest, EmptyPatternAndTooLittleDataAreErrors) {
  std::string dir = test_dir();
  absl::StatusOr<ShardLoader> none = ShardLoader::open({dir + "/nothing_*.bin", 4, 256});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(
      none.status().message().find("no token shards match the pattern '" + dir + "/nothing_*.bin'"),
      absl::string_view::npos)
      << none.status();

  ASSERT_TRUE(write_shard(dir + "/s.bin", iota_tokens(9, 0)).ok());  // (9-1)/4 = 2 windows
  EXPECT_TRUE(ShardLoader::open({dir + "/s.bin", 4, 256, 1, 2}).ok());
  absl::StatusOr<ShardLoader> few = ShardLoader::open({dir + "/s.bin", 4, 256, 0, 3});
  ASSERT_FALSE(few.ok());
  EXPECT_NE(few.status().message().find("hold 2 windows of seq_len + 1 = 5 tokens, fewer than "
                                        "the 3 data-parallel ranks"),
            absl::string_view::npos)
      << few.status();
}

// Three shards whose tokens are their global position, so a window's first token names it.
// With T = 4: 41 tokens -> 10 windows, 17 -> 4, 65 -> 16; 30 in all.
constexpr int64_t kT = 4;
std::string write_numbered_shards(const std::string& dir) {
  uint16_t next = 0;
  for (int s = 0; s < 3; ++s) {
    size_t n = std::vector<size_t>{41, 17, 65}[s];
    std::string path = dir + "/train_00000" + std::to_string(s) + ".bin";
    SY_CHECK(write_shard(path, iota_tokens(n, next)).ok());
    next += n;
  }
  return dir + "/train_*.bin";
}

// First token of every window, in window order: shard starts 0, 41, 58.
std::vector<int32_t> all_window_starts() {
  std::vector<int32_t> starts;
  for (auto [base, windows] : {std::pair{0, 10}, {41, 4}, {58, 16}})
    for (int k = 0; k < windows; ++k) starts.push_back(base + k * kT);
  return starts;
}

// Takes `count` windows from the loader, B at a time, and returns their first tokens;
// checks each row is one window: T consecutive inputs, targets the same shifted by one.
std::vector<int32_t> take_windows(ShardLoader& loader, int64_t count, int64_t B) {
  std::vector<int32_t> firsts;
  while (static_cast<int64_t>(firsts.size()) < count) {
    auto next = loader.next_batch(B);
    SY_CHECK(next.ok()) << next.status();
    TokenBatch batch = std::move(*next);
    EXPECT_EQ(batch.inputs.shape(), (Shape{B, kT}));
    EXPECT_EQ(batch.target_tokens, B * kT);
    std::vector<int32_t> in = batch.inputs.to_i32_vector(), tg = batch.targets.to_i32_vector();
    for (int64_t r = 0; r < B && static_cast<int64_t>(firsts.size()) < count; ++r) {
      for (int64_t j = 0; j < kT; ++j) {
        EXPECT_EQ(in[r * kT + j], in[r * kT] + j);
        EXPECT_EQ(tg[r * kT + j], in[r * kT] + j + 1);
      }
      firsts.push_back(in[r * kT]);
    }
  }
  return firsts;
}

TEST(TokenShardsTest, RanksTogetherCoverEveryWindowExactlyOncePerEpoch) {
  std::string pattern = write_numbered_shards(test_dir());
  const std::vector<int32_t> windows = all_window_starts();
  const std::set<int32_t> all(windows.begin(), windows.end());
  for (int R : {1, 2, 3, 4, 5, 7}) {
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      std::set<int32_t> seen;
      size_t total = 0;
      for (int r = 0; r < R; ++r) {
        absl::StatusOr<ShardLoader> loader = ShardLoader::open({pattern, kT, 65536, r, R, 99});
        ASSERT_TRUE(loader.ok()) << loader.status();
        EXPECT_EQ(loader->num_windows(), 30);
        EXPECT_EQ(loader->windows_per_rank(), 30 / R);
        ASSERT_TRUE(loader->set_position({epoch, 0}).ok());
        std::vector<int32_t> mine = take_windows(*loader, loader->windows_per_rank(), 1);
        for (int32_t w : mine) EXPECT_TRUE(all.count(w)) << w;
        seen.insert(mine.begin(), mine.end());
        total += mine.size();
      }
      EXPECT_EQ(total, seen.size()) << "ranks overlap, R=" << R;  // no window twice
      // Every window when R divides 30; otherwise the W mod R left over this epoch.
      EXPECT_EQ(seen.size(), static_cast<size_t>(30 - 30 % R)) << "R=" << R;
    }
  }
}

TEST(TokenShardsTest, ShuffleIsDeterministicAndDiffersPerEpochAndSeed) {
  std::string pattern = write_numbered_shards(test_dir());
  absl::StatusOr<ShardLoader> a = ShardLoader::open({pattern, kT, 65536, 0, 1, 5});
  absl::StatusOr<ShardLoader> b = ShardLoader::open({pattern, kT, 65536, 0, 1, 5});
  absl::StatusOr<ShardLoader> c = ShardLoader::open({pattern, kT, 65536, 0, 1, 6});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  // Batches of 7 do not divide the 30-window epoch: the loader crosses epochs mid-batch.
  std::vector<int32_t> first = take_windows(*a, 60, 7);
  std::vector<int32_t> again = take_windows(*b, 60, 7);
  EXPECT_EQ(first, again);
  EXPECT_EQ(a->position(), (LoaderPosition{2, 3}));  // 9 batches: 30 + 30 + 3 windows
  std::vector<int32_t> epoch0(first.begin(), first.begin() + 30);
  std::vector<int32_t> epoch1(first.begin() + 30, first.end());
  EXPECT_NE(epoch0, epoch1);
  EXPECT_NE(epoch0, all_window_starts());  // shuffled, not in file order
  std::vector<int32_t> sorted0 = epoch0, sorted1 = epoch1;
  std::sort(sorted0.begin(), sorted0.end());
  std::sort(sorted1.begin(), sorted1.end());
  EXPECT_EQ(sorted0, all_window_starts());
  EXPECT_EQ(sorted1, all_window_starts());
  EXPECT_NE(take_windows(*c, 30, 1), epoch0);
}

TEST(TokenShardsTest, RestoredPositionContinuesIdentically) {
  std::string pattern = write_numbered_shards(test_dir());
  for (int r = 0; r < 2; ++r) {
    ShardLoaderOptions options{pattern, kT, 65536, r, 2, 77};
    absl::StatusOr<ShardLoader> a = ShardLoader::open(options);
    ASSERT_TRUE(a.ok());
    take_windows(*a, 12, 4);  // 15 per rank per epoch: the continuation crosses an epoch
    LoaderPosition saved = a->position();
    EXPECT_EQ(saved, (LoaderPosition{0, 12}));
    std::vector<int32_t> expected = take_windows(*a, 24, 4);

    absl::StatusOr<ShardLoader> b = ShardLoader::open(options);
    ASSERT_TRUE(b.ok());
    ASSERT_TRUE(b->set_position(saved).ok());
    EXPECT_EQ(take_windows(*b, 24, 4), expected);
    EXPECT_EQ(b->position(), a->position());
  }
  absl::StatusOr<ShardLoader> c = ShardLoader::open({pattern, kT, 65536, 0, 2, 77});
  ASSERT_TRUE(c.ok());
  absl::Status bad = c->set_position({0, 16});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("15 windows per rank"), absl::string_view::npos) << bad;
  EXPECT_FALSE(c->set_position({-1, 0}).ok());
}

TEST(TokenShardsTest, TextShardsHoldTheBytesWithTheTailAsVal) {
  std::string dir = test_dir();
  std::string text1, text2;
  for (int i = 0; i < 700; ++i) text1 += static_cast<char>('a' + i % 26);
  for (int i = 0; i < 500; ++i) text2 += static_cast<char>(i % 256);  // any byte, NUL too
  write_bytes(dir + "/one.txt", text1);
  write_bytes(dir + "/two.txt", text2);
  std::string out = dir + "/shards";
  // 1200 bytes: val = max(1% = 12, 100) = 100 tokens, train = 1100 = 3 x 300 + 200.
  ASSERT_TRUE(write_text_shards({dir + "/one.txt", dir + "/two.txt"}, out, 300, 100).ok());

  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names,
            (std::vector<std::string>{"train_000000.bin", "train_000001.bin", "train_000002.bin",
                                      "train_000003.bin", "val_000000.bin"}));
  std::string all = text1 + text2, joined;
  std::vector<size_t> sizes;
  for (const std::string& name : names) {
    absl::StatusOr<Shard> shard = read_shard(out + "/" + name);
    ASSERT_TRUE(shard.ok()) << shard.status();
    sizes.push_back(shard->tokens().size());
    for (uint16_t t : shard->tokens()) joined += static_cast<char>(t);
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{300, 300, 300, 200, 100}));
  EXPECT_EQ(joined, all);

  EXPECT_TRUE(ShardLoader::open({out + "/train_*.bin", 64, kByteVocabSize}).ok());
  EXPECT_TRUE(ShardLoader::open({out + "/val_*.bin", 64, kByteVocabSize}).ok());

  // Running again into the same directory would mix old and new shards: refused.
  absl::Status again = write_text_shards({dir + "/one.txt"}, out, 300, 1);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.message().find("already holds shards"), absl::string_view::npos) << again;

  absl::Status missing = write_text_shards({dir + "/nope.txt"}, dir + "/o2", 300);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("nope.txt"), absl::string_view::npos) << missing;
  absl::Status tiny = write_text_shards({dir + "/one.txt"}, dir + "/o3", 300, 700);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.message().find("only 700 bytes"), absl::string_view::npos) << tiny;
}

}  // namespace
}  // namespace sy
