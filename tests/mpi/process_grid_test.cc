// ProcessGrid on a real world: the EP and EDP groups hold exactly the ranks the layout says,
// in its order, and a bad layout fails alike on every rank. Also the launcher's environment
// as mpirun sets it.
#include "parallel/process_grid.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/rank_env.h"
#include "tests/mpi/mpi_testing.h"

namespace sy {
namespace {

using testing::mpi_world;

std::vector<std::string> strings_of(const std::vector<int>& ranks) {
  std::vector<std::string> out;
  for (int r : ranks) out.push_back(std::to_string(r));
  return out;
}

// Every expert-parallel size that divides the world: 1×N, N×1 and the ones between (2×2).
TEST(ProcessGridTest, GroupsMatchTheLayoutForEveryExpertParallelSize) {
  Communicator& world = mpi_world();
  const int n = world.size(), me = world.rank();
  const int num_experts = 8;
  for (int ep = 1; ep <= n; ++ep) {
    if (n % ep != 0) continue;
    SCOPED_TRACE("data " + std::to_string(n / ep) + " x expert " + std::to_string(ep));
    absl::StatusOr<ProcessGrid> grid = ProcessGrid::create(world, ep, num_experts);
    ASSERT_TRUE(grid.ok()) << grid.status();
    const GridLayout& layout = grid->layout();
    EXPECT_EQ(layout.data_parallel * layout.expert_parallel, n);
    EXPECT_EQ(grid->ep_rank(), me % ep);
    EXPECT_EQ(grid->dp_rank(), me / ep);
    EXPECT_EQ(grid->ep().size(), ep);
    EXPECT_EQ(grid->ep().rank(), me % ep);
    EXPECT_EQ(grid->edp().size(), n / ep);
    EXPECT_EQ(grid->edp().rank(), me / ep);

    // Who is really in each group, asked over the group itself.
    EXPECT_EQ(grid->ep().all_gather_host(std::to_string(me)), strings_of(layout.ep_group(me)));
    EXPECT_EQ(grid->edp().all_gather_host(std::to_string(me)), strings_of(layout.edp_group(me)));

    // The EP group's ranks own disjoint expert ranges that cover every expert in order.
    EXPECT_EQ(grid->num_local_experts(), num_experts / ep);
    Tensor range = Tensor::from_i32({grid->first_expert(), grid->end_expert()}, {1, 2});
    Tensor ranges = Tensor::empty({ep, 2}, DType::kI32);
    grid->ep().all_gather(ranges, range);
    std::vector<int32_t> r = ranges.to_i32_vector();
    for (int i = 0; i < ep; ++i) {
      EXPECT_EQ(r[2 * i], i * num_experts / ep) << "EP rank " << i;
      EXPECT_EQ(r[2 * i + 1], (i + 1) * num_experts / ep) << "EP rank " << i;
      for (int e = r[2 * i]; e < r[2 * i + 1]; ++e) EXPECT_EQ(layout.expert_owner(e), i);
    }

    // Expert replicas sit in the EDP group: the same range on every member.
    Tensor same = range.clone();
    grid->edp().all_reduce(same, ReduceOp::kMax);
    EXPECT_EQ(same.to_i32_vector(), range.to_i32_vector());
  }
}

TEST(ProcessGridTest, BadLayoutFailsAlikeOnEveryRank) {
  Communicator& world = mpi_world();
  const int n = world.size();
  for (auto [ep, experts] :
       {std::pair{n + 1, 8 * (n + 1)}, std::pair{n, 8 * n + 1}, std::pair{0, 8}}) {
    absl::StatusOr<ProcessGrid> grid = ProcessGrid::create(world, ep, experts);
    ASSERT_FALSE(grid.ok()) << "ep " << ep << " experts " << experts;
    std::string message(grid.status().message());
    for (const std::string& m : world.all_gather_host(message)) EXPECT_EQ(m, message);
  }
}

TEST(RankEnvTest, MpirunEnvironmentMatchesTheWorld) {
  Communicator& world = mpi_world();
  absl::StatusOr<RankEnv> env = rank_env_from_environment();
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env->rank, world.rank());
  EXPECT_EQ(env->size, world.size());
  EXPECT_EQ(env->local_rank, world.rank());  // one machine
  EXPECT_TRUE(check_rank_env_matches_world(*env, world.rank(), world.size()).ok());
  EXPECT_EQ(banner_line(*env, "vm", "cpu"),
            "rank " + std::to_string(world.rank()) + "/" + std::to_string(world.size()) +
                " | local " + std::to_string(world.rank()) + " | host vm | device cpu");
}

}  // namespace
}  // namespace sy
