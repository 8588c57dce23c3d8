// The log line's numbers on a GPU: MFU is present and is the model FLOPs per token times
// tokens/s over the configured peak; the peak memory is the GPU's tensors (more than the
// weights, less than the card); the ETA falls to 0.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "kernels/check.h"
#include "models/model_spec.h"
#include "tests/testing/gpu_testing.h"
#include "trainer/config.h"
#include "trainer/json.h"
#include "trainer/progress.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;

switchyard::Experiment gpu_run(const std::string& extra) {
  switchyard::Experiment config;
  const char* base = R"pb(
    device: DEVICE_CUDA
    model {
      vocab_size: 256
      d_model: 128
      n_layers: 2
      n_heads: 4
      n_kv_heads: 2
      seq_len: 64
      first_k_dense: 1
      dense_ffn_hidden: 256
    }
    moe { num_experts: 4 top_k: 2 expert_hidden: 128 normalize_topk: true }
    mtp { num_modules: 1 }
    data { arithmetic { min_digits: 1 max_digits: 2 operators: "+" eval_examples: 16 } }
    train { steps: 30 micro_batch: 16 log_interval: 10 eval_interval: 0 }
    checkpoint { interval: 0 }
  )pb";
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(base, &config));
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &config)) << extra;
  const absl::Status valid = validate_experiment(config);
  SY_CHECK(valid.ok()) << valid;
  return config;
}

TEST(TrainLogLineGpu, MfuIsFlopsTimesRateOverTheConfiguredPeak) {
  SKIP_WITHOUT_GPU();
  const auto config = gpu_run("logging { peak_tflops: 100 }");
  const std::string dir = (fs::path(::testing::TempDir()) / "switchyard_progress_gpu").string();
  fs::remove_all(dir);
  std::ostringstream log;
  ASSERT_TRUE(train(config, {.run_dir = dir}, log).ok()) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "MFU of 100 TFLOP/s per GPU, logging.peak_tflops"))
      << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), " tok/s | MFU ")) << log.str();

  const double flops = train_flops_per_token(model_spec_from_config(config));
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  int lines = 0;
  double previous_eta = 1e30;
  for (std::string line; std::getline(in, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    if (!j->find("loss")) continue;
    ++lines;
    ASSERT_NE(j->find("mfu"), nullptr) << line;
    const double mfu = j->find("mfu")->as_double();
    const double rate = j->find("tokens_per_s")->as_double();
    EXPECT_NEAR(mfu, flops * rate / 100e12, 1e-5 * mfu + 1e-12) << line;
    EXPECT_GT(mfu, 0) << line;
    ASSERT_NE(j->find("peak_memory_gib"), nullptr) << line;
    // More than the f32 master weights alone (0.5M parameters, 2 MiB), less than any card.
    EXPECT_GT(j->find("peak_memory_gib")->as_double(), 2.0 / 1024) << line;
    EXPECT_LT(j->find("peak_memory_gib")->as_double(), 200) << line;
    EXPECT_EQ(j->find("peak_rss_gib"), nullptr) << line;
    const double eta = j->find("time_left_s")->as_double();
    EXPECT_LT(eta, previous_eta) << line;
    previous_eta = eta;
  }
  EXPECT_EQ(lines, 4);  // steps 1, 10, 20, 30
  EXPECT_EQ(previous_eta, 0);
}

TEST(TrainLogLineGpu, TheTableNamesThisGpuOrTheLogSaysHowToSetItsPeak) {
  SKIP_WITHOUT_GPU();
  const std::string dir =
      (fs::path(::testing::TempDir()) / "switchyard_progress_gpu_table").string();
  fs::remove_all(dir);
  std::ostringstream log;
  ASSERT_TRUE(train(gpu_run("train { steps: 2 }"), {.run_dir = dir}, log).ok()) << log.str();
  const PeakFlops peak = device_peak_flops(Device::cuda(0), 0);
  if (peak.tflops > 0) {
    EXPECT_TRUE(absl::StrContains(log.str(), "(table)")) << log.str();
    EXPECT_TRUE(absl::StrContains(log.str(), " tok/s | MFU ")) << log.str();
  } else {
    EXPECT_TRUE(absl::StrContains(log.str(), "set logging { peak_tflops: N }")) << log.str();
    EXPECT_FALSE(absl::StrContains(log.str(), " tok/s | MFU ")) << log.str();
  }
}

}  // namespace
}  // namespace sy
