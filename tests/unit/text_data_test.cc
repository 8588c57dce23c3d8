// `switchyard data`'s library half: text and JSONL to token shards with any tokenizer, the
// shards holding exactly the tokenizer's ids of the whole input.
#include "trainer/data/text_data.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "trainer/commands.h"
#include "trainer/data/tokenizer.h"
#include "trainer/json.h"
#include "trainer/token_shards.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "/text_data_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// Every token of the train shards then the val shards, in order.
std::vector<int32_t> read_stream(const std::string& dir) {
  std::vector<std::string> paths;
  for (const char* split : {"train", "val"}) {
    std::vector<std::string> these;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().starts_with(split)) these.push_back(e.path().string());
    std::sort(these.begin(), these.end());
    paths.insert(paths.end(), these.begin(), these.end());
  }
  std::vector<int32_t> out;
  for (const std::string& p : paths) {
    auto shard = read_shard(p);
    SY_CHECK(shard.ok()) << shard.status();
    out.insert(out.end(), shard->tokens().begin(), shard->tokens().end());
  }
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A text with every kind of boundary the pieces may be cut at: newlines before words, before
// spaces and other newlines, runs of whitespace, special tokens.
std::string sample_text(int repeats) {
  std::string text;
  for (int i = 0; i < repeats; ++i)
    absl::StrAppend(&text, "Line ", i, " of the text, with Grüße and 机器学习.\n",
                    "  indented line\n\n\nafter blank lines\t\ttabs\n<|endoftext|>next\n \n");
  return text;
}

std::string tokenizer_dir(const std::string& style) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/tokenizers/" + style;
}

TEST(TextDataTest, BytesGiveTheSameShardsAsTheByteWriter) {
  const std::string dir = fresh_dir("bytes");
  const std::string input = write_file(dir + "/in.txt", sample_text(60));
  const std::string old_dir = dir + "/old", new_dir = dir + "/new";
  ASSERT_TRUE(write_text_shards({input}, old_dir, 1000, 200).ok());
  auto bytes = make_byte_tokenizer();
  ASSERT_TRUE(write_token_shards(*bytes,
                                 {.inputs = {input},
                                  .output_dir = new_dir,
                                  .tokens_per_shard = 1000,
                                  .min_val_tokens = 200,
                                  .piece_bytes = 100},
                                 nullptr)
                  .ok());
  int files = 0;
  for (const auto& e : fs::directory_iterator(old_dir)) {
    ++files;
    EXPECT_EQ(read_bytes(e.path().string()),
              read_bytes(new_dir + "/" + e.path().filename().string()))
        << e.path();
  }
  EXPECT_GT(files, 3);
}

TEST(TextDataTest, PlainTextInPiecesEncodesAsTheWholeText) {
  for (const char* style : {"gpt2", "llama3", "qwen2"}) {
    SCOPED_TRACE(style);
    auto tok = load_tokenizer(tokenizer_dir(style));
    ASSERT_TRUE(tok.ok()) << tok.status();
    const std::string dir = fresh_dir(std::string("pieces_") + style);
    const std::string text = sample_text(40);
    const std::string input = write_file(dir + "/in.txt", text);
    const int32_t eot = (*tok)->eos_ids().empty() ? 0 : (*tok)->eos_ids()[0];
    ASSERT_TRUE(write_token_shards(**tok,
                                   {.inputs = {input, input},
                                    .output_dir = dir + "/out",
                                    .tokens_per_shard = 500,
                                    .min_val_tokens = 100,
                                    .end_of_document = eot,
                                    .piece_bytes = 97},
                                   nullptr)
                    .ok());
    auto whole = (*tok)->encode(text, false);
    ASSERT_TRUE(whole.ok());
    std::vector<int32_t> expected = *whole;
    expected.push_back(eot);
    expected.insert(expected.end(), whole->begin(), whole->end());
    expected.push_back(eot);
    EXPECT_EQ(read_stream(dir + "/out"), expected);
  }
}

TEST(TextDataTest, JsonlLinesAreDocuments) {
  auto tok = load_tokenizer(tokenizer_dir("qwen2"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string dir = fresh_dir("jsonl");
  std::string jsonl;
  std::vector<int32_t> expected;
  const int32_t eot = *(*tok)->token_to_id("<|endoftext|>");
  for (int i = 0; i < 200; ++i) {
    std::string doc = absl::StrCat("Document ", i, ": ", sample_text(1));
    jsonl += to_json(Json(Json::Object{{"id", i}, {"body", doc}})) + "\n";
    auto ids = (*tok)->encode(doc, false);
    ASSERT_TRUE(ids.ok());
    expected.insert(expected.end(), ids->begin(), ids->end());
    expected.push_back(eot);
  }
  const std::string input = write_file(dir + "/docs.jsonl", jsonl);
  std::ostringstream progress;
  ASSERT_TRUE(write_token_shards(**tok,
                                 {.inputs = {input},
                                  .output_dir = dir + "/out",
                                  .field = "body",
                                  .tokens_per_shard = 4000,
                                  .min_val_tokens = 100,
                                  .end_of_document = eot},
                                 &progress)
                  .ok());
  EXPECT_EQ(read_stream(dir + "/out"), expected);
  EXPECT_NE(progress.str().find("tokens"), std::string::npos);
}

TEST(TextDataTest, BadInputsAreErrorsNamingThem) {
  const std::string dir = fresh_dir("bad");
  auto bytes = make_byte_tokenizer();
  const std::string jsonl =
      write_file(dir + "/in.jsonl", "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n");
  absl::Status s = write_token_shards(
      *bytes, {.inputs = {jsonl}, .output_dir = dir + "/out", .min_val_tokens = 1}, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("in.jsonl:2"), std::string::npos) << s;
  EXPECT_NE(s.message().find("\"text\""), std::string::npos) << s;
  EXPECT_FALSE(fs::exists(dir + "/out/.tokens.tmp"));
  const std::string not_json = write_file(dir + "/bad.jsonl", "{\"text\": \"a\"}\n{oops\n");
  s = write_token_shards(*bytes, {.inputs = {not_json}, .output_dir = dir + "/out2"}, nullptr);
  EXPECT_NE(s.message().find("bad.jsonl:2"), std::string::npos) << s;
  // Through the command: an --eot that is no token, a tokenizer directory that is missing.
  std::ostringstream out;
  const std::string text = write_file(dir + "/in.txt", sample_text(50));
  s = run_data_command({"--input", text, "--output", dir + "/out3", "--tokenizer",
                        tokenizer_dir("gpt2"), "--eot", "<|nope|>"},
                       out);
  EXPECT_NE(s.message().find("--eot"), std::string::npos) << s;
  s = run_data_command(
      {"--input", text, "--output", dir + "/out4", "--tokenizer", dir + "/no_such"}, out);
  EXPECT_NE(s.message().find("--tokenizer"), std::string::npos) << s;
  // And a run that works, with the tokenizer's eos between documents by default.
  s = run_data_command(
      {"--input", text, "--output", dir + "/out5", "--tokenizer", tokenizer_dir("gpt2")}, out);
  ASSERT_TRUE(s.ok()) << s;
  auto tok = load_tokenizer(tokenizer_dir("gpt2"));
  auto ids = (*tok)->encode(sample_text(50), false);
  ids->push_back(*(*tok)->token_to_id("<|endoftext|>"));
  EXPECT_EQ(read_stream(dir + "/out5"), *ids);
}

}  // namespace
}  // namespace sy

namespace sy {
namespace {

// A vocabulary past uint16: every byte b is the id 65536 + b (and '\n' ends a document).
class WideTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "wide"; }
  int64_t vocab_size() const override { return 65536 + 256; }
  absl::StatusOr<std::vector<int32_t>> encode(std::string_view text, bool) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(65536 + c);
    return ids;
  }
  absl::StatusOr<std::string> decode(std::span<const int32_t>, bool) const override {
    return std::string();
  }
  const std::vector<int32_t>& eos_ids() const override { return eos_; }
  std::optional<int32_t> token_to_id(std::string_view) const override { return std::nullopt; }

 private:
  std::vector<int32_t> eos_{65536 + '\n'};
};

TEST(TextDataTest, LargeVocabulariesWriteWideShardsTheLoaderReads) {
  const std::string dir = fresh_dir("wide");
  const std::string text = sample_text(30);
  const std::string input = write_file(dir + "/in.txt", text);
  WideTokenizer tok;
  ASSERT_TRUE(write_token_shards(tok,
                                 {.inputs = {input},
                                  .output_dir = dir + "/out",
                                  .tokens_per_shard = 700,
                                  .min_val_tokens = 100},
                                 nullptr)
                  .ok());
  auto first = read_shard(dir + "/out/train_000000.bin");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->wide());
  EXPECT_EQ(first->size(), 700);
  EXPECT_EQ(first->wide_tokens()[0], 65536u + static_cast<unsigned char>(text[0]));
  // The loader serves windows of the wide tokens; a vocabulary too small for them is an error.
  auto loader = ShardLoader::open(
      {.pattern = dir + "/out/train_*.bin", .seq_len = 16, .vocab_size = 65536 + 256});
  ASSERT_TRUE(loader.ok()) << loader.status();
  auto next = loader->next_batch(4);
  ASSERT_TRUE(next.ok()) << next.status();
  TokenBatch batch = std::move(*next);
  for (int32_t id : batch.inputs.to_i32_vector()) {
    EXPECT_GE(id, 65536);
    EXPECT_LT(id, 65536 + 256);
  }
  auto small =
      ShardLoader::open({.pattern = dir + "/out/train_*.bin", .seq_len = 16, .vocab_size = 65536});
  ASSERT_FALSE(small.ok());
  EXPECT_NE(small.status().message().find("vocab_size"), std::string::npos) << small.status();
}

}  // namespace
}  // namespace sy
