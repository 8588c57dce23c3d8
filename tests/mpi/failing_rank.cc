// A job in which rank 1 fails mid-run while rank 0 waits in a barrier that rank 1 will never
// reach. Run under mpirun by ctest (tests/mpi/expect_failure.cmake): the job must come down
// with rank 1's message and a non-zero exit within seconds instead of hanging.
//   failing_rank fail_all   rank 1 reports an error with fail_all (a user-facing failure)
//   failing_rank check      rank 1 fails a SY_CHECK (a programming error: abort)
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "kernels/check.h"
#include "parallel/mpi_communicator.h"

int main(int argc, char** argv) {
  sy::MpiRuntime mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "fail_all";
  sy::Communicator& world = mpi.world();
  world.barrier();  // every rank is up: the failure below is mid-run, not at start-up
  if (world.rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (mode == "check") {
      SY_CHECK(world.size() < 0) << "rank 1 broke an invariant on purpose";
    }
    sy::fail_all("step 3: loss is nan on purpose (failing_rank test)");
  }
  world.barrier();  // rank 0 and any others wait here forever unless the job is brought down
  std::printf("rank %d passed a barrier that rank 1 never entered\n", world.rank());
  return 0;
}
