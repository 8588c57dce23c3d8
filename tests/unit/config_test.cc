// The experiment config: loading, merging --set overrides, validation, and the `switchyard
// config` command line. Every broken input must give a message that names where (file or
// fragment, line:col) and which field, and the binary must exit 1 without crashing.
#include "trainer/config.h"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace sy {
namespace {

using google::protobuf::TextFormat;
using google::protobuf::util::MessageDifferencer;
using switchyard::Experiment;

const std::string kSourceDir = SWITCHYARD_SOURCE_DIR;
const std::string kTiny = kSourceDir + "/configs/tiny.textproto";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A file in a directory of its own per test, so tests never see each other's files.
std::string write_temp(const std::string& name, const std::string& contents) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                              absl::StrCat("switchyard_config_test_", info->test_suite_name(), "_",
                                           absl::StrReplaceAll(info->name(), {{"/", "_"}}));
  std::filesystem::create_directories(dir);
  std::string path = (dir / name).string();
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

// Succeeds when some line of the status message starts with `prefix` and contains every one of
// `parts`: validation reports one problem per line, so each must carry its own location.
::testing::AssertionResult has_line(const absl::Status& status, const std::string& prefix,
                                    const std::vector<std::string>& parts) {
  if (status.ok()) return ::testing::AssertionFailure() << "status is OK";
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    bool all = true;
    for (const std::string& part : parts) all = all && absl::StrContains(line, part);
    if (all) return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult failure = ::testing::AssertionFailure();
  failure << "no line starts with \"" << prefix << "\" and contains";
  for (const std::string& part : parts) failure << " \"" << part << "\"";
  return failure << "; message:\n" << status.message();
}

// ---- good configs -------------------------------------------------------------------------

TEST(ConfigTest, ExampleConfigsAreValid) {
  absl::StatusOr<Experiment> tiny = load_experiment(kTiny, {});
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->model().d_model(), 96);
  EXPECT_EQ(tiny->moe().num_experts(), 4);
  EXPECT_EQ(tiny->mtp().num_modules(), 1);

  absl::StatusOr<Experiment> bench =
      load_experiment(kSourceDir + "/configs/bench_moe_1b.textproto", {});
  ASSERT_TRUE(bench.ok()) << bench.status();
  EXPECT_EQ(bench->model().d_model(), 1024);
  EXPECT_EQ(bench->model().n_layers(), 8);
  EXPECT_EQ(bench->model().n_heads(), 16);
  EXPECT_EQ(bench->model().n_kv_heads(), 16);
  EXPECT_EQ(bench->model().vocab_size(), 32768);
  EXPECT_EQ(bench->model().seq_len(), 2048);
  EXPECT_EQ(bench->model().first_k_dense(), 0);
  EXPECT_EQ(bench->moe().num_experts(), 16);
  EXPECT_EQ(bench->moe().top_k(), 2);
  EXPECT_EQ(bench->moe().expert_hidden(), 2816);
  EXPECT_EQ(bench->moe().num_shared_experts(), 0);
  EXPECT_EQ(bench->mtp().num_modules(), 0);
  EXPECT_EQ(bench->train().micro_batch(), 8);
  EXPECT_EQ(bench->device(), Experiment::DEVICE_CUDA);
}

TEST(ConfigTest, TextRoundTripsToAnEqualMessage) {
  absl::StatusOr<Experiment> loaded = load_experiment(kTiny, {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();

  Experiment reparsed;
  ASSERT_TRUE(TextFormat::ParseFromString(experiment_to_text(*loaded), &reparsed));
  EXPECT_TRUE(MessageDifferencer::Equals(*loaded, reparsed));

  // The resolved text spells out every default and loads back to the same message.
  std::string resolved = resolved_experiment_text(*loaded);
  EXPECT_TRUE(absl::StrContains(resolved, "rope_theta: 10000"));
  EXPECT_TRUE(absl::StrContains(resolved, "beta2: 0.95"));
  EXPECT_TRUE(absl::StrContains(resolved, "keep_last: 2"));
  absl::StatusOr<Experiment> reloaded =
      load_experiment(write_temp("resolved.textproto", resolved), {});
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*reloaded, with_defaults_set(*loaded)));
  EXPECT_TRUE(reloaded->model().has_rope_theta());
  EXPECT_FALSE(loaded->model().has_rope_theta());
}

TEST(ConfigTest, OverridesMergeInOrderAndLaterWins) {
  std::string path =
      write_temp("tagged.textproto", read_file(kTiny) + "\ntags: \"a\"\ntags: \"b\"\n");
  absl::StatusOr<Experiment> experiment = load_experiment(
      path,
      {"optimizer { lr: 1e-3 }", "optimizer { lr: 2e-3 } tags: \"c\"", "model { n_layers: 4 }"});
  ASSERT_TRUE(experiment.ok()) << experiment.status();
  EXPECT_DOUBLE_EQ(experiment->optimizer().lr(), 2e-3);
  // A repeated field is replaced, not appended to.
  ASSERT_EQ(experiment->tags_size(), 1);
  EXPECT_EQ(experiment->tags(0), "c");
  // A message is merged field by field: what the override does not name stays.
  EXPECT_EQ(experiment->model().n_layers(), 4);
  EXPECT_EQ(experiment->model().d_model(), 96);
  EXPECT_DOUBLE_EQ(experiment->optimizer().weight_decay(), 0.0);
}

TEST(ConfigTest, LaterOverrideCanRepairAnEarlierOne) {
  EXPECT_TRUE(load_experiment(kTiny, {"train { steps: 0 }", "train { steps: 50 }"}).ok());
  absl::Status status =
      load_experiment(kTiny, {"train { steps: 50 }", "train { steps: 0 }"}).status();
  EXPECT_TRUE(has_line(status, "--set #2 'train { steps: 0 }':1:9: train.steps:", {"must be > 0"}));
}

// ---- parse errors -----------------------------------------------------------------------------

struct ParseCase {
  std::string name;
  std::string text;
  std::string location;  // "line:col:" after the file name
  std::vector<std::string> parts;
};
void PrintTo(const ParseCase& c, std::ostream* os) { *os << c.name; }

class ParseErrorTest : public ::testing::TestWithParam<ParseCase> {};

TEST_P(ParseErrorTest, NamesFileLineColumnAndField) {
  const ParseCase& c = GetParam();
  std::string path = write_temp("broken.textproto", c.text);
  absl::Status status = load_experiment(path, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(has_line(status, absl::StrCat(path, ":", c.location), c.parts));
}

INSTANTIATE_TEST_SUITE_P(
    Inputs, ParseErrorTest,
    ::testing::Values(
        ParseCase{"UnknownField",
                  "model {\n  d_modle: 64\n}\n",
                  "2:3: ",
                  {"has no field named \"d_modle\"", "did you mean \"d_model\"?"}},
        ParseCase{"UnknownFieldFarFromAnyName",
                  "train { zzzz: 1 }\n",
                  "1:9: ",
                  {"\"zzzz\"", "the fields of TrainConfig are: steps, micro_batch"}},
        // The parser's own message has no field name; the quoted source line supplies it.
        ParseCase{"WrongValueType",
                  "model { d_model: \"abc\" }\n",
                  "1:18: ",
                  {"Expected integer, got: \"abc\""}},
        ParseCase{"BadEnumValue",
                  "name: \"x\"\ndevice: DEVICE_GPU\n",
                  "2:9: ",
                  {"Unknown enumeration value of \"DEVICE_GPU\" for field \"device\""}},
        ParseCase{"DuplicateSingularField",
                  "model {\n  d_model: 64\n  d_model: 128\n}\n",
                  "3:3: ",
                  {"Non-repeated field \"d_model\" is specified multiple times"}},
        ParseCase{"DuplicateMessageField",
                  "model { d_model: 64 }\nmodel { n_layers: 2 }\n",
                  "2:1: ",
                  {"Non-repeated field \"model\" is specified multiple times"}},
        ParseCase{"UnterminatedMessage",
                  "model {\n  d_model: 64\n",
                  "3:1: ",
                  {"end of input", "'}' missing"}},
        ParseCase{"UnterminatedString",
                  "name: \"tiny\n",
                  "1:12: ",
                  {"String literals cannot cross line boundaries"}}),
    [](const ::testing::TestParamInfo<ParseCase>& info) { return info.param.name; });

TEST(ConfigTest, WrongValueTypeQuotesTheLineWithTheField) {
  std::string path = write_temp("wrong_type.textproto", "model { d_model: \"abc\" }\n");
  absl::Status status = load_experiment(path, {}).status();
  EXPECT_TRUE(absl::StrContains(status.message(),
                                "\n  model { d_model: \"abc\" }\n"
                                "                   ^"))
      << status;
}

TEST(ConfigTest, MissingFileSaysNotFound) {
  absl::Status status = load_experiment("/nonexistent/dir/x.textproto", {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(has_line(status, "/nonexistent/dir/x.textproto: ", {"not found"}));
}

TEST(ConfigTest, DirectoryIsNotAConfig) {
  std::string dir = std::filesystem::path(write_temp("placeholder", "")).parent_path().string();
  absl::Status status = load_experiment(dir, {}).status();
  EXPECT_TRUE(has_line(status, dir + ": ", {"is a directory"}));
}

TEST(ConfigTest, UnreadableFileSaysSo) {
  std::string path = write_temp("unreadable.textproto", read_file(kTiny));
  std::filesystem::permissions(path, std::filesystem::perms::none);
  if (std::ifstream(path).good()) GTEST_SKIP() << "running as root: permissions do not apply";
  absl::Status status = load_experiment(path, {}).status();
  EXPECT_TRUE(has_line(status, path + ": ", {"cannot open"}));
}

TEST(ConfigTest, EmptyFileIsAnError) {
  for (const std::string& text : {std::string(""), std::string("  \n\n"),
                                  std::string("# only a comment\n\n# and another\n")}) {
    std::string path = write_temp("empty.textproto", text);
    absl::Status status = load_experiment(path, {}).status();
    EXPECT_TRUE(has_line(status, path + ": ", {"empty"})) << "for text '" << text << "'";
  }
}

// ---- --set fragments --------------------------------------------------------------------------

TEST(ConfigTest, OverrideThatFailsToParseIsNamedByItsPosition) {
  absl::Status status =
      load_experiment(kTiny, {"optimizer { lr: 1e-3 }", "optimizer { lr: x }"}).status();
  EXPECT_TRUE(has_line(status, "--set #2 'optimizer { lr: x }':1:17: ", {"Expected double"}));

  status = load_experiment(kTiny, {"optimizer { lrr: 1 }"}).status();
  EXPECT_TRUE(has_line(
      status, "--set #1 'optimizer { lrr: 1 }':1:13: ", {"\"lrr\"", "did you mean \"lr\"?"}));

  status = load_experiment(kTiny, {"train { steps: 1 steps: 2 }"}).status();
  EXPECT_TRUE(has_line(status, "--set #1 'train { steps: 1 steps: 2 }':1:18: ",
                       {"\"steps\" is specified multiple times"}));
}

TEST(ConfigTest, EmptyOverrideIsAnError) {
  absl::Status status = load_experiment(kTiny, {"  "}).status();
  EXPECT_TRUE(has_line(status, "--set #1 '  ': ", {"sets no field"}));
}

TEST(ConfigTest, OverrideThatFailsValidationIsPointedTo) {
  absl::Status status = load_experiment(kTiny, {"model { n_heads: 8 }"}).status();
  EXPECT_TRUE(status.ok()) << status;  // 96 / 8 = 12: fine
  status = load_experiment(kTiny, {"optimizer { lr: 1e-3 }", "model { n_heads: 5 }"}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  // The rule is d_model % n_heads; the --set changed n_heads, so that is what is named.
  EXPECT_TRUE(has_line(status, "--set #2 'model { n_heads: 5 }':1:9: model.n_heads: ",
                       {"model.d_model = 96 is not divisible by model.n_heads = 5"}));
}

TEST(ConfigTest, InvalidValueInTheFileIsPointedTo) {
  std::string text = read_file(kTiny);
  absl::StrReplaceAll({{"d_model: 96", "d_model: 66"}}, &text);
  std::string path = write_temp("bad.textproto", text);
  absl::Status status = load_experiment(path, {}).status();
  int line = 1;
  for (absl::string_view row : absl::StrSplit(text, '\n')) {
    if (absl::StrContains(row, "d_model: 66")) break;
    ++line;
  }
  EXPECT_TRUE(has_line(status, absl::StrCat(path, ":", line, ":3: model.d_model: "),
                       {"not divisible by model.n_heads = 4"}));
}

TEST(ConfigTest, DefaultValueIsNamedByFieldPathOnly) {
  Experiment experiment;
  ASSERT_TRUE(TextFormat::ParseFromString(R"pb(model { d_model: 64 })pb", &experiment));
  absl::Status status = validate_experiment(experiment);
  EXPECT_TRUE(has_line(status, "model.vocab_size: ",
                       {"must be > 0, got 0 (not set)", "set model { vocab_size: N } with N > 0"}));
  EXPECT_TRUE(has_line(status, "train.steps: ", {"(not set)"}));
}

TEST(ConfigTest, ReportsEveryProblemOnItsOwnLine) {
  absl::Status status =
      load_experiment(kTiny, {"optimizer { lr: 0 beta1: 1 }", "train { micro_batch: 0 }"}).status();
  EXPECT_TRUE(has_line(status, "--set #1", {"optimizer.lr: "}));
  EXPECT_TRUE(has_line(status, "--set #1", {"optimizer.beta1: "}));
  EXPECT_TRUE(has_line(status, "--set #2", {"train.micro_batch: "}));
}

// bf16 moments stall when 1 - beta is below ~1/100: betas up to 0.99 pass, above it the message
// names the edit that broke the rule and says both ways out.
TEST(ConfigTest, Bf16MomentsNeedBetasAtMost099) {
  for (const char* fragment : {"optimizer { moment_dtype: MOMENT_BF16 }",
                               "optimizer { moment_dtype: MOMENT_BF16 beta1: 0.99 beta2: 0.99 }",
                               "optimizer { moment_dtype: MOMENT_F32 beta2: 0.999 }"}) {
    absl::Status status = load_experiment(kTiny, {fragment}).status();
    EXPECT_TRUE(status.ok()) << fragment << ": " << status;
  }
  absl::Status status = load_experiment(kTiny, {"optimizer { moment_dtype: MOMENT_BF16 }",
                                                "optimizer { beta2: 0.999 }"})
                            .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(has_line(status, "--set #2 'optimizer { beta2: 0.999 }':1:13: optimizer.beta2: ",
                       {"optimizer.moment_dtype = MOMENT_BF16 with optimizer.beta2 = 0.999",
                        "stalls; set optimizer { beta2: x } with x <= 0.99",
                        "or optimizer { moment_dtype: MOMENT_F32 }"}));
  // beta 1 is already out of [0, 1): one line for it, not two.
  status = load_experiment(kTiny, {"optimizer { moment_dtype: MOMENT_BF16 beta2: 1 }"}).status();
  EXPECT_TRUE(has_line(status, "--set #1", {"optimizer.beta2: must be in [0, 1)"}));
  EXPECT_FALSE(absl::StrContains(status.message(), "stalls")) << status;
}

TEST(ConfigTest, DenseModelNeedsNoExperts) {
  absl::StatusOr<Experiment> experiment =
      load_experiment(kTiny, {"model { first_k_dense: 2 } moe { num_experts: 0 top_k: 0 }"});
  EXPECT_TRUE(experiment.ok()) << experiment.status();
}

// ---- cross-field rules: one row per rule, each a --set over the valid tiny config ----------

struct RuleCase {
  std::string name;
  std::string fragment;
  std::string field;  // the field the message names (the one the fragment sets)
  std::string wrong;  // words from the "what is wrong" part
};
void PrintTo(const RuleCase& c, std::ostream* os) { *os << c.fragment; }

class RuleTest : public ::testing::TestWithParam<RuleCase> {};

TEST_P(RuleTest, BrokenRuleNamesTheFragmentAndTheField) {
  const RuleCase& c = GetParam();
  absl::Status status = load_experiment(kTiny, {c.fragment}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(has_line(status, absl::StrCat("--set #1 '", c.fragment, "':1:"),
                       {absl::StrCat(": ", c.field, ": "), c.wrong, "; "}));
}

INSTANTIATE_TEST_SUITE_P(
    Rules, RuleTest,
    ::testing::Values(
        RuleCase{"VocabSize", "model { vocab_size: 0 }", "model.vocab_size", "must be > 0"},
        RuleCase{"DModel", "model { d_model: -64 }", "model.d_model", "must be > 0"},
        RuleCase{"Layers", "model { n_layers: 0 }", "model.n_layers", "must be > 0"},
        RuleCase{"Heads", "model { n_heads: 0 }", "model.n_heads", "must be > 0"},
        RuleCase{"KvHeads", "model { n_kv_heads: 0 }", "model.n_kv_heads", "must be > 0"},
        RuleCase{"SeqLen", "model { seq_len: 0 }", "model.seq_len", "must be > 0"},
        RuleCase{"Steps", "train { steps: 0 }", "train.steps", "must be > 0"},
        RuleCase{"MicroBatch", "train { micro_batch: 0 }", "train.micro_batch", "must be > 0"},
        RuleCase{"GradAccum", "train { grad_accum: 0 }", "train.grad_accum", "must be > 0"},
        RuleCase{"LogInterval", "train { log_interval: 0 }", "train.log_interval", "must be > 0"},
        RuleCase{"EvalInterval", "train { eval_interval: -1 }", "train.eval_interval",
                 "must be >= 0"},
        RuleCase{"RopeTheta", "model { rope_theta: 0 }", "model.rope_theta", "must be > 0"},
        RuleCase{"DModelDivisibleByHeads", "model { d_model: 66 }", "model.d_model",
                 "model.d_model = 66 is not divisible by model.n_heads = 4"},
        RuleCase{"HeadDimEven", "model { d_model: 12 }", "model.d_model", "is odd"},
        RuleCase{"HeadsDivisibleByKvHeads", "model { n_kv_heads: 3 }", "model.n_kv_heads",
                 "model.n_kv_heads = 3 does not divide model.n_heads = 4"},
        RuleCase{"FirstKDenseAtMostLayers", "model { first_k_dense: 3 }", "model.first_k_dense",
                 "exceeds model.n_layers = 2"},
        RuleCase{"FirstKDenseNonNegative", "model { first_k_dense: -1 }", "model.first_k_dense",
                 "must be >= 0"},
        RuleCase{"DenseFfnHidden", "model { dense_ffn_hidden: 0 }", "model.dense_ffn_hidden",
                 "have a dense FFN"},
        RuleCase{"NumExperts", "moe { num_experts: 0 }", "moe.num_experts", "are MoE blocks"},
        RuleCase{"TopKPositive", "moe { top_k: 0 }", "moe.top_k",
                 "is outside [1, moe.num_experts = 4]"},
        RuleCase{"TopKAtMostExperts", "moe { top_k: 5 }", "moe.top_k",
                 "is outside [1, moe.num_experts = 4]"},
        RuleCase{"ExpertHidden", "moe { expert_hidden: 0 }", "moe.expert_hidden", "are MoE blocks"},
        RuleCase{"SharedExperts", "moe { num_shared_experts: -1 }", "moe.num_shared_experts",
                 "must be >= 0"},
        RuleCase{"GroupsDivideExperts", "moe { n_groups: 3 }", "moe.n_groups",
                 "does not divide moe.num_experts = 4"},
        RuleCase{"TopKGroupsAtMostGroups", "moe { n_groups: 2 topk_groups: 3 }", "moe.topk_groups",
                 "is outside [1, moe.n_groups = 2]"},
        RuleCase{"TopKGroupsPositive", "moe { n_groups: 2 topk_groups: 0 }", "moe.topk_groups",
                 "is outside [1, moe.n_groups = 2]"},
        RuleCase{"TopKReachableInGroups", "moe { n_groups: 4 topk_groups: 1 }", "moe.topk_groups",
                 "exceeds the 1 experts reachable"},
        RuleCase{"CapacityFactor", "moe { capacity_factor: -0.5 }", "moe.capacity_factor",
                 "must be >= 0"},
        RuleCase{"AuxLossCoef", "moe { aux_loss_coef: -1 }", "moe.aux_loss_coef", "must be >= 0"},
        RuleCase{"ZLossCoef", "moe { z_loss_coef: -1 }", "moe.z_loss_coef", "must be >= 0"},
        RuleCase{"SeqAuxLossCoef", "moe { seq_aux_loss_coef: -1 }", "moe.seq_aux_loss_coef",
                 "must be >= 0"},
        RuleCase{"BiasUpdateRate", "moe { bias_update_rate: -1 }", "moe.bias_update_rate",
                 "must be >= 0"},
        RuleCase{"RouteScale", "moe { route_scale: 0 }", "moe.route_scale", "must be > 0"},
        RuleCase{"MtpModules", "mtp { num_modules: -1 }", "mtp.num_modules", "must be >= 0"},
        RuleCase{"MtpLossWeight", "mtp { loss_weight: -0.3 }", "mtp.loss_weight", "must be >= 0"},
        RuleCase{"LearningRate", "optimizer { lr: 0 }", "optimizer.lr", "must be > 0"},
        RuleCase{"LearningRateNaN", "optimizer { lr: nan }", "optimizer.lr", "must be > 0"},
        RuleCase{"Beta1", "optimizer { beta1: 1 }", "optimizer.beta1", "must be in [0, 1)"},
        RuleCase{"Beta2", "optimizer { beta2: -0.1 }", "optimizer.beta2", "must be in [0, 1)"},
        RuleCase{"Eps", "optimizer { eps: 0 }", "optimizer.eps", "must be > 0"},
        RuleCase{"WeightDecay", "optimizer { weight_decay: -1 }", "optimizer.weight_decay",
                 "must be >= 0"},
        RuleCase{"GradClip", "optimizer { grad_clip: -1 }", "optimizer.grad_clip", "must be >= 0"},
        RuleCase{"Bf16MomentsBeta2", "optimizer { moment_dtype: MOMENT_BF16 beta2: 0.999 }",
                 "optimizer.moment_dtype",
                 "MOMENT_BF16 with optimizer.beta2 = 0.999 > 0.99: with 1 - beta below ~1/100, a "
                 "bf16 moment (8 significant bits) can no longer absorb the per-step change"},
        RuleCase{"Bf16MomentsBeta1", "optimizer { moment_dtype: MOMENT_BF16 beta1: 0.995 }",
                 "optimizer.moment_dtype", "MOMENT_BF16 with optimizer.beta1 = 0.995 > 0.99"},
        RuleCase{"WarmupAtMostSteps", "schedule { warmup_steps: 4001 }", "schedule.warmup_steps",
                 "exceeds train.steps = 4000"},
        RuleCase{"WarmupNonNegative", "schedule { warmup_steps: -1 }", "schedule.warmup_steps",
                 "must be >= 0"},
        RuleCase{"MinLrRatio", "schedule { min_lr_ratio: 2 }", "schedule.min_lr_ratio",
                 "must be in [0, 1]"},
        RuleCase{"ExpertParallelPositive", "parallel { expert_parallel_size: 0 }",
                 "parallel.expert_parallel_size", "must be > 0"},
        RuleCase{"ExpertParallelDividesExperts", "parallel { expert_parallel_size: 3 }",
                 "parallel.expert_parallel_size", "does not divide moe.num_experts = 4"},
        RuleCase{"ZeroStage", "parallel { zero_stage: 2 }", "parallel.zero_stage",
                 "must be 0 or 1"},
        RuleCase{"MinDigits", "data { arithmetic { min_digits: 0 } }", "data.arithmetic.min_digits",
                 "must be >= 1"},
        RuleCase{"MinDigitsAtMostMaxDigits", "data { arithmetic { min_digits: 3 } }",
                 "data.arithmetic.min_digits", "is less than data.arithmetic.min_digits = 3"},
        RuleCase{"MaxDigitsFitInt64", "data { arithmetic { max_digits: 10 } }",
                 "data.arithmetic.max_digits", "must be <= 9"},
        RuleCase{"OperatorsSubset", "data { arithmetic { operators: \"+/\" } }",
                 "data.arithmetic.operators", "non-empty subset of \"+-*\""},
        RuleCase{"OperatorsNonEmpty", "data { arithmetic { operators: \"\" } }",
                 "data.arithmetic.operators", "non-empty subset"},
        RuleCase{"EvalExamples", "data { arithmetic { eval_examples: -1 } }",
                 "data.arithmetic.eval_examples", "must be >= 0"},
        RuleCase{"ShardsNeedTrainShards", "data { source: DATA_SHARDS }", "data.source",
                 "data.train_shards is empty"},
        RuleCase{"CheckpointInterval", "checkpoint { interval: -1 }", "checkpoint.interval",
                 "must be >= 0"},
        RuleCase{"KeepLast", "checkpoint { keep_last: 0 }", "checkpoint.keep_last", "must be > 0"},
        RuleCase{"RunDir", "run_dir: \"\"", "run_dir", "is empty"},
        RuleCase{"Bf16OnCpu", "precision: PRECISION_BF16 device: DEVICE_CPU", "precision",
                 "asks for bf16 on the CPU"}),
    [](const ::testing::TestParamInfo<RuleCase>& info) { return info.param.name; });

// ---- the real binary ---------------------------------------------------------------------------

struct RunResult {
  int exit_code = -1;
  int signal = 0;  // nonzero when the process died of a signal: always a bug
  std::string out;
  std::string err;
};

std::string shell_quote(const std::string& arg) {
  return absl::StrCat("'", absl::StrReplaceAll(arg, {{"'", "'\\''"}}), "'");
}

// Runs `switchyard args...` from the source directory (so relative config paths work).
RunResult run_switchyard(const std::vector<std::string>& args) {
  std::string out = write_temp("stdout.txt", ""), err = write_temp("stderr.txt", "");
  std::string command =
      absl::StrCat("cd ", shell_quote(kSourceDir), " && ", shell_quote(SWITCHYARD_BINARY));
  for (const std::string& arg : args) absl::StrAppend(&command, " ", shell_quote(arg));
  absl::StrAppend(&command, " >", shell_quote(out), " 2>", shell_quote(err));
  int status = std::system(command.c_str());
  RunResult result;
  // The shell reports a child killed by signal N as exit code 128 + N.
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (result.exit_code > 128) result.signal = result.exit_code - 128;
  result.out = read_file(out);
  result.err = read_file(err);
  return result;
}

TEST(CliTest, ConfigPrintsTheResolvedConfig) {
  RunResult run = run_switchyard({"config", "--config", "configs/tiny.textproto"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(absl::StrContains(run.out, "d_model: 96")) << run.out;
  EXPECT_TRUE(absl::StrContains(run.out, "rope_theta: 10000")) << "defaults are printed";
  EXPECT_EQ(run.err, "");
}

TEST(CliTest, ConfigAppliesOverrides) {
  RunResult run = run_switchyard({"config", "--config", "configs/tiny.textproto", "--set",
                                  "model { d_model: 128 }", "--set=optimizer { lr: 0.001 }"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(absl::StrContains(run.out, "d_model: 128")) << run.out;
  EXPECT_TRUE(absl::StrContains(run.out, "lr: 0.001")) << run.out;
}

struct BadConfigCase {
  std::string file;  // under tests/data/configs
  std::string expected;
};
void PrintTo(const BadConfigCase& c, std::ostream* os) { *os << c.file; }

class BadConfigTest : public ::testing::TestWithParam<BadConfigCase> {};

TEST_P(BadConfigTest, FailsWithAMessageAndNoCrash) {
  const BadConfigCase& c = GetParam();
  std::string path = "tests/data/configs/" + c.file;
  RunResult run = run_switchyard({"config", "--config", path});
  EXPECT_EQ(run.signal, 0) << "crashed: " << run.err;
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(absl::StartsWith(run.err, "switchyard: error: " + path)) << run.err;
  EXPECT_TRUE(absl::StrContains(run.err, c.expected)) << run.err;
  EXPECT_EQ(run.out, "");
}

INSTANTIATE_TEST_SUITE_P(
    Files, BadConfigTest,
    ::testing::Values(BadConfigCase{"unknown_field.textproto", ":3:3: Message type"},
                      BadConfigCase{"wrong_type.textproto", ":2:18: Expected integer"},
                      BadConfigCase{"bad_enum.textproto", ":2:9: Unknown enumeration value"},
                      BadConfigCase{"duplicate_field.textproto", ":4:3: Non-repeated field"},
                      BadConfigCase{"unterminated.textproto", "end of input"},
                      BadConfigCase{"comments_only.textproto", "empty"},
                      BadConfigCase{"binary_garbage.textproto", ":1:"},
                      BadConfigCase{"odd_head_dim.textproto", ": model.d_model: "}),
    [](const ::testing::TestParamInfo<BadConfigCase>& info) {
      return std::string(absl::StripSuffix(info.param.file, ".textproto"));
    });

TEST(CliTest, EveryErrorLineHasThePrefix) {
  RunResult run =
      run_switchyard({"config", "--config", "tests/data/configs/unknown_field.textproto"});
  EXPECT_EQ(run.exit_code, 1);
  for (absl::string_view line : absl::StrSplit(run.err, '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "switchyard: error: ")) << line;
  }
}

TEST(CliTest, UsageErrorsExitOne) {
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {{"config", "--config", "no/such/file.textproto"}, "not found"},
           {{"config"}, "--config FILE is required"},
           {{"config", "--confg", "x"}, "unknown flag --confg; known flags: --config FILE"},
           {{"config", "--config"}, "needs a value"},
           {{"config", "--config", "configs/tiny.textproto", "--set", "model {"},
            "--set #1 'model {':1:8: "},
           {{"trian"}, "unknown subcommand 'trian'; available subcommands: train, generate, data, score, config, dump-step, rl, convert"},
       }) {
    RunResult run = run_switchyard(c.args);
    EXPECT_EQ(run.signal, 0) << "crashed: " << run.err;
    EXPECT_EQ(run.exit_code, 1) << c.expected;
    EXPECT_TRUE(absl::StartsWith(run.err, "switchyard: error: ")) << run.err;
    EXPECT_TRUE(absl::StrContains(run.err, c.expected)) << run.err;
  }
}

TEST(CliTest, NoSubcommandPrintsUsageAndFails) {
  RunResult run = run_switchyard({});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(run.err, "usage: switchyard <subcommand>")) << run.err;
  EXPECT_TRUE(absl::StrContains(run.err, "config")) << run.err;
}

TEST(CliTest, HelpPrintsUsageAndSucceeds) {
  RunResult run = run_switchyard({"--help"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(run.out, "usage: switchyard <subcommand>")) << run.out;

  run = run_switchyard({"config", "--help"});
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(run.out, "usage: switchyard config --config FILE")) << run.out;
  EXPECT_TRUE(absl::StrContains(run.out, "--set TEXT")) << run.out;
}

}  // namespace
}  // namespace sy
