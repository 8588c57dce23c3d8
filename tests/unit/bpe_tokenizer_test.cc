// The tokenizer.json reader against the Python `tokenizers` package: the fixtures and the
// reference ids and decodes come from tests/data/tokenizers/make_fixtures.py.
#include "trainer/data/bpe_tokenizer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "trainer/data/tokenizer.h"
#include "trainer/json.h"

namespace sy {
namespace {

std::string fixture_dir(const std::string& style) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/tokenizers/" + style;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

const Json& cases() {
  static const Json* json = [] {
    auto parsed = parse_json(
        read_all(std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/tokenizers/cases.json"));
    SY_CHECK(parsed.ok()) << parsed.status();
    return new Json(std::move(*parsed));
  }();
  return *json;
}

std::vector<int32_t> ids_of(const Json& list) {
  std::vector<int32_t> ids;
  for (const Json& v : list.as_array()) ids.push_back(static_cast<int32_t>(v.as_int()));
  return ids;
}

class BpeFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BpeFixtureTest, EncodesAndDecodesAsTokenizersDoes) {
  const std::string style = GetParam();
  auto tok = load_tokenizer(fixture_dir(style));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "bpe");
  const Json& reference = *cases().find("styles")->find(style);
  EXPECT_EQ((*tok)->vocab_size(), reference.find("vocab_size")->as_int());
  const auto& texts = cases().find("texts")->as_array();
  const auto& encodings = reference.find("encodings")->as_array();
  ASSERT_EQ(texts.size(), encodings.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string& text = texts[i].as_string();
    const Json& expected = encodings[i];
    SCOPED_TRACE(absl::StrCat(style, " text ", i, ": \"", text, "\""));
    auto plain = (*tok)->encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_EQ(*plain, ids_of(*expected.find("ids")));
    auto special = (*tok)->encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(special.ok()) << special.status();
    EXPECT_EQ(*special, ids_of(*expected.find("ids_with_special_tokens")));
    auto decoded = (*tok)->decode(*plain, /*skip_special_tokens=*/false);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, expected.find("decode")->as_string());
    auto skipped = (*tok)->decode(*special, /*skip_special_tokens=*/true);
    ASSERT_TRUE(skipped.ok()) << skipped.status();
    EXPECT_EQ(*skipped, expected.find("decode_skip_special")->as_string());
  }
  for (const Json& d : reference.find("decodes")->as_array()) {
    std::vector<int32_t> ids = ids_of(*d.find("ids"));
    SCOPED_TRACE(absl::StrCat(style, " decode of ", to_json(*d.find("ids"))));
    auto text = (*tok)->decode(ids, false);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, d.find("text")->as_string());
    auto skipped = (*tok)->decode(ids, true);
    ASSERT_TRUE(skipped.ok()) << skipped.status();
    EXPECT_EQ(*skipped, d.find("text_skip_special")->as_string());
  }
}

INSTANTIATE_TEST_SUITE_P(Styles, BpeFixtureTest,
                         ::testing::Values("gpt2", "gpt2_prefix_space", "llama3", "qwen2",
                                           "qwen2_tiny"));

TEST(BpeTokenizerTest, EosComesFromGenerationConfigThenTokenizerConfig) {
  auto gpt2 = load_tokenizer(fixture_dir("gpt2"));
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ((*gpt2)->eos_ids(), std::vector<int32_t>{*(*gpt2)->token_to_id("<|endoftext|>")});
  // llama3's tokenizer_config.json names another token: generation_config.json's list wins.
  auto llama = load_tokenizer(fixture_dir("llama3"));
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ((*llama)->eos_ids(), (std::vector<int32_t>{*(*llama)->token_to_id("<|end_of_text|>"),
                                                       *(*llama)->token_to_id("<|eot_id|>")}));
  auto qwen = load_tokenizer(fixture_dir("qwen2"));
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_EQ((*qwen)->eos_ids(), std::vector<int32_t>{*(*qwen)->token_to_id("<|im_end|>")});
  EXPECT_EQ((*qwen)->token_to_id("no such token"), std::nullopt);
}

TEST(BpeTokenizerTest, ADirectoryWithoutTokenizerJsonGivesTheByteTokenizer) {
  auto tok = load_tokenizer(::testing::TempDir());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "bytes");
  EXPECT_EQ((*tok)->vocab_size(), 256);
  EXPECT_EQ((*tok)->eos_ids(), std::vector<int32_t>{'\n'});
  auto ids = (*tok)->encode("ab\n", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{'a', 'b', '\n'}));
  auto missing = load_tokenizer(::testing::TempDir() + "/no_such_dir");
  EXPECT_FALSE(missing.ok());
}

TEST(BpeTokenizerTest, IdsOutsideTheVocabularyAndInvalidUtf8AreErrors) {
  auto tok = load_tokenizer(fixture_dir("gpt2"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::vector<int32_t> ids = {40, 100000};
  auto text = (*tok)->decode(ids, false);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("position 1"), std::string::npos) << text.status();
  auto bad = (*tok)->encode("ok \xff\xfe", false);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("UTF-8"), std::string::npos) << bad.status();
}

// Writes `json` (the gpt2 fixture with one edit) as tokenizer.json in a fresh directory.
std::string write_variant(const std::string& name, const std::function<void(Json&)>& edit) {
  auto spec = parse_json(read_all(fixture_dir("gpt2") + "/tokenizer.json"));
  SY_CHECK(spec.ok());
  edit(*spec);
  std::string dir = ::testing::TempDir() + "/bpe_variant_" + name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << to_json(*spec);
  return dir;
}

void expect_error(const std::string& dir, const std::vector<std::string>& words) {
  auto tok = load_tokenizer(dir);
  ASSERT_FALSE(tok.ok()) << "loaded " << dir;
  for (const std::string& w : words)
    EXPECT_NE(tok.status().message().find(w), std::string::npos)
        << "error \"" << tok.status().message() << "\" does not mention \"" << w << "\"";
}

TEST(BpeTokenizerTest, UnsupportedPiecesAreErrorsNamingThem) {
  expect_error(
      write_variant("wordpiece",
                    [](Json& j) { const_cast<Json*>(j.find("model"))->set("type", "WordPiece"); }),
      {"tokenizer.json", "model", "WordPiece"});
  expect_error(write_variant("metaspace",
                             [](Json& j) {
                               j.set("pre_tokenizer", Json(Json::Object{{"type", "Metaspace"}}));
                             }),
               {"pre_tokenizer", "Metaspace"});
  expect_error(write_variant("lowercase",
                             [](Json& j) {
                               j.set("normalizer", Json(Json::Object{{"type", "Lowercase"}}));
                             }),
               {"normalizer", "Lowercase"});
  expect_error(
      write_variant("roberta",
                    [](Json& j) {
                      j.set("post_processor", Json(Json::Object{{"type", "RobertaProcessing"}}));
                    }),
      {"post_processor", "RobertaProcessing"});
  expect_error(write_variant(
                   "fallback",
                   [](Json& j) { const_cast<Json*>(j.find("model"))->set("byte_fallback", true); }),
               {"byte_fallback"});
}

TEST(BpeTokenizerTest, BadFilesAreErrorsNamingTheField) {
  expect_error(write_variant("bad_merge",
                             [](Json& j) {
                               auto& merges =
                                   const_cast<Json*>(j.find("model")->find("merges"))->as_array();
                               merges[3] = Json("Ġnot_a_token zzz");
                             }),
               {"model.merges[3]", "not in model.vocab"});
  expect_error(write_variant("merge_shape",
                             [](Json& j) {
                               auto& merges =
                                   const_cast<Json*>(j.find("model")->find("merges"))->as_array();
                               merges[0] = Json("abc");
                             }),
               {"model.merges[0]"});
  expect_error(write_variant("bad_regex",
                             [](Json& j) {
                               j.set("pre_tokenizer",
                                     Json(Json::Object{
                                         {"type", "Split"},
                                         {"pattern", Json(Json::Object{{"Regex", "(unclosed"}})},
                                         {"behavior", "Isolated"},
                                         {"invert", false}}));
                             }),
               {"pre_tokenizer", "regex", "(unclosed"});
  expect_error(
      write_variant(
          "no_vocab",
          [](Json& j) { const_cast<Json*>(j.find("model"))->set("vocab", Json(Json::Array{})); }),
      {"model", "vocab"});
  expect_error(write_variant("added_id",
                             [](Json& j) {
                               auto& added = const_cast<Json*>(j.find("added_tokens"))->as_array();
                               added[0].set("id", 9999);
                             }),
               {"added_tokens[0]", "9999"});
  std::string dir = ::testing::TempDir() + "/bpe_truncated";
  std::filesystem::create_directories(dir);
  std::string text = read_all(fixture_dir("gpt2") + "/tokenizer.json");
  std::ofstream(dir + "/tokenizer.json") << text.substr(0, text.size() / 2);
  expect_error(dir, {"tokenizer.json", "JSON error"});
}

// A file the size of Qwen's (151k tokens, 151k merges) must load well under a second: it is
// read at the start of every rollout, `generate` and `score`.
TEST(BpeTokenizerTest, ALargeVocabularyLoadsQuickly) {
  constexpr int kMerges = 151000;
  auto spec = parse_json(read_all(fixture_dir("qwen2") + "/tokenizer.json"));
  ASSERT_TRUE(spec.ok());
  Json* model = const_cast<Json*>(spec->find("model"));
  Json::Object vocab;
  Json::Array merges;
  std::vector<std::string> tokens;
  for (const auto& [token, id] : model->find("vocab")->as_object())
    if (token.size() <= 2) tokens.push_back(token);
  tokens.resize(std::min<size_t>(tokens.size(), 256));
  for (size_t i = 0; i < tokens.size(); ++i) vocab.emplace_back(tokens[i], static_cast<int64_t>(i));
  // Pairs of short tokens, each merge making a new token from two earlier ones.
  std::mt19937 rng(1);
  for (int m = 0; m < kMerges; ++m) {
    for (;;) {
      const std::string& a = tokens[rng() % tokens.size()];
      const std::string& b = tokens[rng() % std::min<size_t>(tokens.size(), 256)];
      std::string joined = a + b;
      if (joined.size() > 24) continue;
      if (std::find(tokens.end() - std::min<size_t>(tokens.size(), 64), tokens.end(), joined) !=
          tokens.end())
        continue;
      merges.push_back(Json(Json::Array{Json(a), Json(b)}));
      tokens.push_back(joined);
      vocab.emplace_back(joined, static_cast<int64_t>(vocab.size()));
      break;
    }
  }
  // Duplicates of a joined string would be duplicate JSON keys: keep the first.
  Json::Object unique;
  absl::flat_hash_set<std::string> seen;
  absl::flat_hash_map<std::string, int64_t> ids;
  for (auto& [k, v] : vocab)
    if (seen.insert(k).second) {
      ids[k] = static_cast<int64_t>(unique.size());
      unique.emplace_back(k, static_cast<int64_t>(unique.size()));
    }
  model->set("vocab", Json(std::move(unique)));
  model->set("merges", Json(std::move(merges)));
  spec->set("added_tokens", Json(Json::Array{}));
  std::string dir = ::testing::TempDir() + "/bpe_large";
  std::filesystem::create_directories(dir);
  std::filesystem::remove(dir + "/generation_config.json");
  std::string text = to_json(*spec);
  std::ofstream(dir + "/tokenizer.json") << text;
  auto start = std::chrono::steady_clock::now();
  auto tok = load_tokenizer(dir);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::printf("loaded %.1f MB tokenizer.json (%lld tokens) in %.3f s\n", text.size() / 1e6,
              static_cast<long long>((*tok)->vocab_size()), seconds);
  // Bound loose enough for a busy CI machine; the measured time is printed above.
  EXPECT_LT(seconds, 2.0);
  auto ids_out = (*tok)->encode("a quick test of the large tokenizer 12345", false);
  ASSERT_TRUE(ids_out.ok()) << ids_out.status();
  auto back = (*tok)->decode(*ids_out, false);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, "a quick test of the large tokenizer 12345");
}

}  // namespace
}  // namespace sy
