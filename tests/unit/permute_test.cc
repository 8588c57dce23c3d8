// Token permutation by expert: the plan against a naive stable grouping (with and without
// capacity), hand-built row orders and drops, round trips through permute and unpermute, the
// backwards (dx, dy, dweights) against finite differences, and the capacity formula.
#include "kernels/permute.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/testing.h"

namespace sy {
namespace {

using testing::all_close;
using testing::grad_check;
using testing::random_normal;
using testing::random_ints;
using testing::rng_for_test;
using testing::weighted_sum;

std::vector<int64_t> i64_values(const Tensor& t) {
  const Tensor h = t.to(Device::cpu());  // a copy: contiguous
  return std::vector<int64_t>(h.data<int64_t>(), h.data<int64_t>() + h.numel());
}

// Each token's k distinct experts, as topk would choose them.
Tensor random_routes(int64_t n, int k, int experts, std::mt19937_64& rng) {
  std::vector<int32_t> idx, all(experts);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    idx.insert(idx.end(), all.begin(), all.begin() + k);
  }
  return Tensor::from_i32(idx, {n, k});
}

// Naive plan: for each expert in turn, its slots in slot order, at most `capacity` of them.
std::vector<int32_t> reference_row_slot(const std::vector<int32_t>& idx, int experts,
                                        int64_t capacity) {
  std::vector<int32_t> rows;
  for (int e = 0; e < experts; ++e) {
    int64_t taken = 0;
    for (size_t s = 0; s < idx.size(); ++s) {
      if (idx[s] == e && (capacity < 0 || taken < capacity)) {
        rows.push_back(static_cast<int32_t>(s));
        ++taken;
      }
    }
  }
  return rows;
}

struct PermuteCase {
  int64_t n;
  int k, experts;
  int64_t d, capacity;
};

void PrintTo(const PermuteCase& c, std::ostream* os) {
  *os << "N" << c.n << "_k" << c.k << "_E" << c.experts << "_D" << c.d << "_cap"
      << (c.capacity < 0 ? std::string("none") : std::to_string(c.capacity));
}

std::string case_name(const ::testing::TestParamInfo<PermuteCase>& info) {
  return ::testing::PrintToString(info.param);
}

class PermuteTest : public ::testing::TestWithParam<PermuteCase> {};

TEST_P(PermuteTest, PlanGroupsSlotsByExpertInSlotOrder) {
  const PermuteCase c = GetParam();
  auto rng = rng_for_test();
  Tensor indices = random_routes(c.n, c.k, c.experts, rng);
  DispatchPlan plan = make_dispatch_plan(indices, c.experts, c.capacity);

  const std::vector<int32_t> idx = indices.to_i32_vector();
  const std::vector<int32_t> expected = reference_row_slot(idx, c.experts, c.capacity);
  EXPECT_EQ(plan.row_slot.to_i32_vector(), expected);
  EXPECT_EQ(plan.num_rows, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(plan.num_dropped(), c.n * c.k - plan.num_rows);

  std::vector<int32_t> slot_row(c.n * c.k, -1);
  for (size_t r = 0; r < expected.size(); ++r) slot_row[expected[r]] = static_cast<int32_t>(r);
  EXPECT_EQ(plan.slot_row.to_i32_vector(), slot_row);

  ASSERT_EQ(plan.expert_offsets.size(), static_cast<size_t>(c.experts + 1));
  EXPECT_EQ(plan.expert_offsets[0], 0);
  for (int e = 0; e < c.experts; ++e) {
    const int64_t routed = std::count(idx.begin(), idx.end(), e);
    EXPECT_EQ(plan.expert_counts[e], c.capacity < 0 ? routed : std::min(routed, c.capacity));
    EXPECT_EQ(plan.expert_offsets[e + 1], plan.expert_offsets[e] + plan.expert_counts[e]);
  }
  EXPECT_EQ(plan.expert_offsets[c.experts], plan.num_rows);
}

TEST_P(PermuteTest, UnpermuteOfPermuteIsTheWeightedSumOfKeptSlots) {
  const PermuteCase c = GetParam();
  auto rng = rng_for_test();
  Tensor indices = random_routes(c.n, c.k, c.experts, rng);
  DispatchPlan plan = make_dispatch_plan(indices, c.experts, c.capacity);
  Tensor x = random_normal({c.n, c.d}, rng);
  Tensor weights = random_normal({c.n, c.k}, rng);
  Tensor rows = random_normal({plan.num_rows, c.d}, rng);  // overwritten
  Tensor back = random_normal({c.n, c.d}, rng);            // overwritten
  permute_forward(rows, x, plan);
  unpermute_forward(back, rows, weights, plan);

  const std::vector<float> xv = x.to_f32_vector(), w = weights.to_f32_vector();
  const std::vector<int32_t> row_slot = plan.row_slot.to_i32_vector();
  const std::vector<int32_t> slot_row = plan.slot_row.to_i32_vector();
  std::vector<double> gathered, combined(c.n * c.d, 0.0);
  for (int32_t s : row_slot) {
    for (int64_t j = 0; j < c.d; ++j) gathered.push_back(xv[(s / c.k) * c.d + j]);
  }
  for (int64_t s = 0; s < c.n * c.k; ++s) {
    if (slot_row[s] < 0) continue;
    for (int64_t j = 0; j < c.d; ++j)
      combined[(s / c.k) * c.d + j] += w[s] * xv[(s / c.k) * c.d + j];
  }
  EXPECT_TRUE(all_close(rows, gathered, 0, 0));
  EXPECT_TRUE(all_close(back, combined, 1e-6, 1e-6));
}

TEST_P(PermuteTest, BackwardsMatchFiniteDifferences) {
  const PermuteCase c = GetParam();
  auto rng = rng_for_test();
  Tensor indices = random_routes(c.n, c.k, c.experts, rng);
  DispatchPlan plan = make_dispatch_plan(indices, c.experts, c.capacity);

  // permute: d/dx of <permute(x), g_rows>.
  Tensor x = random_normal({c.n, c.d}, rng);
  Tensor g_rows = random_normal({plan.num_rows, c.d}, rng);
  Tensor dx = random_normal({c.n, c.d}, rng);  // written, not accumulated
  permute_backward(dx, g_rows, plan);
  Tensor rows = Tensor::empty({plan.num_rows, c.d});
  auto permute_loss = [&] {
    permute_forward(rows, x, plan);
    return weighted_sum(rows, g_rows);
  };
  EXPECT_TRUE(grad_check(permute_loss, x, dx, rng)) << "dx";

  // unpermute: d/dy and d/dweights of <unpermute(y, weights), g_tokens>.
  Tensor y = random_normal({plan.num_rows, c.d}, rng);
  Tensor weights = random_normal({c.n, c.k}, rng);
  Tensor g_tokens = random_normal({c.n, c.d}, rng);
  Tensor dy = random_normal(y.shape(), rng);              // written
  Tensor dweights = random_normal(weights.shape(), rng);  // written
  unpermute_backward(dy, dweights, g_tokens, y, weights, plan);
  Tensor tokens = Tensor::empty({c.n, c.d});
  auto unpermute_loss = [&] {
    unpermute_forward(tokens, y, weights, plan);
    return weighted_sum(tokens, g_tokens);
  };
  EXPECT_TRUE(grad_check(unpermute_loss, y, dy, rng)) << "dy";
  EXPECT_TRUE(grad_check(unpermute_loss, weights, dweights, rng)) << "dweights";

  const std::vector<int32_t> slot_row = plan.slot_row.to_i32_vector();
  const std::vector<float> dw = dweights.to_f32_vector();
  for (size_t s = 0; s < slot_row.size(); ++s) {
    if (slot_row[s] < 0) EXPECT_EQ(dw[s], 0.0f) << "dropped slot " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PermuteTest,
                         ::testing::Values(PermuteCase{1, 1, 4, 3, -1},   // a single token
                                           PermuteCase{1, 2, 4, 5, 1},    // N = 1 with capacity
                                           PermuteCase{6, 1, 3, 4, -1},   // k = 1
                                           PermuteCase{9, 2, 5, 7, -1},   // odd sizes
                                           PermuteCase{7, 2, 16, 3, -1},  // idle experts
                                           PermuteCase{16, 4, 8, 3, 5},   // overflow dropped
                                           PermuteCase{11, 3, 4, 2, 6},   // a few drops
                                           PermuteCase{5, 2, 6, 3, 0}),   // everything dropped
                         case_name);

// ---- hand-built plans ----------------------------------------------------------------------

// Slots 0..7 route to experts 2 0 | 0 1 | 2 0 | 0 2 (tokens 0..3, k = 2).
const std::vector<int32_t> kRoutes = {2, 0, 0, 1, 2, 0, 0, 2};

TEST(DispatchPlan, DroplessRowsAreGroupedByExpertInSlotOrder) {
  DispatchPlan plan = make_dispatch_plan(Tensor::from_i32(kRoutes, {4, 2}), 5, -1);
  EXPECT_EQ(plan.row_slot.to_i32_vector(), (std::vector<int32_t>{1, 2, 5, 6, 3, 0, 4, 7}));
  EXPECT_EQ(plan.slot_row.to_i32_vector(), (std::vector<int32_t>{5, 0, 1, 4, 6, 2, 3, 7}));
  // Experts 3 and 4 receive no tokens: empty groups at the end.
  EXPECT_EQ(plan.expert_counts, (std::vector<int64_t>{4, 1, 3, 0, 0}));
  EXPECT_EQ(plan.expert_offsets, (std::vector<int64_t>{0, 4, 5, 8, 8, 8}));
  EXPECT_EQ(plan.num_rows, 8);
  EXPECT_EQ(plan.num_dropped(), 0);

  // Token n's row is x[n]: the permuted rows carry tokens 0 1 2 3 | 1 | 0 2 3.
  Tensor x = Tensor::from_f32({10, 11, 12, 13}, {4, 1});
  Tensor out = Tensor::empty({8, 1});
  permute_forward(out, x, plan);
  EXPECT_EQ(out.to_f32_vector(), (std::vector<float>{10, 11, 12, 13, 11, 10, 12, 13}));
}

TEST(DispatchPlan, CapacityKeepsTheEarliestSlotsOfEachExpert) {
  DispatchPlan plan = make_dispatch_plan(Tensor::from_i32(kRoutes, {4, 2}), 3, 2);
  // Expert 0 keeps slots 1, 2 and drops 5, 6; expert 1 keeps 3; expert 2 keeps 0, 4, drops 7.
  EXPECT_EQ(plan.row_slot.to_i32_vector(), (std::vector<int32_t>{1, 2, 3, 0, 4}));
  EXPECT_EQ(plan.slot_row.to_i32_vector(), (std::vector<int32_t>{3, 0, 1, 2, 4, -1, -1, -1}));
  EXPECT_EQ(plan.expert_counts, (std::vector<int64_t>{2, 1, 2}));
  EXPECT_EQ(plan.expert_offsets, (std::vector<int64_t>{0, 2, 3, 5}));
  EXPECT_EQ(plan.num_dropped(), 3);

  // A dropped slot contributes nothing: token 3 keeps none of its slots.
  Tensor y = Tensor::from_f32({1, 2, 3, 4, 5}, {5, 1});
  Tensor w = Tensor::from_f32({0.5f, 0.25f, 1, 1, 1, 1, 1, 1}, {4, 2});
  Tensor out = Tensor::empty({4, 1});
  unpermute_forward(out, y, w, plan);
  EXPECT_EQ(out.to_f32_vector(), (std::vector<float>{0.5f * 4 + 0.25f * 1, 2 + 3, 5, 0}));
}

TEST(DispatchPlan, DroplessSingleChoiceRoundTripIsExact) {
  auto rng = rng_for_test();
  Tensor indices = random_routes(13, 1, 4, rng);
  DispatchPlan plan = make_dispatch_plan(indices, 4, -1);
  Tensor x = random_normal({13, 6}, rng);
  Tensor rows = Tensor::empty({13, 6});
  Tensor back = Tensor::empty({13, 6});
  Tensor ones = Tensor::empty({13, 1});
  ones.fill_(1.0f);
  permute_forward(rows, x, plan);
  unpermute_forward(back, rows, ones, plan);
  EXPECT_TRUE(all_close(back, x, 0, 0));
}

TEST(DispatchPlan, RejectsAnIndexOutsideTheExperts) {
  Tensor indices = Tensor::from_i32({0, 1, 3, 2}, {2, 2});
  EXPECT_DEATH(make_dispatch_plan(indices, 3, -1), "indices\\[1, 0\\] = 3 is not an expert");
  Tensor negative = Tensor::from_i32({0, -1}, {1, 2});
  EXPECT_DEATH(make_dispatch_plan(negative, 3, -1), "= -1 is not an expert");
}

// On the CPU start_dispatch_plan does all the work: the plan is ready, the same as
// make_dispatch_plan's, and finishing it changes nothing. A plan whose rows are not known yet
// (a GPU plan with a capacity, before finish_dispatch_plan) is refused by the permutes.
TEST(DispatchPlan, StartedOnTheCpuIsFinished) {
  auto rng = rng_for_test();
  const Tensor indices = random_ints({50, 2}, 0, 5, rng);
  const DispatchPlan made = make_dispatch_plan(indices, 5, 12);
  DispatchPlan started = start_dispatch_plan(indices, 5, 12);
  EXPECT_TRUE(started.ready());
  finish_dispatch_plan(started);
  EXPECT_EQ(started.num_rows, made.num_rows);
  EXPECT_EQ(started.expert_counts, made.expert_counts);
  EXPECT_EQ(started.expert_offsets, made.expert_offsets);
  EXPECT_EQ(started.slot_row.to_i32_vector(), made.slot_row.to_i32_vector());
  EXPECT_EQ(started.row_slot.to_i32_vector(), made.row_slot.to_i32_vector());

  DispatchPlan unknown = made;
  unknown.num_rows = -1;
  Tensor out = Tensor::empty({made.num_rows, 3});
  EXPECT_DEATH(permute_forward(out, random_normal({50, 3}, rng), unknown),
               "permute_forward: the dispatch plan has a capacity and is not finished");
}

// A plan started with PlanReadback::kNone (the decode path's) has the same device part as a
// full one, no host counts, and refuses to be finished; a plan with a capacity needs its counts
// on the host, so kNone is refused for it.
TEST(DispatchPlan, DeviceOnlyPlanHasTheDevicePartAndNoHostCounts) {
  auto rng = rng_for_test();
  const Tensor indices = random_ints({40, 2}, 0, 6, rng);
  const DispatchPlan full = make_dispatch_plan(indices, 6, -1);
  DispatchPlan quiet = start_dispatch_plan(indices, 6, -1, PlanReadback::kNone);
  EXPECT_TRUE(quiet.device_only);
  EXPECT_TRUE(quiet.expert_counts.empty());
  EXPECT_TRUE(quiet.expert_offsets.empty());
  EXPECT_EQ(quiet.num_rows, 80);
  EXPECT_EQ(i64_values(quiet.device_offsets), full.expert_offsets);
  EXPECT_EQ(quiet.slot_row.to_i32_vector(), full.slot_row.to_i32_vector());
  EXPECT_EQ(quiet.row_slot.to_i32_vector(), full.row_slot.to_i32_vector());
  const Tensor x = random_normal({40, 5}, rng);
  Tensor a = Tensor::empty({80, 5}), b = Tensor::empty({80, 5});
  permute_forward(a, x, full);
  permute_forward(b, x, quiet);
  EXPECT_TRUE(all_close(b, a, 0.0, 0.0));
  EXPECT_DEATH(finish_dispatch_plan(quiet), "started with PlanReadback::kNone");
  EXPECT_DEATH(start_dispatch_plan(indices, 6, 20, PlanReadback::kNone),
               "a plan with a capacity needs its counts on the host");
}

TEST(ExpertCapacity, IsTheCeilingOfFactorTimesSlotsPerExpert) {
  EXPECT_EQ(expert_capacity(1.0, 8, 2, 4), 4);
  EXPECT_EQ(expert_capacity(1.25, 8, 2, 4), 5);
  EXPECT_EQ(expert_capacity(1.25, 7, 2, 4), 5);   // 4.375
  EXPECT_EQ(expert_capacity(2.0, 1, 1, 8), 1);    // 0.25
  EXPECT_EQ(expert_capacity(1.1, 10, 1, 1), 11);  // 11.000000000000002 in binary
  EXPECT_EQ(expert_capacity(1.5, 0, 2, 4), 0);
}

TEST(ExpertCapacity, NonPositiveFactorIsDropless) {
  EXPECT_EQ(expert_capacity(0.0, 8, 2, 4), -1);
  EXPECT_EQ(expert_capacity(-1.0, 8, 2, 4), -1);
}

// Row groups into blocks of one length and back: each group's rows land at the start of its
// block, the rest of the block keeps what it held, and the way back restores the compact rows.
TEST(RowBlocks, GroupsLandAtTheirBlocksAndComeBack) {
  auto rng = testing::rng_for_test();
  const std::vector<int64_t> offsets{0, 3, 3, 7};  // groups of 3, 0 and 4 rows
  const Tensor compact = testing::random_normal({7, 5}, rng);
  const Tensor padded = Tensor::empty({3 * 4, 5});
  padded.fill_(-1.0f);
  rows_to_blocks(padded, compact, offsets, 4);
  const std::vector<float> p = padded.to_f32_vector(), c = compact.to_f32_vector();
  for (int64_t g = 0; g < 3; ++g) {
    const int64_t count = offsets[g + 1] - offsets[g];
    for (int64_t r = 0; r < 4; ++r) {
      for (int64_t j = 0; j < 5; ++j) {
        const float want = r < count ? c[(offsets[g] + r) * 5 + j] : -1.0f;
        EXPECT_EQ(p[(g * 4 + r) * 5 + j], want) << "group " << g << " row " << r;
      }
    }
  }
  const Tensor back = Tensor::zeros({7, 5});
  rows_from_blocks(back, padded, offsets, 4);
  EXPECT_TRUE(testing::all_close(back, compact, 0, 0));
}

TEST(RowBlocks, AGroupLargerThanABlockOrWrongShapesAreNamed) {
  const Tensor compact = Tensor::zeros({7, 5});
  EXPECT_DEATH(rows_to_blocks(Tensor::zeros({6, 5}), compact, {0, 3, 7}, 3),
               "group 1 has 4 rows, more than a block of 3");
  EXPECT_DEATH(rows_to_blocks(Tensor::zeros({8, 5}), compact, {0, 3, 7}, 3),
               "row blocks: 2 groups of 3 rows in \\[8, 5\\]");
}

}  // namespace
}  // namespace sy
