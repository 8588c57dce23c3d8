// `switchyard generate` on a small trained run (CPU): the JSONL path keeps every input field
// and adds completions whose log-probs match a forward of the model, samples that do not
// depend on --batch_size, completions cut at the model's context; and every bad input (file,
// line, flag) gives an error that names it.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "models/transformer.h"
#include "tests/testing/small_model.h"
#include "trainer/checkpoint.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

class GenerateCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    run_dir_ = new std::string((fs::path(::testing::TempDir()) / "generate_command_run").string());
    fs::remove_all(*run_dir_);
    switchyard::Experiment config;
    SY_CHECK(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
    SY_CHECK(google::protobuf::TextFormat::MergeFromString(
        "train { steps: 300 micro_batch: 8 cpu_threads: 1 eval_interval: 0 } "
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
  static absl::Status generate(const std::vector<std::string>& extra,
                               std::string* printed = nullptr) {
    std::vector<std::string> args = {"--checkpoint", *run_dir_};
    args.insert(args.end(), extra.begin(), extra.end());
    std::ostringstream out;
    absl::Status s = run_generate_command(args, out);
    if (printed) *printed = out.str();
    return s;
  }
  static std::vector<Json> read_jsonl(const std::string& path) {
    std::ifstream in(path);
    std::vector<Json> out;
    for (std::string line; std::getline(in, line);) {
      auto j = parse_json(line);
      EXPECT_TRUE(j.ok()) << line;
      if (j.ok()) out.push_back(*j);
    }
    return out;
  }
  static std::string read_text(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  // The error of a run over a prompt file holding `text`.
  static absl::Status generate_from(const std::string& text, std::vector<std::string> extra = {}) {
    const std::string in = write_file("bad_prompts.jsonl", text);
    extra.insert(extra.begin(), {"--prompts", in, "--output", in + ".out"});
    return generate(extra);
  }
  static std::string* run_dir_;
};
std::string* GenerateCommand::run_dir_ = nullptr;

// log p(t) under softmax(logits / temperature) at each position of `ids` after `prompt_len`,
// from the model's full logits (not the token_logprobs path the command uses).
std::vector<double> reference_logprobs(Transformer& model, const std::vector<int32_t>& ids,
                                       size_t prompt_len, double temperature) {
  const int64_t t = static_cast<int64_t>(ids.size()) - 1;
  const std::vector<int32_t> inputs(ids.begin(), ids.end() - 1);
  const std::vector<float> logits =
      model.logits(Tensor::from_i32(inputs, {1, t}), false).to_f32_vector();
  const int64_t v = model.spec().vocab_size;
  std::vector<double> out;
  for (size_t pos = prompt_len - 1; pos + 1 < ids.size(); ++pos) {
    const float* z = logits.data() + pos * v;
    double mx = z[0], sum = 0;
    for (int64_t j = 0; j < v; ++j) mx = std::max<double>(mx, z[j]);
    for (int64_t j = 0; j < v; ++j) sum += std::exp((z[j] - mx) / temperature);
    out.push_back((z[ids[pos + 1]] - mx) / temperature - std::log(sum));
  }
  return out;
}

TEST_F(GenerateCommand, JsonlKeepsTheFieldsAndAddsCompletionsWithTheirLogprobs) {
  // 12 bytes fill the context (seq_len 12): the model reads them and samples one token.
  const std::vector<std::string> texts = {"1+2=", "7-3=", "9+9=", "123456+6789="};
  std::string lines;
  for (size_t i = 0; i < texts.size(); ++i) {
    lines += absl::StrCat(R"({"id": )", i, R"(, "prompt": ")", texts[i], R"(", "tag": "x"})", "\n");
    if (i == 1) lines += "\n";  // blank lines are skipped
  }
  const std::string in = write_file("prompts.jsonl", lines);
  const std::string out = in + ".out", out1 = in + ".out1";
  const std::vector<std::string> sampling = {"--temperature",    "0.7", "--seed", "5",
                                             "--max_new_tokens", "6"};
  std::vector<std::string> args = {"--prompts", in, "--output", out, "--batch_size", "3"};
  args.insert(args.end(), sampling.begin(), sampling.end());
  ASSERT_TRUE(generate(args).ok());
  // One prompt at a time: the same samples (row ids are the prompts' indices).
  args = {"--prompts", in, "--output", out1, "--batch_size", "1"};
  args.insert(args.end(), sampling.begin(), sampling.end());
  ASSERT_TRUE(generate(args).ok());
  const std::vector<Json> rows = read_jsonl(out), alone = read_jsonl(out1);
  ASSERT_EQ(rows.size(), texts.size());
  ASSERT_EQ(alone.size(), texts.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].find("token_ids")->as_array(), alone[i].find("token_ids")->as_array()) << i;
    EXPECT_EQ(rows[i].find("completion")->as_string(), alone[i].find("completion")->as_string());
    // Padded to another length, the forward sums in another order.
    const Json::Array& a = rows[i].find("logprobs")->as_array();
    const Json::Array& b = alone[i].find("logprobs")->as_array();
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) EXPECT_NEAR(a[k].as_double(), b[k].as_double(), 1e-5);
  }

  switchyard::Experiment config;
  {
    auto loaded = load_experiment((fs::path(*run_dir_) / "config.textproto").string(), {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    config = *loaded;
  }
  ParamStore store;
  Transformer model(model_spec_from_config(config), store);
  auto latest = latest_checkpoint(*run_dir_);
  ASSERT_TRUE(latest.ok());
  ASSERT_TRUE(load_checkpoint(*latest, store, nullptr, {.expert_parallel = 1}).ok());

  int stopped = 0;  // completions that ended at the stop id
  for (size_t i = 0; i < rows.size(); ++i) {
    const Json& r = rows[i];
    ASSERT_TRUE(r.is_object());
    EXPECT_EQ(r.find("id")->as_int(), static_cast<int64_t>(i));
    EXPECT_EQ(r.find("prompt")->as_string(), texts[i]);
    EXPECT_EQ(r.find("tag")->as_string(), "x");
    std::vector<int32_t> ids(texts[i].begin(), texts[i].end());
    std::string completion;
    for (const Json& t : r.find("token_ids")->as_array()) {
      ids.push_back(static_cast<int32_t>(t.as_int()));
      completion.push_back(static_cast<char>(t.as_int()));
    }
    const size_t n = ids.size() - texts[i].size();
    EXPECT_EQ(r.find("completion")->as_string(), completion);
    ASSERT_GE(n, 1u);
    // The model reads at most 12 positions; the token sampled from the last is never read.
    const size_t room = 13 - texts[i].size();
    EXPECT_LE(n, std::min<size_t>(6, room)) << "the context caps the completion";
    const std::string reason = r.find("finish_reason")->as_string();
    const bool stop = ids.back() == '\n';
    EXPECT_EQ(reason, stop ? "stop_token" : room < 6 ? "context" : "max_new_tokens") << i;
    stopped += stop;
    if (!stop) EXPECT_EQ(n, std::min<size_t>(6, room)) << i;
    const Json::Array& lp = r.find("logprobs")->as_array();
    ASSERT_EQ(lp.size(), n);
    const std::vector<double> want = reference_logprobs(model, ids, texts[i].size(), 0.7);
    for (size_t k = 0; k < n; ++k) {
      EXPECT_NEAR(lp[k].as_double(), want[k], 1e-4 * (1 + std::abs(want[k]))) << i << " " << k;
      EXPECT_LE(lp[k].as_double(), 0.0);
    }
  }
  EXPECT_EQ(rows.back().find("token_ids")->as_array().size(), 1u);  // "123456+6789=": one slot
  EXPECT_GE(stopped, 1) << "the trained run ends some answers with its newline";
}

// Off a terminal (stderr is a string here), --prompts says on stderr what the load read and
// then one summary with the prompts and the new tokens the output holds; no redrawn lines.
TEST_F(GenerateCommand, PromptsFileEndsWithOneSummaryOfPromptsAndNewTokens) {
  const std::string in = write_file("summary_prompts.jsonl",
                                    "{\"prompt\": \"1+2=\"}\n{\"prompt\": \"4+4=\"}\n"
                                    "{\"prompt\": \"9-3=\"}\n");
  const std::string out = in + ".out";
  std::ostringstream err;
  std::streambuf* saved = std::cerr.rdbuf(err.rdbuf());
  const absl::Status s = generate({"--prompts", in, "--output", out, "--temperature", "1",
                                   "--max_new_tokens", "5", "--batch_size", "2"});
  std::cerr.rdbuf(saved);
  ASSERT_TRUE(s.ok()) << s;
  int64_t tokens = 0;
  for (const Json& row : read_jsonl(out))
    tokens += static_cast<int64_t>(row.find("token_ids")->as_array().size());
  ASSERT_GT(tokens, 0);
  const std::regex want(absl::StrCat(
      R"(load .*/checkpoints/step_00000300: [0-9.]+ MiB in [0-9.]+s( \([0-9.]+ MiB/s\))?\n)",
      R"(generate: 3 prompts in [0-9.]+s( \([0-9.]+k? prompts/s\))? \| )", tokens,
      R"( new tokens \([0-9.]+[kM]? tok/s\) -> )", out, "\n"));
  EXPECT_TRUE(std::regex_match(err.str(), want)) << err.str();
}

TEST_F(GenerateCommand, GreedyJsonlMatchesTheSinglePrompt) {
  const std::string in = write_file("greedy.jsonl", R"({"prompt": "3+4="})"
                                                    "\n");
  ASSERT_TRUE(generate({"--prompts", in, "--output", in + ".out", "--max_new_tokens", "4"}).ok());
  std::string printed;
  ASSERT_TRUE(generate({"--prompt", "3+4=", "--max_new_tokens", "4"}, &printed).ok());
  const std::vector<Json> rows = read_jsonl(in + ".out");
  ASSERT_EQ(rows.size(), 1u);
  std::string want = "3+4=" + rows[0].find("completion")->as_string();
  if (want.back() != '\n') want += "\n";
  EXPECT_EQ(printed, want);
}

// An RL run's prompts are shown to the model through rl.prompt_template: generate does the
// same unless --prompt_template says otherwise.
TEST_F(GenerateCommand, TheRunsPromptTemplateIsTheDefault) {
  const std::string in = write_file("templated.jsonl", R"({"prompt": "4="})"
                                                       "\n");
  const std::string plain = write_file("untemplated.jsonl", R"({"prompt": "3+4="})"
                                                           "\n");
  const std::vector<std::string> greedy = {"--max_new_tokens", "3", "--temperature", "0"};
  auto run = [&](const std::string& input, std::vector<std::string> extra) {
    extra.insert(extra.end(), {"--prompts", input, "--output", input + ".out"});
    extra.insert(extra.end(), greedy.begin(), greedy.end());
    EXPECT_TRUE(generate(extra).ok());
    const std::vector<Json> rows = read_jsonl(input + ".out");
    EXPECT_EQ(rows.size(), 1u);
    // The log-probs tell prompts apart even where a barely trained model's tokens do not.
    return rows.empty() ? Json() : *rows[0].find("logprobs");
  };
  const Json want = run(plain, {});
  const std::string set_template = R"(rl { prompt_template: "3+{prompt}" })";
  EXPECT_EQ(run(in, {"--set", set_template}), want);
  // The flag wins over the run's template: "4=" alone is another prompt.
  EXPECT_EQ(run(in, {"--set", set_template, "--prompt_template", "3+{prompt}"}), want);
  EXPECT_EQ(run(in, {"--set", set_template, "--prompt_template", "{prompt}"}), run(in, {}));
  EXPECT_NE(run(in, {}), want);
}

void expect_error(const absl::Status& s, const std::string& part) {
  EXPECT_FALSE(s.ok()) << "expected an error containing: " << part;
  EXPECT_TRUE(absl::StrContains(s.message(), part)) << s.message() << "\n  wanted: " << part;
}

TEST_F(GenerateCommand, BadPromptFilesNameTheFileAndLine) {
  expect_error(generate_from(""), "bad_prompts.jsonl: no prompts");
  expect_error(generate_from("\n  \n"), "bad_prompts.jsonl: no prompts");
  expect_error(generate_from(R"({"prompt": "1+1="})"
                             "\n"
                             R"({"prompt": "1+)"
                             "\n"),
               "bad_prompts.jsonl:2: not a JSON object");
  expect_error(generate_from(R"({"text": "1+1="})"
                             "\n"),
               R"(bad_prompts.jsonl:1: needs a "prompt" string)");
  expect_error(generate_from(R"({"prompt": 7})"
                             "\n"),
               R"(bad_prompts.jsonl:1: needs a "prompt" string)");
  expect_error(generate_from(R"(["1+1="])"
                             "\n"),
               R"(bad_prompts.jsonl:1: needs a "prompt")");
  expect_error(generate_from(R"({"prompt": ""})"
                             "\n"),
               "bad_prompts.jsonl:1: the prompt is empty");
  expect_error(generate_from(R"({"prompt": "1+1="})"
                             "\n\n"
                             R"({"prompt": "1234567890123"})"
                             "\n"),
               "bad_prompts.jsonl:3: the prompt is 13 tokens, longer than the model's context "
               "(model.seq_len) of 12; shorten it");
  expect_error(generate_from(R"({"prompt": "\u00ff"})"
                             "\n"),
               "bad_prompts.jsonl:1: byte 195 is outside the model's vocabulary of 64");
  expect_error(generate({"--prompts", "/nonexistent/p.jsonl", "--output", "/tmp/x.jsonl"}),
               "--prompts /nonexistent/p.jsonl: cannot open it");
  const std::string good = write_file("good.jsonl", R"({"prompt": "1+1="})"
                                                    "\n");
  expect_error(generate({"--prompts", good, "--output", "/nonexistent/dir/out.jsonl"}),
               "--output /nonexistent/dir/out.jsonl: cannot write it");
}

TEST_F(GenerateCommand, BadFlagsSayWhatToGive) {
  const std::string in = write_file("flags.jsonl", R"({"prompt": "1+1="})"
                                                   "\n");
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--prompts", in, "--output", in + ".out"};
    args.insert(args.end(), extra.begin(), extra.end());
    return generate(args);
  };
  expect_error(with({"--temperature", "nan"}), "--temperature nan: give a number >= 0");
  expect_error(with({"--temperature", "-1"}), "--temperature -1: give a number >= 0");
  expect_error(with({"--top_p", "0"}), "--top_p 0: give a number in (0, 1]");
  expect_error(with({"--top_p", "1.5"}), "--top_p 1.5: give a number in (0, 1]");
  expect_error(with({"--top_p", "inf"}), "--top_p inf: give a number in (0, 1]");
  expect_error(with({"--min_p", "1"}), "--min_p 1: give a number in [0, 1)");
  expect_error(with({"--max_new_tokens", "-3"}), "--max_new_tokens -3: give a number >= 1");
  expect_error(with({"--max_new_tokens", "0"}), "--max_new_tokens 0: give a number >= 1");
  expect_error(with({"--top_k", "-1"}), "--top_k -1: give 0 (all) or more");
  expect_error(with({"--batch_size", "0"}), "--batch_size 0: give a number >= 1");
  expect_error(generate({"--prompts", in}), "--output");
  expect_error(generate({"--prompts", in, "--output", in + ".out", "--prompt", "1+"}),
               "give either --prompt TEXT or --prompts IN.jsonl");
  expect_error(generate({}), "give either --prompt TEXT or --prompts IN.jsonl");
  expect_error(generate({"--prompt", "1+", "--output", in + ".out"}),
               "--output goes with --prompts");
  expect_error(generate({"--prompt", ""}), "--prompt: the prompt is empty");
}

}  // namespace
}  // namespace sy
