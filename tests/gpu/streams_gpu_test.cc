// StreamFanout (kernels/streams.h) orders side-stream work after what the thread's stream
// queued before the fork, and the thread's stream after every side stream at the join, with
// its events reused from one fan-out to the next. Each round: a large write on the thread's
// stream, then per piece a read-modify-write of its rows on a side stream, then a read on
// the thread's stream; any missing order shows up as a stale value. Skips without a GPU.
#include <vector>

#include "gtest/gtest.h"
#include "kernels/elementwise.h"
#include "kernels/streams.h"
#include "tests/testing/gpu_testing.h"

namespace sy {
namespace {

TEST(StreamFanoutGpu, ForkAndJoinOrderTheWorkRoundAfterRound) {
  SKIP_WITHOUT_GPU();
  constexpr int kPieces = 6, kWays = 4, kRounds = 20;
  const int64_t rows_per_piece = 1 << 14, cols = 512;  // 8M floats: the fill takes a while
  const Tensor x = Tensor::empty({kPieces * rows_per_piece, cols}, DType::kF32, testing::kGpu);
  for (int round = 0; round < kRounds; ++round) {
    fill_(x, static_cast<float>(round));
    {
      StreamFanout fanout(x.device(), kWays);
      for (int p = 0; p < kPieces; ++p) {
        fanout.select(p);
        const Tensor rows = x.rows(p * rows_per_piece, (p + 1) * rows_per_piece);
        scale_(rows, static_cast<float>(p + 2));
        add_(rows, rows);  // two dependent ops on one side stream
      }
    }
    // After the join, on the thread's stream: piece p holds round * (p + 2) * 2.
    const std::vector<float> got = x.to_f32_vector();
    for (int p = 0; p < kPieces; ++p) {
      const float want = static_cast<float>(round) * (p + 2) * 2;
      for (int64_t i : {int64_t{0}, rows_per_piece * cols / 2, rows_per_piece * cols - 1}) {
        ASSERT_EQ(got[p * rows_per_piece * cols + i], want)
            << "round " << round << " piece " << p << " element " << i;
      }
    }
  }
}

TEST(StreamFanoutGpu, OneWayAndTheCpuRunInline) {
  // One way: no side streams, the thread's stream does everything.
  const Tensor cpu = Tensor::zeros({4, 3});
  {
    StreamFanout fanout(Device::cpu(), 4);
    fanout.select(2);
    fill_(cpu, 1.5f);
  }
  EXPECT_EQ(cpu.to_f32_vector().back(), 1.5f);
  SKIP_WITHOUT_GPU();
  const Tensor x = Tensor::zeros({4, 3}, DType::kF32, testing::kGpu);
  {
    StreamFanout fanout(x.device(), 1);
    fanout.select(3);
    fill_(x, 2.5f);
  }
  EXPECT_EQ(x.to_f32_vector().front(), 2.5f);
}

}  // namespace
}  // namespace sy
