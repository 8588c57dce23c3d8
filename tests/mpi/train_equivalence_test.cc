// The multi-rank contract: the same global batch trained for several steps gives the same
// losses and the same final weights for every (data, expert) parallel layout that fits the
// job — (1,1), (2,1), (1,2), (2,2) — with MTP and every load-balancing term on; and ZeRO-1
// gives exactly what plain data parallelism gives. The reference is a single-process run
// that every rank makes by itself.
#include <filesystem>
#include <fstream>
#include <sstream>

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
using testing::run_dir;
using testing::RunResult;

constexpr int kGlobalBatch = 4;  // sequences per micro-batch over all ranks
constexpr double kLr = 1e-2;      // the config's learning rate
constexpr int kSteps = 4;         // the optimizer steps of testing::equivalence_config

// How far a weight may move apart between two summation orders. AdamW normalises each step
// to about lr, whatever the gradient's size, so an element whose gradient is a near-cancelling
// sum (a router or wk column that the batch barely touches) has a tiny gradient with a large
// relative error, and that error comes through at full step size: on some CPUs' BLAS kernels
// one element of a tensor lands ~5e-6 apart after 4 steps, 1e-4 of the distance AdamW moves a
// weight. The bound is a fraction of that distance: a wrong reduction, a missed all-reduce or a
// misplaced expert shard moves weights by a whole step (1e-2), far outside it.
constexpr double kWeightAtol = 1e-3 * kLr * kSteps;

switchyard::Experiment config_for(int world, int ep, int zero_stage) {
  return testing::equivalence_config(world, ep, zero_stage, kGlobalBatch, R"pb(
    device: DEVICE_CPU
    model { d_model: 16 dense_ffn_hidden: 24 }
    moe { expert_hidden: 12 }
    optimizer { lr: 1e-2 }
  )pb");
}

// Trains the test config for this layout on the first `world_size` ranks of the job.
std::string train_on(int world_size, int ep, int zero, const std::string& name) {
  return testing::train_on(world_size, config_for(world_size, ep, zero), name);
}

RunResult read_run(const std::string& dir, int ep) { return testing::read_run(dir, ep, 4); }

TEST(TrainEquivalence, EveryLayoutMatchesOneProcess) {
  Communicator& world = mpi_world();
  // The single-process reference, made by every rank in a directory of its own.
  const std::string ref_dir = run_dir(absl::StrCat("reference_rank", world.rank()));
  fs::remove_all(ref_dir);
  {
    std::ostringstream log;
    ASSERT_TRUE(train(config_for(1, 1, 0), {.run_dir = ref_dir}, log, nullptr).ok());
  }
  const RunResult reference = read_run(ref_dir, 1);
  ASSERT_EQ(reference.losses.size(), 4u);

  // (data, expert) layouts that fit this job. fp32 with a different summation order per
  // layout (split GEMMs, all-reduces), over 4 AdamW steps: losses agree to 1e-5 relative,
  // weights to 1e-5 relative or kWeightAtol.
  struct Layout {
    int dp, ep;
  };
  for (Layout l : {Layout{2, 1}, Layout{1, 2}, Layout{2, 2}, Layout{4, 1}, Layout{1, 4}}) {
    const int size = l.dp * l.ep;
    if (size > world.size()) continue;
    const std::string name = absl::StrCat(l.dp, "x", l.ep);
    const std::string dir = train_on(size, l.ep, 0, name);
    if (world.rank() == 0) {
      expect_same(read_run(dir, l.ep), reference, 1e-5, 1e-6, "layout (dp, ep) = (" + name + ")",
                  kWeightAtol);
    }
  }
}

TEST(TrainEquivalence, ZeroOneEqualsPlainDataParallel) {
  Communicator& world = mpi_world();
  const int size = world.size();
  const int ep = size >= 4 ? 2 : 1;  // with 4 ranks, shard expert state over the EDP group too
  const std::string plain = train_on(size, ep, 0, "plain");
  const std::string zero = train_on(size, ep, 1, "zero1");
  if (world.rank() == 0) {
    // The same arithmetic on the same numbers, only on fewer ranks: bit for bit.
    expect_same(read_run(zero, ep), read_run(plain, ep), 0, 0, "ZeRO-1 vs plain");
  }
}

// AdamW's moments stored in bf16 (optimizer.moment_dtype): ZeRO-1 still equals plain data
// parallelism bit for bit, and the job's layout stays close to one process storing them alike. A
// layout's other summation order can move a moment across a bf16 rounding boundary (one
// 1/256 step of it, which moves that step's update by up to lr/256), so the bound is looser
// than the fp32 test's: lr/256 for each step.
TEST(TrainEquivalence, Bf16MomentsKeepZeroOneExactAndTheJobsLayoutClose) {
  Communicator& world = mpi_world();
  auto bf16 = [](switchyard::Experiment c) {
    c.mutable_optimizer()->set_moment_dtype(switchyard::OptimizerConfig::MOMENT_BF16);
    return c;
  };
  const std::string ref_dir = run_dir(absl::StrCat("bf16_moments_reference_rank", world.rank()));
  fs::remove_all(ref_dir);
  {
    std::ostringstream log;
    ASSERT_TRUE(train(bf16(config_for(1, 1, 0)), {.run_dir = ref_dir}, log, nullptr).ok());
  }
  const RunResult reference = read_run(ref_dir, 1);
  const int size = world.size();
  const int ep = size >= 4 ? 2 : 1;
  const std::string plain =
      testing::train_on(size, bf16(config_for(size, ep, 0)), "bf16_moments_plain");
  const std::string zero =
      testing::train_on(size, bf16(config_for(size, ep, 1)), "bf16_moments_zero1");
  if (world.rank() == 0) {
    expect_same(read_run(zero, ep), read_run(plain, ep), 0, 0, "bf16 moments: ZeRO-1 vs plain");
    expect_same(read_run(plain, ep), reference, 1e-4, 1e-5, "bf16 moments: layout vs one process",
                kLr * kSteps / 256);
  }
}

TEST(TrainMultiRank, ResumeWithTheSameLayoutIsBitIdentical) {
  Communicator& world = mpi_world();
  const int size = world.size();
  const int ep = size >= 4 ? 2 : size;
  auto config = config_for(size, ep, 1);
  config.mutable_checkpoint()->set_interval(2);
  config.mutable_checkpoint()->set_keep_last(2);
  const std::string full = run_dir("resume_full"), resumed = run_dir("resume_resumed");
  if (world.rank() == 0) {
    fs::remove_all(full);
    fs::remove_all(resumed);
  }
  world.barrier();
  std::ostringstream log;
  ASSERT_TRUE(train(config, {.run_dir = full}, log, &world).ok());
  if (world.rank() == 0) {
    fs::create_directories(fs::path(resumed) / "checkpoints");
    fs::copy(fs::path(full) / "checkpoints" / "step_00000002",
             fs::path(resumed) / "checkpoints" / "step_00000002");
    std::ofstream(fs::path(resumed) / "checkpoints" / "latest") << "step_00000002\n";
  }
  world.barrier();
  ASSERT_TRUE(train(config, {.run_dir = resumed, .resume = true}, log, &world).ok());
  if (world.rank() == 0) {
    RunResult a = read_run(full, ep), b = read_run(resumed, ep);
    a.losses.erase(a.losses.begin(), a.losses.begin() + 2);  // the resumed run logs steps 3, 4
    expect_same(b, a, 0, 0, "resumed vs uninterrupted");
  }
  // Another layout picks up these shards too (tests/mpi/reshard_test.cc compares what it
  // trains): here, one process.
  if (size >= 2) {
    auto one = world.split(world.rank() == 0 ? 0 : 1, world.rank());
    if (world.rank() == 0) {
      absl::Status s =
          train(config_for(1, 1, 1), {.run_dir = resumed, .resume = true}, log, one.get());
      EXPECT_TRUE(s.ok()) << s;
    }
  }
  world.barrier();
}

TEST(TrainMultiRank, RanksStartedWithDifferentConfigsAllRefuseToStart) {
  Communicator& world = mpi_world();
  auto config = config_for(world.size(), 1, 0);
  if (world.rank() == world.size() - 1) config.mutable_optimizer()->set_lr(0.5);
  std::ostringstream log;
  absl::Status s = train(config, {.run_dir = run_dir("mismatch")}, log, &world);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "resolved config")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), std::to_string(world.size() - 1))) << s;
}

}  // namespace
}  // namespace sy
