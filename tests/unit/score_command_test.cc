// `switchyard score` on a small trained run (CPU): the log-probs it writes equal a log-softmax
// of Transformer::logits over the same ids, for the byte tokenizer and for a tokenizer.json
// copied into the run; bad input lines are errors naming file, line and field.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/transformer.h"
#include "tests/testing/small_model.h"
#include "trainer/checkpoint.h"
#include "trainer/cli/score.h"
#include "trainer/config.h"
#include "trainer/data/tokenizer.h"
#include "trainer/json.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

class ScoreCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    run_dir_ = new std::string((fs::path(::testing::TempDir()) / "score_command_run").string());
    fs::remove_all(*run_dir_);
    switchyard::Experiment config;
    SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
    // A vocabulary that holds bytes and the gpt2 fixture's 556 tokens; a context for the texts.
    SY_CHECK(google::protobuf::TextFormat::MergeFromString(
        "model { vocab_size: 560 seq_len: 64 } "
        "train { steps: 2 micro_batch: 2 cpu_threads: 1 eval_interval: 0 } "
        "checkpoint { interval: 0 } data { arithmetic { max_digits: 1 eval_examples: 2 } }",
        &config));
    SY_CHECK(validate_experiment(config).ok());
    std::ostringstream log;
    const absl::Status trained = train(config, {.run_dir = *run_dir_}, log);
    SY_CHECK(trained.ok()) << trained << "\n" << log.str();
  }
  static void TearDownTestSuite() { delete run_dir_; }

  static std::string write_file(const std::string& name, const std::string& text) {
    const std::string path = (fs::path(::testing::TempDir()) / name).string();
    std::ofstream(path) << text;
    return path;
  }
  static std::vector<Json> read_jsonl(const std::string& path) {
    std::ifstream in(path);
    std::vector<Json> out;
    for (std::string line; std::getline(in, line);) out.push_back(*parse_json(line));
    return out;
  }

  // log softmax(logits[t])[ids[t+1]] from a plain forward of the checkpoint.
  static std::vector<double> reference_logprobs(const std::vector<int32_t>& ids) {
    auto config = load_experiment(*run_dir_ + "/config.textproto", {});
    SY_CHECK(config.ok());
    const ModelSpec spec = model_spec_from_config(*config);
    ParamStore store(Device::cpu(), DType::kF32);
    Transformer model(spec, store);
    SY_CHECK(load_checkpoint(*latest_checkpoint(*run_dir_), store, nullptr, {.expert_parallel = 1})
                 .ok());
    const int64_t n = static_cast<int64_t>(ids.size()) - 1;
    std::vector<int32_t> inputs(ids.begin(), ids.end() - 1);
    const std::vector<float> logits =
        model.logits(Tensor::from_i32(inputs, {1, n}), false).to_f32_vector();
    const int64_t v = spec.vocab_size;
    std::vector<double> out;
    for (int64_t t = 0; t < n; ++t) {
      double max = -INFINITY, sum = 0;
      for (int64_t k = 0; k < v; ++k) max = std::max<double>(max, logits[t * v + k]);
      for (int64_t k = 0; k < v; ++k) sum += std::exp(logits[t * v + k] - max);
      out.push_back(logits[t * v + ids[t + 1]] - max - std::log(sum));
    }
    return out;
  }

  static void expect_matches_reference(const std::string& output, const Tokenizer& tokenizer,
                                       const std::vector<std::string>& texts) {
    const std::vector<Json> lines = read_jsonl(output);
    ASSERT_EQ(lines.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      SCOPED_TRACE(texts[i]);
      EXPECT_EQ(lines[i].find("text")->as_string(), texts[i]);
      std::vector<int32_t> ids;
      for (const Json& id : lines[i].find("token_ids")->as_array())
        ids.push_back(static_cast<int32_t>(id.as_int()));
      EXPECT_EQ(ids, *tokenizer.encode(texts[i], true));
      const auto& logprobs = lines[i].find("logprobs")->as_array();
      ASSERT_EQ(logprobs.size(), ids.empty() ? 0 : ids.size() - 1);
      double total = 0;
      if (ids.size() >= 2) {
        const std::vector<double> expected = reference_logprobs(ids);
        for (size_t t = 0; t < expected.size(); ++t) {
          EXPECT_NEAR(logprobs[t].as_double(), expected[t], 2e-5) << "token " << t;
          total += logprobs[t].as_double();
          EXPECT_LT(logprobs[t].as_double(), 0.0);
        }
      }
      EXPECT_NEAR(lines[i].find("total_logprob")->as_double(), total, 1e-4);
    }
  }

  static std::string* run_dir_;
};
std::string* ScoreCommand::run_dir_ = nullptr;

TEST_F(ScoreCommand, LogprobsEqualASoftmaxOfTheLogitsWithEitherTokenizer) {
  const std::vector<std::string> texts = {"3+4=7\n", "12-5=7", "x", "Hello, world"};
  std::string jsonl;
  for (const auto& t : texts) jsonl += to_json(Json(Json::Object{{"text", t}, {"id", 1}})) + "\n";
  const std::string input = write_file("score_in.jsonl", jsonl);
  std::ostringstream out;
  absl::Status s = run_score_command(
      {"--checkpoint", *run_dir_, "--input", input, "--output", input + ".bytes"}, out);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_NE(out.str().find("perplexity"), std::string::npos);
  expect_matches_reference(input + ".bytes", *make_byte_tokenizer(), texts);

  // The same run with a tokenizer.json beside it scores that tokenizer's ids.
  const std::string bpe_run = *run_dir_ + "_bpe";
  fs::remove_all(bpe_run);
  fs::copy(*run_dir_, bpe_run, fs::copy_options::recursive);
  fs::copy_file(std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/tokenizers/gpt2/tokenizer.json",
                bpe_run + "/tokenizer.json");
  const std::string saved = *run_dir_;
  *run_dir_ = bpe_run;
  s = run_score_command({"--checkpoint", bpe_run, "--input", input, "--output", input + ".bpe"},
                        out);
  ASSERT_TRUE(s.ok()) << s;
  auto tok = load_tokenizer(bpe_run);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->kind(), "bpe");
  expect_matches_reference(input + ".bpe", **tok, texts);
  *run_dir_ = saved;
}

TEST_F(ScoreCommand, BadLinesAreErrorsNamingFileLineAndField) {
  std::ostringstream out;
  auto run = [&](const std::string& text, std::vector<std::string> extra = {}) {
    const std::string input = write_file("score_bad.jsonl", text);
    std::vector<std::string> args = {"--checkpoint", *run_dir_,  "--input",
                                     input,          "--output", input + ".out"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_score_command(args, out);
  };
  absl::Status s = run("{\"text\": \"1+1\"}\n{\"body\": \"x\"}\n");
  EXPECT_NE(s.message().find("score_bad.jsonl:2"), std::string::npos) << s;
  EXPECT_NE(s.message().find("\"text\""), std::string::npos) << s;
  s = run("not json\n");
  EXPECT_NE(s.message().find("score_bad.jsonl:1"), std::string::npos) << s;
  s = run(absl::StrCat("{\"text\": \"", std::string(100, 'a'), "\"}\n"));
  EXPECT_NE(s.message().find("model.seq_len"), std::string::npos) << s;
  s = run("{\"body\": \"fine\"}\n", {"--field", "body"});
  EXPECT_TRUE(s.ok()) << s;
  s = run_score_command({"--checkpoint", *run_dir_ + "/nope", "--input", "x", "--output", "y"},
                        out);
  EXPECT_NE(s.message().find("config.textproto"), std::string::npos) << s;
}

}  // namespace
}  // namespace sy
