// The training loop end to end on CPU: the loss falls, a resumed run is bit-identical to an
// uninterrupted one, broken checkpoints give clear errors, SIGTERM checkpoints and stops,
// and the schedule / optimizer pieces behave as documented.
#include "trainer/train.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "models/transformer.h"
#include "parallel/local_communicator.h"
#include "tests/testing/testing.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/optimizer.h"
#include "trainer/safetensors.h"
#include "trainer/schedule.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

constexpr char kSmallRun[] = R"pb(
  device: DEVICE_CPU
  model {
    vocab_size: 64
    d_model: 32
    n_layers: 2
    n_heads: 4
    n_kv_heads: 2
    seq_len: 12
    first_k_dense: 1
    dense_ffn_hidden: 64
  }
  moe {
    num_experts: 4
    top_k: 2
    expert_hidden: 32
    normalize_topk: true
    aux_loss_coef: 0.01
    z_loss_coef: 0.001
    seq_aux_loss_coef: 0.001
    bias_update_rate: 0.001
  }
  mtp { num_modules: 1 }
  data { arithmetic { min_digits: 1 max_digits: 1 operators: "+" eval_examples: 32 } }
  optimizer { lr: 3e-3 weight_decay: 0.01 }
  schedule { warmup_steps: 5 }
  train { steps: 20 micro_batch: 8 grad_accum: 2 eval_interval: 10 }
  checkpoint { interval: 10 keep_last: 3 }
)pb";

switchyard::Experiment small_config(const std::string& extra = "") {
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(kSmallRun, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  auto status = validate_experiment(config);
  SY_CHECK(status.ok()) << status;
  return config;
}

std::string fresh_dir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir =
      fs::path(::testing::TempDir()) /
      absl::StrCat("switchyard_train_", info->test_suite_name(), "_", info->name(), "_", name);
  fs::remove_all(dir);
  return dir.string();
}

std::vector<Json> read_metrics(const std::string& run_dir) {
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::vector<Json> out;
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    SY_CHECK(j.ok()) << line;
    out.push_back(*j);
  }
  return out;
}

absl::Status run(const switchyard::Experiment& config, const std::string& dir,
                 bool resume = false) {
  std::ostringstream log;
  return train(config, {.run_dir = dir, .resume = resume}, log);
}

// With f32 moments and with bf16 ones (their checkpoints hold bf16 tensors, read back exactly).
class ResumeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ResumeTest, ResumeIsBitIdenticalToAnUninterruptedRun) {
  const auto config = small_config(GetParam());
  const std::string full = fresh_dir("full"), resumed = fresh_dir("resumed");
  ASSERT_TRUE(run(config, full).ok());

  // The resumed run starts from the uninterrupted run's step-10 checkpoint.
  fs::create_directories(fs::path(resumed) / "checkpoints");
  fs::copy(fs::path(full) / "checkpoints" / "step_00000010",
           fs::path(resumed) / "checkpoints" / "step_00000010");
  std::ofstream(fs::path(resumed) / "checkpoints" / "latest") << "step_00000010\n";
  ASSERT_TRUE(run(config, resumed, /*resume=*/true).ok());

  std::vector<Json> a = read_metrics(full), b = read_metrics(resumed);
  int compared = 0;
  for (const Json& line_b : b) {
    for (const Json& line_a : a) {
      if (line_a.find("step")->as_int() != line_b.find("step")->as_int()) continue;
      if ((line_a.find("loss") != nullptr) != (line_b.find("loss") != nullptr)) continue;
      for (const char* key :
           {"loss", "lm_loss", "mtp_loss", "aux_loss", "grad_norm", "eval_loss", "eval_accuracy"}) {
        if (!line_a.find(key)) continue;
        EXPECT_EQ(line_a.find(key)->as_double(), line_b.find(key)->as_double())
            << key << " at step " << line_a.find("step")->as_int();
        ++compared;
      }
    }
  }
  EXPECT_GE(compared, 10 * 5);  // steps 11..20, five numbers each at least
  auto wa = load_safetensors(full + "/checkpoints/step_00000020/model.safetensors");
  auto wb = load_safetensors(resumed + "/checkpoints/step_00000020/model.safetensors");
  ASSERT_TRUE(wa.ok() && wb.ok());
  ASSERT_EQ(wa->tensors.size(), wb->tensors.size());
  for (const auto& [name, t] : wa->tensors) {
    EXPECT_EQ(t.to_f32_vector(), wb->tensors.at(name).to_f32_vector()) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Moments, ResumeTest,
                         ::testing::Values("", "optimizer { moment_dtype: MOMENT_BF16 }"),
                         [](const auto& info) {
                           return std::string(info.param.empty() ? "F32Moments" : "Bf16Moments");
                         });

TEST(Train, LossFallsAndTheRunDirectoryHoldsConfigMetricsAndCheckpoints) {
  const auto config =
      small_config("train { steps: 150 eval_interval: 150 } checkpoint { interval: 0 }");
  const std::string dir = fresh_dir("run");
  ASSERT_TRUE(run(config, dir).ok());
  std::vector<Json> m = read_metrics(dir);
  ASSERT_FALSE(m.empty());
  const double first = m.front().find("lm_loss")->as_double();
  double last_train = 0, eval_loss = -1;
  for (const Json& j : m) {
    if (j.find("lm_loss")) last_train = j.find("lm_loss")->as_double();
    if (j.find("eval_loss")) eval_loss = j.find("eval_loss")->as_double();
    for (const char* key : {"lr", "grad_norm", "tokens_per_s", "mtp_loss", "aux_loss"})
      if (j.find("lm_loss")) EXPECT_NE(j.find(key), nullptr) << key;
  }
  // Uniform guessing over 64 tokens is ln 64 = 4.16; the answer digits of one-digit sums
  // are learnable far below that within 150 steps.
  EXPECT_GT(first, 3.5);
  EXPECT_LT(last_train, 1.2);
  EXPECT_GT(eval_loss, 0);
  EXPECT_LT(eval_loss, 1.2);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "config.textproto"));
  EXPECT_TRUE(fs::exists(fs::path(dir) / "checkpoints" / "step_00000150" / "model.safetensors"));
  // The saved config reloads to the same experiment.
  auto reloaded = load_experiment((fs::path(dir) / "config.textproto").string(), {});
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(reloaded->model().d_model(), 32);
}

// train.profile_step prints the per-region breakdown of that step, once, with the regions of
// every layer kind, and their times add up to no more than the step. Region rows are
// "name ms share host-ms calls"; on the CPU the host time is the region's time.
TEST(Train, ProfileStepPrintsTheRegionBreakdownOfThatStep) {
  const auto config = small_config(
      "train { steps: 3 profile_step: 2 } schedule { warmup_steps: 1 } checkpoint { interval: 0 }");
  std::ostringstream log;
  ASSERT_TRUE(train(config, {.run_dir = fresh_dir("run")}, log).ok());
  const std::string text = log.str();
  ASSERT_NE(text.find("profile of step 2 (cpu)"), std::string::npos) << text;
  EXPECT_EQ(text.find("profile of step", text.find("profile of step 2") + 1), std::string::npos)
      << "only the asked step is profiled";
  double sum = 0, step = -1;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (words.size() < 2) continue;
    if (words[0] == "step" && words.size() == 2) step = std::stod(words[1]);
    for (const char* region : {"attn.qkv", "attn.core", "attn.core.bwd", "ffn", "moe.route",
                               "moe.experts", "moe.experts.bwd", "head+loss", "optimizer"}) {
      if (words[0] == region && words.size() == 5) {
        sum += std::stod(words[1]);
        EXPECT_EQ(words[1], words[3]) << "host ms on the CPU: " << line;
      }
    }
  }
  for (const char* region : {"attn.core.bwd", "moe.experts.bwd", "head+loss", "optimizer"})
    EXPECT_NE(text.find(absl::StrCat("\n", region, " ")), std::string::npos) << region;
  EXPECT_GT(step, 0) << text;
  EXPECT_GT(sum, 0);
  EXPECT_LE(sum, step * 1.001 + 0.01);
}

TEST(Train, TrainsOnTokenShardsMadeByTheDataCommand) {
  // A repetitive text the byte-level model can learn quickly, tokenized by `switchyard data`.
  const std::string dir = fresh_dir("data");
  fs::create_directories(dir);
  {
    std::ofstream text(dir + "/corpus.txt");
    for (int i = 0; i < 3000; ++i)
      text << "the quick brown fox jumps over the lazy dog " << i % 10 << "\n";
  }
  const std::string cmd = std::string(SWITCHYARD_BINARY) + " data --input " + dir +
                          "/corpus.txt --output " + dir + "/shards > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  ASSERT_TRUE(fs::exists(dir + "/shards/train_000000.bin"));
  ASSERT_TRUE(fs::exists(dir + "/shards/val_000000.bin"));

  auto config = small_config(
      absl::StrCat("model { vocab_size: 128 seq_len: 32 } train { steps: 60 eval_interval: 60 } "
                   "checkpoint { interval: 0 } data { source: DATA_SHARDS train_shards: \"",
                   dir, "/shards/train_*.bin\" val_shards: \"", dir, "/shards/val_*.bin\" }"));
  const std::string run_dir = fresh_dir("run");
  ASSERT_TRUE(run(config, run_dir).ok());
  std::vector<Json> m = read_metrics(run_dir);
  double first = -1, eval_loss = -1;
  for (const Json& j : m) {
    if (j.find("lm_loss") && first < 0) first = j.find("lm_loss")->as_double();
    if (j.find("eval_loss")) eval_loss = j.find("eval_loss")->as_double();
  }
  EXPECT_GT(first, 4.0);      // ~ln 128 at the start
  EXPECT_GT(eval_loss, 0.0);  // held-out windows from the val shard
  EXPECT_LT(eval_loss, 2.5);  // the text is mostly predictable

  // A shard pattern that matches nothing is a clear error.
  config.mutable_data()->set_train_shards(dir + "/nothing_*.bin");
  absl::Status s = run(config, fresh_dir("bad"));
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "nothing_*.bin")) << s;
}

class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_dir("run");
    ASSERT_TRUE(run(small_config("train { steps: 5 } checkpoint { interval: 0 }"), dir_).ok());
    ckpt_ = dir_ + "/checkpoints/step_00000005";
  }
  absl::Status resume(const std::string& extra = "") {
    return run(small_config("train { steps: 7 } " + extra), dir_, true);
  }
  std::string dir_, ckpt_;
};

TEST_F(BrokenCheckpoint, IntactCheckpointResumes) { EXPECT_TRUE(resume().ok()); }

TEST_F(BrokenCheckpoint, TruncatedWeightsFile) {
  const std::string path = ckpt_ + "/model.safetensors";
  fs::resize_file(path, fs::file_size(path) - 100);
  absl::Status s = resume();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "model.safetensors")) << s;
}

TEST_F(BrokenCheckpoint, GarbageHeader) {
  std::ofstream(ckpt_ + "/model.safetensors", std::ios::binary | std::ios::trunc)
      << std::string("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", 24);
  absl::Status s = resume();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "model.safetensors")) << s;
}

TEST_F(BrokenCheckpoint, ShapeThatContradictsTheConfig) {
  absl::Status s = resume("model { d_model: 48 }");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "shape")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "embed.weight")) << s;
}

TEST_F(BrokenCheckpoint, MissingOrCorruptManifest) {
  std::ofstream(ckpt_ + "/manifest.json", std::ios::trunc) << "{\"format\": 3";
  absl::Status s = resume();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "manifest.json")) << s;
  fs::remove(ckpt_ + "/manifest.json");
  s = resume();
  EXPECT_TRUE(absl::StrContains(s.message(), "missing manifest.json")) << s;
}

// The dtype of the moments in a checkpoint's optimizer file ("" when a tensor is missing or the
// file does not load).
std::string moment_dtype_in(const std::string& checkpoint) {
  auto file = load_safetensors(checkpoint + "/optimizer-rank0.safetensors");
  if (!file.ok() || !file->tensors.count("adam_m.embed.weight")) return "";
  return dtype_name(file->tensors.at("adam_m.embed.weight").dtype());
}

// An f32-moment checkpoint resumes with bf16 moments (rounded on loading), and that run's
// checkpoint, which holds bf16 moments, resumes with f32 ones again (widened).
TEST_F(BrokenCheckpoint, ResumesWithTheOtherMomentDtype) {
  EXPECT_EQ(moment_dtype_in(ckpt_), "f32");
  absl::Status s = resume("optimizer { moment_dtype: MOMENT_BF16 }");
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(moment_dtype_in(dir_ + "/checkpoints/step_00000007"), "bf16");
  s = run(small_config("train { steps: 9 }"), dir_, true);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(moment_dtype_in(dir_ + "/checkpoints/step_00000009"), "f32");
  for (const Json& line : read_metrics(dir_)) {
    if (const Json* loss = line.find("loss")) EXPECT_TRUE(std::isfinite(loss->as_double()));
  }
}

TEST_F(BrokenCheckpoint, LatestPointsNowhere) {
  std::ofstream(dir_ + "/checkpoints/latest", std::ios::trunc) << "step_00000099\n";
  absl::Status s = resume();
  EXPECT_TRUE(absl::StrContains(s.message(), "not a checkpoint directory")) << s;
  fs::remove_all(dir_ + "/checkpoints");
  s = resume();
  EXPECT_TRUE(absl::StrContains(s.message(), "no checkpoint in")) << s;
}

TEST(TrainCommand, SigtermWritesACheckpointAndExitsCleanlyThenResumeFinishes) {
  const std::string dir = fresh_dir("run");
  const std::string config = std::string(SWITCHYARD_SOURCE_DIR) + "/configs/tiny.textproto";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    execl(SWITCHYARD_BINARY, SWITCHYARD_BINARY, "train", "--config", config.c_str(), "--run_dir",
          dir.c_str(), "--set", "train { steps: 100000 } checkpoint { interval: 0 }", nullptr);
    _exit(127);
  }
  // Wait until training has started (the resolved config is written first), then stop it.
  for (int i = 0; i < 200 && !fs::exists(fs::path(dir) / "metrics.jsonl"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
}

// Runs the switchyard binary with a shell command line; returns (exit code, stdout + stderr).
std::pair<int, std::string> run_binary(const std::string& args) {
  const std::string out = fs::path(::testing::TempDir()) / "switchyard_cli_output.txt";
  const int status =
      std::system((std::string(SWITCHYARD_BINARY) + " " + args + " > " + out + " 2>&1").c_str());
  std::ifstream in(out);
  std::stringstream text;
  text << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
}

TEST(GenerateCommand, ContinuesAPromptFromACheckpointAndRejectsBadFlags) {
  const std::string dir = fresh_dir("run");
  ASSERT_TRUE(run(small_config("train { steps: 5 } checkpoint { interval: 0 }"), dir).ok());
  auto [code, text] =
      run_binary("generate --checkpoint " + dir + " --prompt '3+4=' --max_new_tokens 4");
  EXPECT_EQ(code, 0) << text;
  EXPECT_TRUE(absl::StartsWith(text, "3+4=")) << text;
  EXPECT_LE(text.size(), std::string("3+4=").size() + 5) << text;  // at most 4 new bytes + '\n'
  // Sampling is reproducible from the seed.
  const std::string sample =
      "generate --checkpoint " + dir + " --prompt '1+' --temperature 1 --seed 5";
  EXPECT_EQ(run_binary(sample).second, run_binary(sample).second);

  std::tie(code, text) =
      run_binary("generate --checkpoint " + dir + " --prompt x --temperature hot");
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(absl::StrContains(text, "--temperature hot: give a number >= 0")) << text;
  std::tie(code, text) = run_binary("generate --checkpoint /nonexistent --prompt x");
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(absl::StrContains(text, "no config.textproto there")) << text;
  std::tie(code, text) = run_binary("generate --checkpoint " + dir + " --prompt $'\\xc3'");
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(absl::StrContains(text, "outside the model's vocabulary of 64")) << text;
}

TEST(Schedule, WarmupThenDecayToTheFloor) {
  Schedule s{.peak_lr = 1.0,
             .warmup_steps = 4,
             .total_steps = 14,
             .decay = Decay::kCosine,
             .min_lr_ratio = 0.1};
  EXPECT_DOUBLE_EQ(s.lr(0), 0.25);
  EXPECT_DOUBLE_EQ(s.lr(3), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(4), 1.0);
  EXPECT_NEAR(s.lr(9), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 5.0 / 9.0)), 1e-12);
  EXPECT_DOUBLE_EQ(s.lr(13), 0.1);
  s.decay = Decay::kLinear;
  EXPECT_NEAR(s.lr(9), 0.1 + 0.9 * (1 - 5.0 / 9.0), 1e-12);
  s.decay = Decay::kConstant;
  EXPECT_DOUBLE_EQ(s.lr(13), 1.0);
}

// Experiment.deterministic reaches the kernels through choose_device, which every command
// that runs a model calls: false lets attention's backward use atomics (cuDNN's; the CPU's
// kernels are deterministic either way), and the default puts determinism back.
TEST(ChooseDevice, AppliesTheDeterministicSetting) {
  LocalCommunicator alone;
  switchyard::Experiment config;
  config.set_device(switchyard::Experiment::DEVICE_CPU);
  config.set_deterministic(false);
  ASSERT_TRUE(choose_device(config, alone).ok());
  EXPECT_FALSE(attention_deterministic());
  config.clear_deterministic();
  ASSERT_TRUE(choose_device(config, alone).ok());
  EXPECT_TRUE(attention_deterministic()) << "the default";
}

TEST(AdamWOptimizer, ClipsToTheGlobalNormAndSkipsFrozenState) {
  ParamStore store;
  Param& a = store.add("a", {2}, SyncGroup::kDense, Init::kZeros, 0, false);
  Param& frozen = store.add("bias", {1}, SyncGroup::kDense, Init::kZeros, 0, false);
  frozen.trainable = false;
  AdamW opt(store,
            {.beta1 = 0.9f, .beta2 = 0.99f, .eps = 0.0f, .weight_decay = 0, .grad_clip = 1.0f});
  a.grad.data<float>()[0] = 3;
  a.grad.data<float>()[1] = 4;
  frozen.grad.data<float>()[0] = 100;
  EXPECT_DOUBLE_EQ(opt.step(0.1f), 5.0);  // the norm before clipping, frozen state excluded
  // After clipping g = (0.6, 0.8); the first bias-corrected Adam step moves each by lr * sign.
  EXPECT_NEAR(a.value.data<float>()[0], -0.1f, 1e-6);
  EXPECT_NEAR(a.value.data<float>()[1], -0.1f, 1e-6);
  EXPECT_EQ(a.grad.data<float>()[0], 3.0f);  // clipping scales inside the update only
  EXPECT_EQ(frozen.value.data<float>()[0], 0.0f);
  EXPECT_EQ(opt.state().size(), 2u);
  auto bad =
      opt.load_state({{"adam_m.a", Tensor::zeros({3})}, {"adam_v.a", Tensor::zeros({2})}}, 1);
  EXPECT_TRUE(absl::StrContains(bad.message(), "adam_m.a")) << bad;
  EXPECT_TRUE(absl::StrContains(bad.message(), "[3]")) << bad;
  bad = opt.load_state(
      {{"adam_m.a", Tensor::zeros({2}, DType::kI32)}, {"adam_v.a", Tensor::zeros({2})}}, 1);
  EXPECT_TRUE(absl::StrContains(bad.message(), "'adam_m.a' is i32, expected f32 or bf16")) << bad;
}

// Two parameters (one decayed), no clipping: each step is adamw_step on each with the settings'
// decay, which the expectations below replay.
void add_two_params(ParamStore& store) {
  store.add("a", {5}, SyncGroup::kDense, Init::kNormal, 0.5f, true);
  store.add("b", {3, 7}, SyncGroup::kDense, Init::kNormal, 0.5f, false);
  store.initialize(11);
}
void set_grads(ParamStore& store, std::mt19937_64& rng) {
  for (Param* p : store.params()) {
    p->grad.copy_from(testing::random_normal(p->grad.shape(), rng));
    p->grad_unwritten = false;
  }
}

// Checkpointed state moves between moment dtypes: f32 moments load into a bf16-moment optimizer
// rounded to nearest even, and its next step is adamw_step from those rounded moments; bf16
// moments load into an f32-moment optimizer widened exactly, and state() gives each in its own
// dtype.
TEST(AdamWOptimizer, StateLoadsIntoEitherMomentDtype) {
  const OptimizerSettings f32{.weight_decay = 0.1f, .grad_clip = 0};
  OptimizerSettings bf16_moments = f32;
  bf16_moments.moment_dtype = DType::kBF16;
  ParamStore first, second, third;
  for (ParamStore* store : {&first, &second, &third}) add_two_params(*store);
  auto rng = testing::rng_for_test();
  AdamW opt32(first, f32);
  for (int step = 0; step < 2; ++step) {
    set_grads(first, rng);
    opt32.step(1e-2f);
  }
  const auto saved32 = opt32.state();
  for (const auto& [name, t] : saved32) EXPECT_EQ(t.dtype(), DType::kF32) << name;

  // f32 -> bf16, at the point where the f32 run stopped.
  for (size_t i = 0; i < first.params().size(); ++i)
    second.params()[i]->value.copy_from(first.params()[i]->value);
  AdamW opt16(second, bf16_moments);
  ASSERT_TRUE(opt16.load_state(saved32, opt32.steps_taken()).ok());
  EXPECT_EQ(opt16.steps_taken(), 2);
  const auto loaded16 = opt16.state();
  ASSERT_EQ(loaded16.size(), saved32.size());
  for (size_t i = 0; i < saved32.size(); ++i) {
    EXPECT_EQ(loaded16[i].first, saved32[i].first);
    EXPECT_EQ(loaded16[i].second.dtype(), DType::kBF16) << saved32[i].first;
    EXPECT_EQ(loaded16[i].second.to_f32_vector(),
              saved32[i].second.to(DType::kBF16).to_f32_vector())
        << saved32[i].first;
  }
  // Its third step, replayed on copies with the kernel.
  set_grads(second, rng);
  std::vector<Tensor> expected;
  for (size_t i = 0; i < second.params().size(); ++i) {
    const Param* p = second.params()[i];
    Tensor value = p->value.clone();
    adamw_step(value, p->grad, loaded16[2 * i].second.clone(), loaded16[2 * i + 1].second.clone(),
               {.lr = 1e-2f, .weight_decay = p->decay ? 0.1f : 0.0f, .step = 3});
    expected.push_back(value);
  }
  opt16.step(1e-2f);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(testing::all_close(second.params()[i]->value, expected[i], 0, 0))
        << second.params()[i]->name;
  }

  // bf16 -> f32.
  const auto saved16 = opt16.state();
  AdamW opt32_again(third, f32);
  ASSERT_TRUE(opt32_again.load_state(saved16, opt16.steps_taken()).ok());
  const auto loaded32 = opt32_again.state();
  ASSERT_EQ(loaded32.size(), saved16.size());
  for (size_t i = 0; i < saved16.size(); ++i) {
    EXPECT_EQ(loaded32[i].second.dtype(), DType::kF32) << saved16[i].first;
    EXPECT_EQ(loaded32[i].second.to_f32_vector(), saved16[i].second.to_f32_vector())
        << saved16[i].first;
  }
  set_grads(third, rng);
  opt32_again.step(1e-2f);
  EXPECT_EQ(opt32_again.steps_taken(), 4);
}

}  // namespace
}  // namespace sy
