// Rank discovery from each launcher's variables, including broken environments, and the
// banner line.
#include "parallel/rank_env.h"

#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sy {
namespace {

using Env = std::map<std::string, std::string>;

absl::StatusOr<RankEnv> parse(const Env& env) {
  return rank_env_from([&](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  });
}

void expect_error(const Env& env, const std::vector<std::string>& needles) {
  absl::StatusOr<RankEnv> result = parse(env);
  ASSERT_FALSE(result.ok()) << "parsed as rank " << result->rank << " of " << result->size;
  std::string message(result.status().message());
  for (const std::string& needle : needles) {
    EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
  }
}

TEST(RankEnvTest, PlainProcessIsRankZeroOfOne) {
  absl::StatusOr<RankEnv> env = parse({{"HOME", "/root"}, {"SLURM_JOB_ID", "77"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSingle);
  EXPECT_EQ(env->rank, 0);
  EXPECT_EQ(env->size, 1);
  EXPECT_EQ(env->local_rank, 0);
}

TEST(RankEnvTest, OpenMpi) {
  absl::StatusOr<RankEnv> env = parse({{"OMPI_COMM_WORLD_RANK", "5"},
                                       {"OMPI_COMM_WORLD_SIZE", "8"},
                                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->rank, 5);
  EXPECT_EQ(env->size, 8);
  EXPECT_EQ(env->local_rank, 1);
}

TEST(RankEnvTest, Slurm) {
  absl::StatusOr<RankEnv> env =
      parse({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "3"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->size, 16);
  EXPECT_EQ(env->local_rank, 3);
}

TEST(RankEnvTest, OpenMpiWinsOverSlurm) {
  // mpirun inside an sbatch allocation: the batch step's Slurm variables are still there.
  absl::StatusOr<RankEnv> env = parse({{"SLURM_PROCID", "0"},
                                       {"SLURM_NTASKS", "1"},
                                       {"SLURM_LOCALID", "0"},
                                       {"OMPI_COMM_WORLD_RANK", "2"},
                                       {"OMPI_COMM_WORLD_SIZE", "4"},
                                       {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->rank, 2);
  EXPECT_EQ(env->size, 4);
}

TEST(RankEnvTest, MalformedValuesNameTheVariable) {
  Env ompi = {{"OMPI_COMM_WORLD_RANK", "1"},
              {"OMPI_COMM_WORLD_SIZE", "2"},
              {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}};
  Env bad = ompi;
  bad["OMPI_COMM_WORLD_RANK"] = "one";
  expect_error(bad, {"OMPI_COMM_WORLD_RANK='one' is not a non-negative integer", "mpirun"});
  bad = ompi;
  bad["OMPI_COMM_WORLD_SIZE"] = "2x";
  expect_error(bad, {"OMPI_COMM_WORLD_SIZE='2x'"});
  bad = ompi;
  bad["OMPI_COMM_WORLD_SIZE"] = "";
  expect_error(bad, {"OMPI_COMM_WORLD_SIZE=''"});
  bad = ompi;
  bad["OMPI_COMM_WORLD_LOCAL_RANK"] = "-1";
  expect_error(bad, {"OMPI_COMM_WORLD_LOCAL_RANK='-1' is not a non-negative integer"});
  bad = ompi;
  bad["OMPI_COMM_WORLD_RANK"] = "99999999999";
  expect_error(bad, {"OMPI_COMM_WORLD_RANK='99999999999'"});
  bad = ompi;
  bad.erase("OMPI_COMM_WORLD_LOCAL_RANK");
  expect_error(bad, {"OMPI_COMM_WORLD_LOCAL_RANK is not set, but OMPI_COMM_WORLD_RANK is"});
  bad = ompi;
  bad.erase("OMPI_COMM_WORLD_RANK");
  expect_error(bad, {"OMPI_COMM_WORLD_RANK is not set"});

  Env slurm = {{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}};
  expect_error(slurm, {"SLURM_PROCID=4 is not below SLURM_NTASKS=4"});
  slurm["SLURM_PROCID"] = "0";
  slurm["SLURM_NTASKS"] = "0";
  expect_error(slurm, {"SLURM_NTASKS=0: a job needs at least one process"});
  slurm["SLURM_NTASKS"] = "4";
  slurm["SLURM_LOCALID"] = "4";
  expect_error(slurm, {"SLURM_LOCALID=4 is not below SLURM_NTASKS=4"});
  slurm["SLURM_LOCALID"] = "zero";
  expect_error(slurm, {"SLURM_LOCALID='zero'", "srun"});
}

TEST(RankEnvTest, MismatchWithTheMpiWorldIsAnError) {
  // switchyard started straight from an sbatch script: Slurm says 8 tasks, MPI sees one.
  RankEnv env{Launcher::kSlurm, 0, 8, 0};
  absl::Status status = check_rank_env_matches_world(env, 0, 1);
  ASSERT_FALSE(status.ok());
  std::string message(status.message());
  EXPECT_NE(message.find("(Slurm) says this is rank 0 of 8, but MPI started rank 0 of 1"),
            std::string::npos)
      << message;
  EXPECT_FALSE(check_rank_env_matches_world(env, 3, 8).ok());
  EXPECT_TRUE(check_rank_env_matches_world(RankEnv{Launcher::kSlurm, 3, 8, 3}, 3, 8).ok());
}

TEST(RankEnvTest, BannerLine) {
  EXPECT_EQ(banner_line(RankEnv{Launcher::kOpenMpi, 1, 4, 1}, "node07", "cpu"),
            "rank 1/4 | local 1 | host node07 | device cpu");
  EXPECT_EQ(banner_line(RankEnv{}, "vm", "cuda:0 (NVIDIA H200)"),
            "rank 0/1 | local 0 | host vm | device cuda:0 (NVIDIA H200)");
  EXPECT_FALSE(host_name().empty());
}

}  // namespace
}  // namespace sy
