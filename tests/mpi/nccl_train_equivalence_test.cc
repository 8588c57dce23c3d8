// Training on several GPUs (one per rank, tensors over NCCL) against one GPU: the same global
// batch gives the same losses and weights with data parallelism (DP=2) and with expert
// parallelism (EP=2) in f32, to float summation order; bf16 follows within bf16 tolerances;
// ZeRO-1 equals plain data parallelism bit for bit; a resumed run equals an uninterrupted one
// bit for bit. The runs go through train() with an MPI group, as the binary does: train
// chooses each rank's GPU and builds the NCCL communicators itself.
//
// The GPU tests skip unless every rank of the job has a GPU of its own (mpirun -np 2 on a
// 2-GPU machine: bench/device_run.sh's nccl stage). The device choice runs everywhere: on a
// machine without GPUs DEVICE_AUTO trains on the CPU and DEVICE_CUDA is an error on every
// rank; with more ranks than GPUs, two ranks on one GPU is an error on every rank.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/mpi/train_runs.h"
#include "trainer/train.h"

namespace sy {
namespace {
namespace fs = std::filesystem;
using testing::expect_same;
using testing::mpi_world;
using testing::read_run;
using testing::run_dir;
using testing::RunResult;
using testing::train_on;

constexpr int kRanks = 2;        // the layouts: DP=2 (data 2 x expert 1) and EP=2 (1 x 2)
constexpr int kGlobalBatch = 8;  // sequences per micro-batch over all ranks
constexpr int kSteps = 4;

// Every term on, as in train_equivalence_test, with the widths of the GPU model tests. AdamW
// moves a weight by about lr whatever its gradient's size, so a gradient that cancels to
// nearly 0 turns a summation-order difference into a visible one; eps 1e-6 damps those
// (this config on the CPU, DP=2 and EP=2 against one process: at most 1.6e-6 apart).
switchyard::Experiment config_for(int world, int ep, int zero_stage, const std::string& device,
                                  const std::string& precision) {
  return testing::equivalence_config(world, ep, zero_stage, kGlobalBatch,
                                     "model { d_model: 32 dense_ffn_hidden: 64 } "
                                     "moe { expert_hidden: 32 } "
                                     "optimizer { lr: 3e-3 eps: 1e-6 } "
                                     "device: " + device + " precision: " + precision);
}

switchyard::Experiment gpu_config(int world, int ep, int zero, const std::string& precision) {
  return config_for(world, ep, zero, "DEVICE_CUDA", precision);
}

// Rank 0's log names the device and precision every rank trained with.
void expect_device(const std::string& log, const std::string& device_and_dtype) {
  if (mpi_world().rank() != 0) return;
  EXPECT_TRUE(absl::StrContains(log, "| device " + device_and_dtype + " |")) << log;
}

// The relative L2 distance of each weight tensor, for bf16 runs, whose elements can differ
// by a rounding of an update here and there.
void expect_close_l2(const RunResult& a, const RunResult& b, double loss_rtol, double weight_rel,
                     const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], b.losses[i], loss_rtol * std::fabs(b.losses[i]))
        << what << ": loss of step " << i + 1;
  ASSERT_EQ(a.weights.size(), b.weights.size()) << what;
  for (const auto& [name, t] : b.weights) {
    ASSERT_TRUE(a.weights.count(name)) << what << ": " << name;
    const std::vector<float> x = a.weights.at(name).to_f32_vector(), y = t.to_f32_vector();
    ASSERT_EQ(x.size(), y.size()) << what << ": " << name;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      diff += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      norm += double(y[i]) * y[i];
    }
    EXPECT_LE(std::sqrt(diff), weight_rel * std::sqrt(norm) + 1e-12)
        << what << ": " << name << " relative L2 distance " << std::sqrt(diff / norm);
  }
}

class NcclTrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!testing::gpu_per_rank(&why)) GTEST_SKIP() << why;
  }

  // The single-GPU reference run of `precision` (rank 0 trains it, the others wait).
  RunResult reference(const std::string& precision) {
    std::string log;
    const std::string dir = train_on(1, gpu_config(1, 1, 0, precision), "gpu_reference_" + precision, &log);
    expect_device(log, precision == "PRECISION_F32" ? "cuda:0 f32" : "cuda:0 bf16");
    return mpi_world().rank() == 0 ? read_run(dir, 1, kSteps) : RunResult{};
  }
};

TEST_F(NcclTrainTest, DataAndExpertParallelF32MatchOneGpu) {
  const RunResult one = reference("PRECISION_F32");
  // f32 on every path (GEMMs without TF32): only the summation order differs between layouts
  // (split batches, NCCL sums), over 4 AdamW steps of lr 3e-3: 1e-4 relative, 2e-5 absolute
  // (a gradient summed over half the batch would be off by far more).
  for (const int ep : {1, 2}) {
    const std::string name = ep == 1 ? "gpu_f32_dp2" : "gpu_f32_ep2";
    std::string log;
    const std::string dir = train_on(kRanks, gpu_config(kRanks, ep, 0, "PRECISION_F32"), name, &log);
    expect_device(log, "cuda:0 f32");
    if (mpi_world().rank() == 0) {
      EXPECT_TRUE(absl::StrContains(log, ep == 1 ? "grid: world 2 = data 2 x expert 1"
                                                 : "grid: world 2 = data 1 x expert 2"))
          << log;
      expect_same(read_run(dir, ep, kSteps), one, 1e-4, 2e-5, name + " against one GPU");
    }
  }
}

TEST_F(NcclTrainTest, ExpertParallelBf16FollowsOneGpu) {
  const RunResult one = reference("PRECISION_BF16");
  std::string log;
  const std::string dir = train_on(kRanks, gpu_config(kRanks, 2, 0, "PRECISION_BF16"), "gpu_bf16_ep2", &log);
  expect_device(log, "cuda:0 bf16");
  if (mpi_world().rank() == 0) {
    // bf16 activations travel between the ranks; a GEMM of other shape may round a value the
    // other way, and AdamW turns a tiny gradient's sign into a full step: per tensor, not per
    // element.
    expect_close_l2(read_run(dir, 2, kSteps), one, 2e-2, 8e-2, "bf16 EP=2 against one GPU");
  }
}

TEST_F(NcclTrainTest, ZeroOneOnGpusEqualsPlainDataParallel) {
  // The optimizer state sharded over the 2 ranks, the owners' updates broadcast over NCCL.
  const std::string plain = train_on(kRanks, gpu_config(kRanks, 1, 0, "PRECISION_F32"), "gpu_plain");
  const std::string zero = train_on(kRanks, gpu_config(kRanks, 1, 1, "PRECISION_F32"), "gpu_zero1");
  if (mpi_world().rank() == 0) {
    expect_same(read_run(zero, 1, kSteps), read_run(plain, 1, kSteps), 0, 0, "ZeRO-1 vs plain");
  }
}

TEST_F(NcclTrainTest, ResumeOnGpusIsBitIdentical) {
  // Checkpoints written from the GPUs (experts per EP rank, optimizer shards) and loaded back.
  Communicator& world = mpi_world();
  auto config = gpu_config(kRanks, 2, 1, "PRECISION_F32");
  config.mutable_checkpoint()->set_interval(2);
  config.mutable_checkpoint()->set_keep_last(2);
  const std::string full = train_on(kRanks, config, "gpu_resume_full");
  const std::string resumed = run_dir("gpu_resume_resumed");
  if (world.rank() == 0) {
    fs::remove_all(resumed);
    fs::create_directories(fs::path(resumed) / "checkpoints");
    fs::copy(fs::path(full) / "checkpoints" / "step_00000002",
             fs::path(resumed) / "checkpoints" / "step_00000002");
    std::ofstream(fs::path(resumed) / "checkpoints" / "latest") << "step_00000002\n";
  }
  world.barrier();
  const bool member = world.rank() < kRanks;
  auto group = world.split(member ? 0 : 1, world.rank());
  if (member) {
    std::ostringstream log;
    absl::Status s = train(config, {.run_dir = resumed, .resume = true}, log, group.get());
    EXPECT_TRUE(s.ok()) << s;
  }
  world.barrier();
  if (world.rank() == 0) {
    RunResult a = read_run(full, 2, kSteps), b = read_run(resumed, 2, kSteps);
    a.losses.erase(a.losses.begin(), a.losses.begin() + 2);  // the resumed run logs steps 3, 4
    expect_same(b, a, 0, 0, "resumed vs uninterrupted on GPUs");
  }
}

// DEVICE_AUTO on two ranks: their GPUs where each has one (bf16 by PRECISION_AUTO), the CPU
// on a machine without GPUs.
TEST(NcclTrainChoice, AutoTakesTheGpusWhenEveryRankHasOne) {
  const int gpus = testing::fewest_gpus_on_any_rank();
  if (gpus == 1) GTEST_SKIP() << "one GPU per rank's view: two ranks would share it";
  auto config = config_for(kRanks, 2, 0, "DEVICE_AUTO", "PRECISION_AUTO");
  config.mutable_train()->set_steps(1);
  std::string log;
  train_on(kRanks, config, "auto", &log);
  expect_device(log, gpus >= kRanks ? "cuda:0 bf16" : "cpu f32");
}

// DEVICE_CUDA where no rank sees a GPU: every rank refuses with the same message, naming the
// ranks (instead of some ranks waiting for others that failed).
TEST(NcclTrainChoice, CudaWithoutGpusIsTheSameErrorOnEveryRank) {
  if (testing::fewest_gpus_on_any_rank() > 0) GTEST_SKIP() << "every rank sees a GPU";
  Communicator& world = mpi_world();
  std::ostringstream log;
  absl::Status s = train(gpu_config(world.size(), 1, 0, "PRECISION_F32"),
                         {.run_dir = run_dir("cuda_without_gpus")}, log, &world);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "DEVICE_CUDA")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "ranks 0 (host ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "see no GPU")) << s;
  const std::vector<std::string> all = world.all_gather_host(std::string(s.message()));
  for (const std::string& m : all) EXPECT_EQ(m, all[0]) << "every rank reports the same";
}

// More ranks than GPUs (mpirun -np 4 on a 2-GPU machine): two ranks would share a GPU.
TEST(NcclTrainChoice, MoreRanksThanGpusIsTheSameErrorOnEveryRank) {
  const int gpus = testing::fewest_gpus_on_any_rank();
  Communicator& world = mpi_world();
  if (gpus == 0 || gpus >= world.size()) GTEST_SKIP() << "needs fewer GPUs than ranks, not none";
  for (const std::string device : {"DEVICE_CUDA", "DEVICE_AUTO"}) {
    std::ostringstream log;
    absl::Status s = train(config_for(world.size(), 1, 0, device, "PRECISION_AUTO"),
                           {.run_dir = run_dir("shared_gpu")}, log, &world);
    ASSERT_FALSE(s.ok()) << device;
    EXPECT_TRUE(absl::StrContains(s.message(), "would share one GPU")) << s;
    const std::vector<std::string> all = world.all_gather_host(std::string(s.message()));
    for (const std::string& m : all) EXPECT_EQ(m, all[0]) << "every rank reports the same";
  }
}

}  // namespace
}  // namespace sy
