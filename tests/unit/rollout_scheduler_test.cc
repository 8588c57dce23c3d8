// The rollout engine's scheduler without a model: first-come admission into the lowest free
// slots, retirement freeing a slot for the next pending sequence, running order, prefill
// batches cut by their padded token budget, and the decode batch's row buckets.
#include "gtest/gtest.h"
#include "models/rollout/scheduler.h"

namespace sy {
namespace {

std::vector<int64_t> ids_of(const std::vector<Scheduler::Running>& rows) {
  std::vector<int64_t> out;
  for (const Scheduler::Running& r : rows) out.push_back(r.id);
  return out;
}

TEST(SlotAllocator, GivesTheLowestFreeSlot) {
  SlotAllocator slots(3);
  EXPECT_EQ(slots.acquire(), 0);
  EXPECT_EQ(slots.acquire(), 1);
  EXPECT_EQ(slots.acquire(), 2);
  EXPECT_EQ(slots.acquire(), -1);
  slots.release(1);
  EXPECT_EQ(slots.free_count(), 1);
  EXPECT_EQ(slots.acquire(), 1);
}

TEST(Scheduler, AdmitsInOrderUpToCapacityAndReusesRetiredSlots) {
  Scheduler s(/*max_rows=*/3, /*prefill_tokens=*/1000);
  for (int64_t i = 0; i < 5; ++i) s.add(i, 4 + i);
  const auto first = s.admit();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(ids_of(first[0]), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(ids_of(s.running()), (std::vector<int64_t>{0, 1, 2}));
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(s.running()[i].slot, i);
  EXPECT_EQ(s.pending(), 2);
  EXPECT_TRUE(s.admit().empty());  // no free slot

  // Sequence 1 retires: its slot goes to sequence 3, which runs after the older rows.
  s.retire(1);
  const auto second = s.admit();
  ASSERT_EQ(second.size(), 1u);
  ASSERT_EQ(second[0].size(), 1u);
  EXPECT_EQ(second[0][0].id, 3);
  EXPECT_EQ(second[0][0].slot, 1);
  EXPECT_EQ(second[0][0].prompt_len, 7);
  EXPECT_EQ(ids_of(s.running()), (std::vector<int64_t>{0, 2, 3}));

  s.retire(0);
  s.retire(3);
  const auto third = s.admit();
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(third[0][0].id, 4);
  EXPECT_EQ(third[0][0].slot, 0);
  EXPECT_EQ(ids_of(s.running()), (std::vector<int64_t>{2, 4}));
  EXPECT_FALSE(s.done());
  s.retire(2);
  s.retire(4);
  EXPECT_TRUE(s.done());
}

TEST(Scheduler, CutsPrefillBatchesByPaddedTokens) {
  // Budget 12: [3, 5] pads to 2 x 5 = 10; adding 2 keeps 3 x 5 = 15 > 12, so a new batch;
  // [2, 4] is 8; 9 alone (a prompt past the budget is a batch of its own); then [1].
  Scheduler s(/*max_rows=*/8, /*prefill_tokens=*/12);
  const std::vector<int64_t> lengths = {3, 5, 2, 4, 13, 1};
  for (size_t i = 0; i < lengths.size(); ++i) s.add(static_cast<int64_t>(i), lengths[i]);
  const auto batches = s.admit();
  ASSERT_EQ(batches.size(), 4u);
  EXPECT_EQ(ids_of(batches[0]), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(ids_of(batches[1]), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ids_of(batches[2]), (std::vector<int64_t>{4}));
  EXPECT_EQ(ids_of(batches[3]), (std::vector<int64_t>{5}));
  EXPECT_EQ(ids_of(s.running()), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
}

TEST(Scheduler, PadsDecodeRowsToPowersOfTwoWithinCapacity) {
  Scheduler s(/*max_rows=*/12, /*prefill_tokens=*/100);
  EXPECT_EQ(s.decode_rows(0), 1);
  EXPECT_EQ(s.decode_rows(1), 1);
  EXPECT_EQ(s.decode_rows(3), 4);
  EXPECT_EQ(s.decode_rows(8), 8);
  EXPECT_EQ(s.decode_rows(9), 12);
  EXPECT_EQ(s.decode_rows(12), 12);
}

}  // namespace
}  // namespace sy
