// The grid's arithmetic and its validation, without MPI: layouts for every shape and the
// error a user gets for a layout that cannot work.
#include "parallel/process_grid.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sy {
namespace {

TEST(GridLayoutTest, TwoByTwo) {
  absl::StatusOr<GridLayout> layout = GridLayout::create(4, 2, 8);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->data_parallel, 2);
  EXPECT_EQ(layout->expert_parallel, 2);
  EXPECT_EQ(layout->experts_per_rank(), 4);
  // EP groups are consecutive ranks; EDP groups are the ranks with the same ep_rank.
  EXPECT_EQ(layout->ep_group(0), (std::vector<int>{0, 1}));
  EXPECT_EQ(layout->ep_group(3), (std::vector<int>{2, 3}));
  EXPECT_EQ(layout->edp_group(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(layout->edp_group(3), (std::vector<int>{1, 3}));
  const int ep_rank[] = {0, 1, 0, 1}, dp_rank[] = {0, 0, 1, 1}, first[] = {0, 4, 0, 4};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(layout->ep_rank(r), ep_rank[r]) << "rank " << r;
    EXPECT_EQ(layout->dp_rank(r), dp_rank[r]) << "rank " << r;
    EXPECT_EQ(layout->first_expert(r), first[r]) << "rank " << r;
    EXPECT_EQ(layout->end_expert(r), first[r] + 4) << "rank " << r;
  }
  for (int e = 0; e < 8; ++e) EXPECT_EQ(layout->expert_owner(e), e / 4) << "expert " << e;
}

TEST(GridLayoutTest, PureDataParallelAndPureExpertParallel) {
  absl::StatusOr<GridLayout> dp = GridLayout::create(4, 1, 6);
  ASSERT_TRUE(dp.ok()) << dp.status();
  EXPECT_EQ(dp->data_parallel, 4);
  EXPECT_EQ(dp->ep_group(2), (std::vector<int>{2}));
  EXPECT_EQ(dp->edp_group(2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(dp->first_expert(3), 0);
  EXPECT_EQ(dp->end_expert(3), 6);

  absl::StatusOr<GridLayout> ep = GridLayout::create(4, 4, 8);
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->data_parallel, 1);
  EXPECT_EQ(ep->ep_group(2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(ep->edp_group(2), (std::vector<int>{2}));
  EXPECT_EQ(ep->first_expert(3), 6);
  EXPECT_EQ(ep->end_expert(3), 8);

  absl::StatusOr<GridLayout> dense = GridLayout::create(2, 1, 0);
  ASSERT_TRUE(dense.ok()) << dense.status();
  EXPECT_EQ(dense->experts_per_rank(), 0);
}

TEST(GridLayoutTest, EveryRankOwnsEachExpertOncePerEpGroup) {
  for (auto [world, ep, experts] :
       {std::tuple{8, 4, 16}, std::tuple{6, 3, 3}, std::tuple{8, 2, 2}}) {
    absl::StatusOr<GridLayout> layout = GridLayout::create(world, ep, experts);
    ASSERT_TRUE(layout.ok()) << layout.status();
    for (int r = 0; r < world; ++r) {
      std::vector<int> owned(experts, 0);
      for (int member : layout->ep_group(r)) {
        EXPECT_EQ(layout->dp_rank(member), layout->dp_rank(r));
        for (int e = layout->first_expert(member); e < layout->end_expert(member); ++e) ++owned[e];
      }
      EXPECT_EQ(owned, std::vector<int>(experts, 1)) << "EP group of rank " << r;
      for (int member : layout->edp_group(r)) {
        EXPECT_EQ(layout->first_expert(member), layout->first_expert(r));
      }
    }
  }
}

void expect_error(int world, int ep, int experts, const std::vector<std::string>& needles) {
  absl::StatusOr<GridLayout> layout = GridLayout::create(world, ep, experts);
  ASSERT_FALSE(layout.ok()) << "world " << world << " ep " << ep << " experts " << experts;
  EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
  std::string message(layout.status().message());
  for (const std::string& needle : needles) {
    EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
  }
}

TEST(GridLayoutTest, ClearErrorsForLayoutsThatCannotWork) {
  expect_error(6, 4, 8,
               {"world size 6 is not divisible by parallel.expert_parallel_size = 4",
                "launch a multiple of 4 processes"});
  expect_error(4, 4, 6,
               {"moe.num_experts = 6 is not divisible by parallel.expert_parallel_size = 4",
                "same number of experts"});
  expect_error(4, 0, 8, {"parallel.expert_parallel_size = 0 must be at least 1"});
  expect_error(4, -2, 8, {"parallel.expert_parallel_size = -2 must be at least 1"});
  expect_error(4, 2, 0, {"no routed experts", "set expert_parallel_size to 1"});
  expect_error(4, 1, -1, {"moe.num_experts = -1 is negative"});
  expect_error(0, 1, 8, {"world size 0"});
}

}  // namespace
}  // namespace sy
