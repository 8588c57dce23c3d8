// Fault injection on CPU: a diverging run skips its non-finite steps, stops with a clear error
// after train.max_skipped_steps of them in a row, and never leaves a non-finite checkpoint or a
// `latest` that names one; a transient NaN changes nothing; stop signals end evaluation; a FIFO
// given as a data shard or a config fails at once instead of blocking; a shard truncated after
// it was opened gives an error, not SIGBUS.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/data/jsonl.h"
#include "trainer/json.h"
#include "trainer/optimizer.h"
#include "trainer/regular_file.h"
#include "trainer/safetensors.h"
#include "trainer/token_shards.h"
#include "trainer/train.h"

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
    bias_update_rate: 0.001
  }
  data { arithmetic { min_digits: 1 max_digits: 1 operators: "+" eval_examples: 16 } }
  optimizer { lr: 3e-3 weight_decay: 0.01 }
  schedule { warmup_steps: 2 }
  train { steps: 8 micro_batch: 4 cpu_threads: 1 }
  checkpoint { interval: 1 keep_last: 100 }
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
      absl::StrCat("switchyard_fault_", info->test_suite_name(), "_", info->name(), "_", name);
  fs::remove_all(dir);
  return dir.string();
}

absl::Status run(const switchyard::Experiment& config, const std::string& dir,
                 std::string* log_text = nullptr) {
  std::ostringstream log;
  absl::Status s = train(config, {.run_dir = dir}, log);
  if (log_text) *log_text = log.str();
  return s;
}

// Clears the test hooks whatever a test does.
class Divergence : public ::testing::Test {
 protected:
  void TearDown() override {
    set_after_backward_hook_for_testing(nullptr);
    set_stop_requested_for_testing(false);
  }
};

std::string checkpoint_dir(const std::string& run_dir, int step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08d", step);
  return (fs::path(run_dir) / "checkpoints" / name).string();
}

// Every tensor of every .safetensors file of one checkpoint, by "file/name".
std::map<std::string, std::vector<float>> checkpoint_tensors(const std::string& dir) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    auto file = load_safetensors(entry.path().string());
    SY_CHECK(file.ok()) << file.status();
    for (const auto& [name, t] : file->tensors)
      out[entry.path().filename().string() + "/" + name] = t.to_f32_vector();
  }
  return out;
}

int64_t manifest_int(const std::string& dir, const std::string& key) {
  std::ifstream in(fs::path(dir) / "manifest.json");
  std::stringstream text;
  text << in.rdbuf();
  auto j = parse_json(text.str());
  SY_CHECK(j.ok()) << j.status();
  return j->find(key)->as_int();
}

void expect_all_finite(const std::string& dir) {
  const auto tensors = checkpoint_tensors(dir);
  ASSERT_FALSE(tensors.empty()) << dir;
  for (const auto& [name, values] : tensors)
    for (float v : values) ASSERT_TRUE(std::isfinite(v)) << dir << " " << name;
}

// A hook that writes NaN into the first gradient at the given 0-based steps.
TrainStepHook nan_gradient_at(std::set<int64_t> steps) {
  return [steps](int64_t step, ParamStore& store) {
    if (!steps.count(step)) return;
    store.params().front()->grad.data<float>()[0] = std::nanf("");
  };
}

TEST_F(Divergence, HugeLearningRateSkipsStepsStopsAndLeavesOnlyFiniteCheckpoints) {
  const auto config = small_config(
      "optimizer { lr: 1e30 } schedule { warmup_steps: 0 } "
      "train { steps: 20 max_skipped_steps: 3 }");
  const std::string dir = fresh_dir("run");
  std::string log;
  const absl::Status s = run(config, dir, &log);
  ASSERT_FALSE(s.ok()) << log;
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "4 steps in a row")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "train.max_skipped_steps = 3")) << s;
  EXPECT_TRUE(absl::StrContains(log, "skipped, ")) << log;
  EXPECT_TRUE(absl::StrContains(log, "(3 in a row)")) << log;

  int checkpoints = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(dir) / "checkpoints")) {
    if (!entry.is_directory()) continue;
    expect_all_finite(entry.path().string());
    ++checkpoints;
  }
  EXPECT_GE(checkpoints, 1);
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  expect_all_finite(*latest);
}

TEST_F(Divergence, ATransientNanIsSkippedAndChangesNothing) {
  set_after_backward_hook_for_testing(nan_gradient_at({4}));
  const std::string dir = fresh_dir("run");
  std::string log;
  ASSERT_TRUE(run(small_config(), dir, &log).ok()) << log;
  EXPECT_TRUE(absl::StrContains(log, "step 5: skipped, grad norm nan (1 in a row)")) << log;

  // Step 5's checkpoint holds exactly step 4's weights, moments and optimizer step count.
  const auto before = checkpoint_tensors(checkpoint_dir(dir, 4));
  const auto skipped = checkpoint_tensors(checkpoint_dir(dir, 5));
  const auto after = checkpoint_tensors(checkpoint_dir(dir, 6));
  ASSERT_EQ(before.size(), skipped.size());
  for (const auto& [name, values] : before) EXPECT_EQ(values, skipped.at(name)) << name;
  EXPECT_EQ(manifest_int(checkpoint_dir(dir, 4), "optimizer_steps"), 4);
  EXPECT_EQ(manifest_int(checkpoint_dir(dir, 5), "optimizer_steps"), 4);
  // Training went on: the next step learns again.
  EXPECT_EQ(manifest_int(checkpoint_dir(dir, 6), "optimizer_steps"), 5);
  EXPECT_NE(skipped.begin()->second, after.begin()->second);
  EXPECT_EQ(manifest_int(checkpoint_dir(dir, 8), "optimizer_steps"), 7);
  expect_all_finite(checkpoint_dir(dir, 8));
}

TEST_F(Divergence, ZeroMaxSkippedStepsStopsAtTheFirst) {
  set_after_backward_hook_for_testing(nan_gradient_at({2}));
  const std::string dir = fresh_dir("run");
  const absl::Status s = run(small_config("train { max_skipped_steps: 0 }"), dir);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "step 3: 1 steps in a row")) << s;
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(fs::path(*latest).filename(), "step_00000002");
}

TEST_F(Divergence, NonFiniteStateIsNeverCheckpointed) {
  // A NaN weight (the gradient norm stays finite, so the step is taken): the checkpoint after
  // it is refused, naming the tensor, and `latest` stays at the step before.
  set_after_backward_hook_for_testing([](int64_t step, ParamStore& store) {
    if (step != 2) return;
    store.params().back()->value.data<float>()[0] = INFINITY;
    store.values_changed();
  });
  const std::string dir = fresh_dir("run");
  const absl::Status s = run(small_config(), dir);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "checkpoint at step 3 not written")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "tensor '")) << s;
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(fs::path(*latest).filename(), "step_00000002");
  EXPECT_FALSE(fs::exists(checkpoint_dir(dir, 3)));
}

TEST(AdamWNonFinite, ANonFiniteNormUpdatesNothing) {
  ParamStore store;
  Param& p = store.add("w", {3}, SyncGroup::kDense, Init::kNormal, 0.5f, true);
  store.initialize(7);
  AdamW opt(store, {.grad_clip = 1.0f});
  float* g = p.grad.data<float>();
  g[0] = 0.5f, g[1] = 0.25f, g[2] = -1.0f;
  ASSERT_TRUE(std::isfinite(opt.step(0.1f)));
  const std::vector<float> value = p.value.to_f32_vector();
  const std::vector<float> m = opt.state()[0].second.to_f32_vector();
  const std::vector<float> v = opt.state()[1].second.to_f32_vector();
  for (float bad : {std::nanf(""), INFINITY}) {
    g[1] = bad;
    EXPECT_FALSE(std::isfinite(opt.step(0.1f)));
    EXPECT_EQ(p.value.to_f32_vector(), value);
    EXPECT_EQ(opt.state()[0].second.to_f32_vector(), m);
    EXPECT_EQ(opt.state()[1].second.to_f32_vector(), v);
    EXPECT_EQ(opt.steps_taken(), 1);
  }
  g[1] = 0.25f;
  EXPECT_TRUE(std::isfinite(opt.step(0.1f)));
  EXPECT_EQ(opt.steps_taken(), 2);
  EXPECT_NE(p.value.to_f32_vector(), value);
  EXPECT_TRUE(std::isnan(clip_scale(std::nan(""), 1.0f)));
  EXPECT_TRUE(std::isnan(clip_scale(INFINITY, 0.0f)));
}

// --- files that are not regular files ------------------------------------------------------

// A FIFO nobody writes to: opening it for reading blocks until a writer comes.
std::string make_fifo(const std::string& name) {
  const std::string path = fresh_dir(name);
  SY_CHECK(::mkfifo(path.c_str(), 0600) == 0) << path;
  return path;
}

TEST(NonRegularFiles, AFifoAsATokenShardFailsAtOnceNamingIt) {
  const std::string fifo = make_fifo("shard.bin");
  auto loader = ShardLoader::open({.pattern = fifo, .seq_len = 4, .vocab_size = 64});
  ASSERT_FALSE(loader.ok());
  EXPECT_TRUE(absl::StrContains(loader.status().message(), fifo)) << loader.status();
  EXPECT_TRUE(absl::StrContains(loader.status().message(), "FIFO")) << loader.status();
  const std::string dir = fresh_dir("dir.bin");
  fs::create_directories(dir);
  auto shard = read_shard(dir);
  ASSERT_FALSE(shard.ok());
  EXPECT_TRUE(absl::StrContains(shard.status().message(), "is a directory")) << shard.status();
}

TEST(NonRegularFiles, AFifoAsAConfigACheckpointOrAPromptFileFailsAtOnce) {
  const std::string fifo = make_fifo("input");
  auto config = load_experiment(fifo, {});
  ASSERT_FALSE(config.ok());
  EXPECT_TRUE(absl::StrContains(config.status().message(), "config file " + fifo + " is a FIFO"))
      << config.status();
  auto weights = load_safetensors(fifo);
  ASSERT_FALSE(weights.ok());
  EXPECT_TRUE(absl::StrContains(weights.status().message(), "FIFO")) << weights.status();
  const absl::Status jsonl =
      for_each_jsonl_object(fifo, [](int64_t, const Json&) { return absl::OkStatus(); });
  ASSERT_FALSE(jsonl.ok());
  EXPECT_TRUE(absl::StrContains(jsonl.message(), "FIFO")) << jsonl;
  // A checkpoint whose `latest` is a FIFO.
  const std::string run_dir = fresh_dir("run");
  fs::create_directories(fs::path(run_dir) / "checkpoints");
  SY_CHECK(::mkfifo((fs::path(run_dir) / "checkpoints" / "latest").c_str(), 0600) == 0);
  auto latest = latest_checkpoint(run_dir);
  ASSERT_FALSE(latest.ok());
  EXPECT_TRUE(absl::StrContains(latest.status().message(), "FIFO")) << latest.status();
}

// --- stop signals -----------------------------------------------------------------------------

TEST_F(Divergence, SigtermDuringEvaluationEndsItThenCheckpointsAndReturns) {
  install_stop_signal_handlers();
  // An evaluation of 200k problems would take many minutes; SIGTERM arrives 200 ms into it.
  std::thread signaller;
  set_after_backward_hook_for_testing([&](int64_t step, ParamStore&) {
    if (step != 3) return;
    signaller = std::thread([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      ::kill(::getpid(), SIGTERM);
    });
  });
  const auto config =
      small_config("train { eval_interval: 4 } data { arithmetic { eval_examples: 200000 } }");
  const std::string dir = fresh_dir("run");
  std::string log;
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = run(config, dir, &log);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (signaller.joinable()) signaller.join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_LT(seconds, 60.0);
  EXPECT_TRUE(absl::StrContains(log, "eval step 4: stopped by signal")) << log;
  EXPECT_FALSE(absl::StrContains(log, "eval step 4 |")) << log;
  EXPECT_TRUE(absl::StrContains(log, "checkpoint written at step 4")) << log;
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(fs::path(*latest).filename(), "step_00000004");
}

TEST_F(Divergence, AStopRequestEndsOpeningShardsAndLoadingWeights) {
  const std::string dir = fresh_dir("shards");
  fs::create_directories(dir);
  std::vector<uint16_t> tokens(100);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i % 64);
  ASSERT_TRUE(write_shard(dir + "/a.bin", tokens).ok());
  ASSERT_TRUE(save_safetensors(dir + "/w.safetensors", {{"w", Tensor::zeros({4})}}, {}).ok());
  set_stop_requested_for_testing(true);
  auto loader = ShardLoader::open({.pattern = dir + "/*.bin", .seq_len = 4, .vocab_size = 64});
  EXPECT_EQ(loader.status().code(), absl::StatusCode::kCancelled) << loader.status();
  EXPECT_TRUE(absl::StrContains(loader.status().message(), "stopped by signal"));
  auto weights = load_safetensors(dir + "/w.safetensors");
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kCancelled) << weights.status();
  set_stop_requested_for_testing(false);
  EXPECT_TRUE(ShardLoader::open({.pattern = dir + "/*.bin", .seq_len = 4, .vocab_size = 64}).ok());
  EXPECT_TRUE(load_safetensors(dir + "/w.safetensors").ok());
}

// --- a shard truncated under a run ------------------------------------------------------------

TEST(TruncatedShard, ReadingAfterTruncationIsAnErrorNamingTheShardNotSigbus) {
  const std::string dir = fresh_dir("shards");
  fs::create_directories(dir);
  std::vector<uint16_t> tokens(4000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i % 64);
  const std::string path = dir + "/train_000000.bin";
  ASSERT_TRUE(write_shard(path, tokens).ok());
  auto loader = ShardLoader::open({.pattern = path, .seq_len = 8, .vocab_size = 64});
  ASSERT_TRUE(loader.ok()) << loader.status();
  ASSERT_TRUE(loader->next_batch(4).ok());
  // Truncated in place to the header and a few tokens: most windows now lie past the end.
  ASSERT_EQ(::truncate(path.c_str(), kShardHeaderBytes + 20), 0);
  absl::Status failed;
  for (int i = 0; i < 200 && failed.ok(); ++i) failed = loader->next_batch(4).status();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.code(), absl::StatusCode::kDataLoss) << failed;
  EXPECT_TRUE(absl::StrContains(failed.message(), path)) << failed;
  EXPECT_TRUE(absl::StrContains(failed.message(), "truncated")) << failed;
  // Reading a shard's tokens directly says the same.
  auto shard = loader->shards()[0];
  std::vector<int32_t> out(8);
  EXPECT_EQ(shard.copy_tokens(3000, 8, out.data()).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace sy
