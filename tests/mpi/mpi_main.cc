// main() of every multi-rank test: starts MPI, runs the same tests on every rank, and exits
// non-zero on every rank when any rank failed, so mpirun (and ctest) report the failure.
// Rank 0 prints gtest's usual output; the other ranks print only their failures, prefixed
// with their rank.
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "tests/mpi/mpi_testing.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sy::testing {
namespace {

MpiCommunicator* g_world = nullptr;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The test's name is kept here because UnitTest::current_test_info() takes a lock that
  // gtest holds while it reports a part result: asking for it there deadlocks.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace

MpiCommunicator& mpi_world() {
  SY_CHECK(g_world != nullptr) << "mpi_world() outside tests/mpi/mpi_main.cc's main";
  return *g_world;
}

int fewest_gpus_on_any_rank() {
  int count = 0;
#ifdef SWITCHYARD_HAVE_CUDA
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    count = 0;
  }
#endif
  double neg = -count;  // the fewest GPUs any rank sees, as a max of negatives
  mpi_world().all_reduce_host({&neg, 1}, ReduceOp::kMax);
  return static_cast<int>(-neg);
}

bool gpu_per_rank(std::string* why) {
  const int fewest = fewest_gpus_on_any_rank();
  if (fewest >= mpi_world().size()) return true;
  *why = "needs a GPU per rank: " + std::to_string(fewest) + " GPUs for " +
         std::to_string(mpi_world().size()) + " ranks";
  return false;
}

std::mt19937_64 rng_for_rank(int rank, uint64_t stream) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "none";
  uint64_t h = std::hash<std::string>{}(name);
  std::seed_seq seq{static_cast<uint32_t>(h), static_cast<uint32_t>(h >> 32),
                    static_cast<uint32_t>(rank), static_cast<uint32_t>(stream),
                    static_cast<uint32_t>(stream >> 32)};
  return std::mt19937_64(seq);
}

}  // namespace sy::testing

int main(int argc, char** argv) {
  sy::MpiRuntime mpi(&argc, &argv);
  sy::testing::g_world = &mpi.world();
  // A test whose ranks fall out of step ends with the collective that waited, well before
  // ctest's timeout would kill it without a word (this also runs the watched path of every
  // backend in every multi-rank test).
  sy::CollectiveWatchdog::process().set_timeout(90);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = mpi.world().rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new sy::testing::RankFailurePrinter(rank));
  }
  double failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  double any_failed = failed;
  mpi.world().all_reduce_host(std::span<double>(&any_failed, 1), sy::ReduceOp::kMax);
  if (rank == 0 && any_failed != 0 && failed == 0) {
    std::fprintf(stderr, "FAILED on another rank: see the [rank N] lines\n");
  }
  return any_failed != 0 ? 1 : 0;
}
