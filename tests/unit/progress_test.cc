// The operator's numbers: the model FLOP count against a count by hand, the GPU peak table,
// MFU, the ETA on a fake clock, the progress line on and off a terminal (with a second count,
// in bytes), the summaries of a checkpoint save and load and of `switchyard data`, and a CPU
// run whose log line and metrics.jsonl carry the ETA and peak memory but no MFU.
#include "trainer/progress.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "kernels/check.h"
#include "models/model_spec.h"
#include "models/param_store.h"
#include "models/transformer.h"
#include "trainer/checkpoint.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// configs/tiny.textproto's model: 2 layers (one dense, one MoE), one MTP module.
ModelSpec tiny_spec() {
  ModelSpec s;
  s.vocab_size = 128;
  s.d_model = 96;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 9;
  s.first_k_dense = 1;
  s.dense_ffn_hidden = 192;
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_hidden = 96;
  s.mtp_modules = 1;
  return s;
}

TEST(TrainFlopsPerToken, MatchesACountByHandOfTheTinyModel) {
  // Multiply-adds of one token, forward, head_dim 24:
  //   attention: wq 96x96 + wk 96x48 + wv 96x48 + wo 96x96 = 27,648;
  //              scores and weighted sum 2 x 9 keys x 96 = 1,728            -> 29,376
  //   dense FFN: 3 x 96 x 192 = 55,296                     layer 0: 84,672
  //   MoE FFN:   router 96x4 = 384 + 2 experts x 3 x 96 x 96 = 55,296  layer 1: 85,056
  //   head:      96 x 128 = 12,288
  //   MTP:       proj 192x96 = 18,432 + a MoE block 85,056 + head 12,288 = 115,776
  //   total 297,792; x 2 FLOPs, x 3 for forward + backward.
  EXPECT_DOUBLE_EQ(train_flops_per_token(tiny_spec()), 297792.0 * 2 * 3);
}

TEST(TrainFlopsPerToken, CountsSharedExpertsAndAHeadDimOfItsOwn) {
  ModelSpec s;
  s.vocab_size = 1000;
  s.d_model = 64;
  s.n_layers = 1;
  s.n_heads = 2;
  s.n_kv_heads = 1;
  s.head_dim_override = 40;  // q is 80 wide, k and v 40
  s.seq_len = 16;
  s.first_k_dense = 0;
  s.moe.num_experts = 8;
  s.moe.top_k = 2;
  s.moe.num_shared_experts = 1;
  s.moe.expert_hidden = 32;
  s.tie_embeddings = true;  // the head's matmul costs the same when its weight is shared
  // wq 64x80 + wk 64x40 + wv 64x40 + wo 80x64 = 15,360; scores 2 x 16 x 80 = 2,560;
  // router 64x8 = 512; (2 routed + 1 shared) x 3 x 64 x 32 = 18,432; head 64,000.
  EXPECT_DOUBLE_EQ(train_flops_per_token(s), (15360.0 + 2560 + 512 + 18432 + 64000) * 6);
}

TEST(KnownGpuPeak, ReadsCudaNamesTheMoreSpecificRowFirst) {
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA H100 80GB HBM3"), 989);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA H100 PCIe"), 756);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA H100 NVL"), 835);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA H200"), 989);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA GH200 480GB"), 989);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA H20"), 148);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA A100-SXM4-80GB"), 312);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA A100 80GB PCIe"), 312);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA B200"), 2250);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA L40S"), 362);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA L40"), 181);
  EXPECT_EQ(known_gpu_peak_tflops("NVIDIA L4"), 121);
  EXPECT_EQ(known_gpu_peak_tflops("Tesla V100-SXM2-16GB"), 0);  // no bf16 tensor cores
  EXPECT_EQ(known_gpu_peak_tflops(""), 0);
}

TEST(DevicePeakFlops, NoneOnTheCpuEvenWhenConfigured) {
  EXPECT_EQ(device_peak_flops(Device::cpu(), 0).tflops, 0);
  EXPECT_EQ(device_peak_flops(Device::cpu(), 500).tflops, 0);
  EXPECT_TRUE(absl::StrContains(device_peak_flops(Device::cpu(), 0).source, "CPU"));
  // A configured figure wins on a GPU (no GPU is needed to decide that).
  const PeakFlops configured = device_peak_flops(Device::cuda(0), 123);
  EXPECT_EQ(configured.tflops, 123);
  EXPECT_EQ(configured.source, "logging.peak_tflops");
}

TEST(ModelFlopsUtilization, IsAchievedOverPeakFlops) {
  // 8 GPUs of 989 TFLOP/s; 6e9 FLOPs a token at 400k tokens/s = 2.4 PFLOP/s.
  EXPECT_NEAR(model_flops_utilization(6e9, 4e5, 8, 989), 2.4e15 / (8 * 989e12), 1e-15);
  EXPECT_EQ(model_flops_utilization(6e9, 4e5, 8, 0), 0);
}

TEST(FormatDuration, ShortUnitsForEachScale) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(42.4), "42s");
  EXPECT_EQ(format_duration(723), "12m03s");
  EXPECT_EQ(format_duration(3 * 3600 + 7 * 60 + 20), "3h07m");
  EXPECT_EQ(format_duration(2 * 86400 + 4 * 3600 + 100), "2d04h");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(Eta, MeanStepTimeTimesStepsLeftFromWhereTheProcessStarted) {
  const Clock::time_point t0{};
  const Eta fresh(0, 100, t0);
  EXPECT_LT(fresh.seconds_left(0, t0), 0);  // nothing measured
  EXPECT_DOUBLE_EQ(fresh.seconds_left(10, t0 + seconds(5)), 90 * 0.5);
  EXPECT_DOUBLE_EQ(fresh.seconds_left(50, t0 + seconds(25)), 50 * 0.5);
  EXPECT_EQ(fresh.seconds_left(100, t0 + seconds(50)), 0);
  // Resumed at step 60: the 60 steps done before are not this process's time.
  const Eta resumed(60, 100, t0);
  EXPECT_DOUBLE_EQ(resumed.seconds_left(70, t0 + seconds(20)), 30 * 2.0);
}

TEST(ProgressLine, OffATerminalOnlyTheSummary) {
  std::ostringstream out;
  const Clock::time_point t0{};
  Progress p(out, "eval step 10", 256, "examples", /*terminal=*/false, seconds(2), t0);
  p.update(64, t0 + seconds(3));
  p.update(128, t0 + seconds(6));
  p.finish(256, " | loss 1.2", t0 + seconds(12));
  EXPECT_EQ(out.str(), "eval step 10: 256 examples in 12s (21 examples/s) | loss 1.2\n");
}

TEST(ProgressLine, OnATerminalRedrawsAtMostEveryIntervalWithRateAndEta) {
  std::ostringstream out;
  const Clock::time_point t0{};
  Progress p(out, "load", 1000, "tensors", /*terminal=*/true, seconds(2), t0);
  p.update(100, t0 + seconds(1));  // too soon: nothing
  EXPECT_EQ(out.str(), "");
  p.update(250, t0 + seconds(2) + milliseconds(500));
  EXPECT_EQ(out.str(), "\rload: 250/1000 tensors | 100 tensors/s | ETA 8s\x1b[K");
  p.update(300, t0 + seconds(3));  // 0.5 s after the last line: nothing new
  p.finish(1000, "", t0 + seconds(10));
  EXPECT_TRUE(absl::EndsWith(out.str(), "\r\x1b[Kload: 1000 tensors in 10s (100 tensors/s)\n"))
      << out.str();
}

TEST(ProgressLine, ASecondCountShowsItsOwnRateAndNoTotal) {
  std::ostringstream out;
  const Clock::time_point t0{};
  Progress p(out, "generate", 100, "prompts", /*terminal=*/true, seconds(2), t0);
  p.count_also("new tokens", "tok/s");
  p.update(40, 1280, t0 + seconds(4));
  EXPECT_EQ(out.str(),
            "\rgenerate: 40/100 prompts | 10 prompts/s | 1280 new tokens (320 tok/s) | ETA 6s"
            "\x1b[K");
  out.str("");
  p.finish(100, 3200, " -> out.jsonl", t0 + seconds(10));
  EXPECT_EQ(out.str(),
            "\r\x1b[Kgenerate: 100 prompts in 10s (10 prompts/s) | 3200 new tokens (320 tok/s) "
            "-> out.jsonl\n");
  // Off a terminal the same summary, alone.
  std::ostringstream quiet;
  Progress q(quiet, "generate", 100, "prompts", /*terminal=*/false, seconds(2), t0);
  q.count_also("new tokens", "tok/s");
  q.update(40, 1280, t0 + seconds(4));
  q.finish(100, 3200, " -> out.jsonl", t0 + seconds(10));
  EXPECT_EQ(quiet.str(),
            "generate: 100 prompts in 10s (10 prompts/s) | 3200 new tokens (320 tok/s) "
            "-> out.jsonl\n");
}

TEST(ProgressLine, BytesReadAsMebibytes) {
  std::ostringstream out;
  const Clock::time_point t0{};
  Progress p(out, "load ckpt", 40 << 20, "bytes", /*terminal=*/true, seconds(2), t0);
  p.update(10 << 20, t0 + seconds(2));  // 5 MiB/s, 30 MiB to go
  EXPECT_EQ(out.str(), "\rload ckpt: 10.0/40.0 MiB | 5.0 MiB/s | ETA 6s\x1b[K");
  out.str("");
  p.finish(40 << 20, "", t0 + seconds(4));
  EXPECT_EQ(out.str(), "\r\x1b[Kload ckpt: 40.0 MiB in 4.00s (10.0 MiB/s)\n");
  // Stopped short of the total, the summary says how far it got.
  std::ostringstream quiet;
  Progress q(quiet, "data", 3 << 20, "bytes", /*terminal=*/false, seconds(2), t0);
  q.finish(1 << 20, "", t0 + seconds(1));
  EXPECT_EQ(quiet.str(), "data: 1.0/3.0 MiB in 1.00s (1.0 MiB/s)\n");
}

TEST(ProgressLine, AnUnfinishedLineIsErasedSoAnErrorStartsItsOwnLine) {
  std::ostringstream out;
  const Clock::time_point t0{};
  {
    Progress p(out, "load", 10, "tensors", /*terminal=*/true, seconds(2), t0);
    p.update(3, t0 + seconds(3));
  }
  EXPECT_EQ(out.str(), "\rload: 3/10 tensors | 1 tensors/s | ETA 7s\x1b[K\r\x1b[K");
  std::ostringstream untouched;
  { Progress p(untouched, "load", 10, "tensors", /*terminal=*/false, seconds(2), t0); }
  EXPECT_EQ(untouched.str(), "");
}

switchyard::Experiment small_run(const std::string& extra) {
  switchyard::Experiment config;
  const char* base = R"pb(
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
    moe { num_experts: 4 top_k: 2 expert_hidden: 32 normalize_topk: true }
    mtp { num_modules: 1 }
    data { arithmetic { min_digits: 1 max_digits: 1 operators: "+" eval_examples: 8 } }
    optimizer { lr: 3e-3 }
    train { steps: 40 micro_batch: 8 log_interval: 19 eval_interval: 0 }
    checkpoint { interval: 0 }
  )pb";
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(base, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  const absl::Status valid = validate_experiment(config);
  SY_CHECK(valid.ok()) << valid;
  return config;
}

std::string fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / absl::StrCat("switchyard_progress_", name);
  fs::remove_all(dir);
  return dir.string();
}

TEST(TrainLogLine, CarriesEtaAndPeakMemoryAndNoMfuOnTheCpu) {
  // A configured peak changes nothing on the CPU.
  const auto config = small_run("logging { peak_tflops: 500 }");
  const std::string dir = fresh_dir("cpu_run");
  std::ostringstream log;
  ASSERT_TRUE(train(config, {.run_dir = dir}, log).ok()) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(),
                                "model FLOPs per token (forward + backward) | no MFU on "
                                "the CPU"))
      << log.str();
  EXPECT_FALSE(absl::StrContains(log.str(), "tok/s | MFU")) << log.str();

  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  std::vector<double> etas;
  std::vector<int64_t> logged_steps;
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    if (!j->find("loss")) continue;
    EXPECT_EQ(j->find("mfu"), nullptr) << line;
    EXPECT_EQ(j->find("peak_memory_gib"), nullptr) << line;  // a GPU's tensors: none here
    ASSERT_NE(j->find("peak_rss_gib"), nullptr) << line;
    EXPECT_GT(j->find("peak_rss_gib")->as_double(), 0.001) << line;
    EXPECT_LT(j->find("peak_rss_gib")->as_double(), 64) << line;
    ASSERT_NE(j->find("time_left_s"), nullptr) << line;
    etas.push_back(j->find("time_left_s")->as_double());
    logged_steps.push_back(j->find("step")->as_int());
  }
  ASSERT_EQ(logged_steps, (std::vector<int64_t>{1, 19, 38, 40}));
  // 39 steps left after the first, 21, 2, then none: the ETA falls at each line (the steps
  // left shrink far faster than any wobble of the step time on a busy machine).
  EXPECT_GT(etas[0], 0);
  for (size_t i = 1; i < etas.size(); ++i) EXPECT_LT(etas[i], etas[i - 1]) << "line " << i;
  EXPECT_EQ(etas.back(), 0);

  // The console line: ETA and the peak resident set after tok/s.
  bool seen = false;
  std::istringstream lines(log.str());
  for (std::string line; std::getline(lines, line);) {
    if (!absl::StartsWith(line, "step 19/40 |")) continue;
    seen = true;
    EXPECT_TRUE(absl::StrContains(line, " tok/s | peak rss ")) << line;
    EXPECT_TRUE(absl::StrContains(line, " GiB | ETA ")) << line;
  }
  EXPECT_TRUE(seen) << log.str();
  // Work between steps says what it cost: the final evaluation and checkpoint.
  EXPECT_TRUE(std::regex_search(
      log.str(), std::regex(R"(\nsave checkpoint step_00000040: [0-9.]+ MiB in [0-9.]+s)")))
      << log.str();
  EXPECT_TRUE(
      std::regex_search(log.str(), std::regex(R"(\neval step 40 \| loss .* \| [0-9.]+s\n)")))
      << log.str();
}

// A save and a load off a terminal: one summary line each, with the bytes of the tensors.
TEST(CheckpointProgress, SaveAndLoadEachWriteOneSummaryLine) {
  const auto config = small_run("");
  const ModelSpec spec = model_spec_from_config(config);
  ParamStore store;
  Transformer model(spec, store);
  int64_t bytes = 0;
  for (const Param* p : store.params()) bytes += static_cast<int64_t>(p->value.nbytes());
  const std::string mib = absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
  const std::string dir = fresh_dir("checkpoint");
  std::ostringstream saved;
  ASSERT_TRUE(save_weights_checkpoint(dir, store, &saved).ok());
  // On disk: the tensors plus the safetensors header.
  EXPECT_TRUE(std::regex_match(
      saved.str(), std::regex(R"(save checkpoint step_00000000: [0-9.]+ MiB in [0-9.]+s)"
                              R"(( \([0-9.]+ MiB/s\))?\n)")))
      << saved.str();
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  ParamStore loaded_store;
  Transformer loaded(spec, loaded_store);
  std::ostringstream load_log;
  ASSERT_TRUE(load_checkpoint(*latest, loaded_store, nullptr, {}, &load_log).ok());
  const std::string want = absl::StrCat("load ", *latest, ": ", mib, " in ");
  EXPECT_TRUE(absl::StartsWith(load_log.str(), want)) << load_log.str() << "\nwant " << want;
  const std::string log = load_log.str();
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
}

// `switchyard data` into a stream that is no terminal: no progress lines, one summary with
// the input's size, the tokens and the shards written.
TEST(DataCommandProgress, OffATerminalPrintsOneSummary) {
  const std::string dir = fresh_dir("data");
  fs::create_directories(dir);
  const std::string input = (fs::path(dir) / "in.txt").string();
  std::string text;
  for (int i = 0; i < 300; ++i) absl::StrAppend(&text, "line ", i, " of the input\n");
  std::ofstream(input) << text;
  std::ostringstream out;
  const absl::Status s = run_data_command(
      {"--input", input, "--output", dir + "/shards", "--tokens_per_shard", "100000"}, out);
  ASSERT_TRUE(s.ok()) << s;
  // The byte tokenizer: a token a byte, and no end-of-document token.
  const std::regex summary(absl::StrCat(
      R"(data: [0-9.]+ MiB in [0-9.]+s( \([0-9.]+ MiB/s\))? \| )", text.size(),
      R"( tokens \([0-9.]+[kMG]? tok/s\) \| bytes tokenizer -> 1 train and 1 val shards in )", dir,
      "/shards\n"));
  EXPECT_TRUE(std::regex_match(out.str(), summary)) << out.str();
  EXPECT_EQ(out.str().find('\r'), std::string::npos) << out.str();
}

TEST(TrainLogLine, NegativePeakTflopsIsAnErrorNamingTheField) {
  switchyard::Experiment config = small_run("");
  config.mutable_logging()->set_peak_tflops(-1);
  const absl::Status s = validate_experiment(config);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "logging.peak_tflops")) << s;
}

}  // namespace
}  // namespace sy
