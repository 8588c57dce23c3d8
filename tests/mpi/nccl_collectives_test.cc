// The NCCL backend against the MPI backend: every collective on the same per-rank inputs,
// NCCL on CUDA tensors (one GPU per rank), MPI on CPU copies; results must agree: data
// movement and integers exactly, f32 reductions to 1e-5 (summation order), bf16 to one
// rounding (both reduce in f32 and round once, in different orders). Groups from split()
// too. Skips unless this host has a GPU per rank (CUDA builds, mpirun -np 2 on 2 GPUs).
#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "tests/mpi/mpi_testing.h"
#include "tests/testing/testing.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace sy {
namespace {

using testing::gpu_per_rank;
using testing::mpi_world;
using testing::rng_for_rank;

#ifdef SWITCHYARD_HAVE_CUDA
Tensor random_of(DType dtype, const Shape& shape, int rank, uint64_t stream) {
  auto rng = rng_for_rank(rank, stream);
  Tensor f = testing::random_normal(shape, rng);
  if (dtype == DType::kF32) return f;
  if (dtype == DType::kBF16) return f.to(DType::kBF16);
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t v = static_cast<int64_t>(std::lround(f.data<float>()[i] * 1000));
    if (dtype == DType::kI32) t.data<int32_t>()[i] = static_cast<int32_t>(v);
    if (dtype == DType::kI64) t.data<int64_t>()[i] = v << 20;
  }
  return t;
}

::testing::AssertionResult agree(const Tensor& nccl, const Tensor& mpi, bool reduced) {
  const Tensor a = nccl.to(Device::cpu());
  if (a.dtype() == DType::kI32 || a.dtype() == DType::kI64 || !reduced) {
    if (a.nbytes() != mpi.nbytes() || std::memcmp(a.raw(), mpi.raw(), a.nbytes()) != 0)
      return ::testing::AssertionFailure() << "NCCL and MPI results differ";
    return ::testing::AssertionSuccess();
  }
  const double rtol = a.dtype() == DType::kBF16 ? 1.0 / 128 : 1e-5;
  return testing::all_close(
      a.to_f32_vector(),
      [&] {
        std::vector<float> m = mpi.to_f32_vector();
        return std::vector<double>(m.begin(), m.end());
      }(),
      rtol, rtol);
}

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_per_rank(&why)) GTEST_SKIP() << why;
    device_ = Device::cuda(mpi_world().rank());
    nccl_ = NcclCommunicator::create(mpi_world().split(0, mpi_world().rank()), device_);
  }
  Device device_;
  std::unique_ptr<NcclCommunicator> nccl_;
};

TEST_F(NcclTest, AllReduceAgreesWithMpi) {
  uint64_t stream = 0;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI32, DType::kI64}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
      if (op == ReduceOp::kAvg && (dtype == DType::kI32 || dtype == DType::kI64)) continue;
      for (const Shape& shape : {Shape{1}, Shape{7, 33}, Shape{0}, Shape{1 << 20}}) {
        Tensor host = random_of(dtype, shape, mpi_world().rank(), ++stream);
        Tensor gpu = host.to(device_);
        mpi_world().all_reduce(host, op);
        nccl_->all_reduce(gpu, op);
        EXPECT_TRUE(agree(gpu, host, true))
            << dtype_name(dtype) << " " << reduce_op_name(op) << " " << shape_str(shape);
      }
    }
  }
}

TEST_F(NcclTest, ReduceScatterAllGatherBroadcastAgreeWithMpi) {
  const int n = mpi_world().size(), r = mpi_world().rank();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor in = random_of(dtype, {n * 129}, r, 1);
    Tensor out_mpi = Tensor::empty({129}, dtype), out_gpu = Tensor::empty({129}, dtype, device_);
    mpi_world().reduce_scatter(out_mpi, in, ReduceOp::kSum);
    nccl_->reduce_scatter(out_gpu, in.to(device_), ReduceOp::kSum);
    EXPECT_TRUE(agree(out_gpu, out_mpi, true)) << "reduce_scatter " << dtype_name(dtype);
  }
  Tensor mine = random_of(DType::kI32, {5, 3}, r, 2);
  Tensor all_mpi = Tensor::empty({5 * n, 3}, DType::kI32);
  Tensor all_gpu = Tensor::empty({5 * n, 3}, DType::kI32, device_);
  mpi_world().all_gather(all_mpi, mine);
  nccl_->all_gather(all_gpu, mine.to(device_));
  EXPECT_TRUE(agree(all_gpu, all_mpi, false)) << "all_gather";
  Tensor b = random_of(DType::kF32, {1000}, r, 3);
  Tensor b_gpu = b.to(device_);
  mpi_world().broadcast(b, n - 1);
  nccl_->broadcast(b_gpu, n - 1);
  EXPECT_TRUE(agree(b_gpu, b, false)) << "broadcast";
}

TEST_F(NcclTest, AllToAllVMovesTheSameRows) {
  const int n = mpi_world().size(), r = mpi_world().rank();
  // Rank r sends (r + p) % 3 rows to peer p: some zero, all uneven.
  std::vector<int64_t> send_counts(n);
  int64_t rows = 0;
  for (int p = 0; p < n; ++p) rows += send_counts[p] = (r + p) % 3;
  const std::vector<int64_t> recv_counts = nccl_->exchange_counts(send_counts);
  int64_t incoming = 0;
  for (int64_t c : recv_counts) incoming += c;
  for (DType dtype : {DType::kBF16, DType::kI64}) {
    Tensor send = random_of(dtype, {rows, 17}, r, 4);
    Tensor recv_mpi = Tensor::empty({incoming, 17}, dtype);
    Tensor recv_gpu = Tensor::empty({incoming, 17}, dtype, device_);
    mpi_world().all_to_all_v(send, send_counts, recv_mpi, recv_counts);
    nccl_->all_to_all_v(send.to(device_), send_counts, recv_gpu, recv_counts);
    EXPECT_TRUE(agree(recv_gpu, recv_mpi, false)) << dtype_name(dtype);
  }
}

TEST_F(NcclTest, SplitGroupsReduceWithinThemselves) {
  const int r = mpi_world().rank();
  std::unique_ptr<Communicator> group = nccl_->split(r % 2, r);
  std::unique_ptr<Communicator> group_mpi = mpi_world().split(r % 2, r);
  ASSERT_EQ(group->size(), group_mpi->size());
  ASSERT_EQ(group->rank(), group_mpi->rank());
  Tensor host = random_of(DType::kF32, {300}, r, 5);
  Tensor gpu = host.to(device_);
  group_mpi->all_reduce(host, ReduceOp::kSum);
  group->all_reduce(gpu, ReduceOp::kSum);
  EXPECT_TRUE(agree(gpu, host, true));
  // Host helpers go through the host group.
  double v = r + 1;
  group->all_reduce_host({&v, 1}, ReduceOp::kSum);
  double w = r + 1;
  group_mpi->all_reduce_host({&w, 1}, ReduceOp::kSum);
  EXPECT_EQ(v, w);
}
#else
TEST(NcclTest, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA: no NCCL backend"; }
#endif

}  // namespace
}  // namespace sy
