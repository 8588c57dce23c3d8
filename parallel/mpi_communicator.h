#pragma once
// The MPI backend: collectives over CPU tensors with OpenMPI, the process-wide MPI runtime,
// and fail_all, which takes the whole job down from one rank.
#include <mpi.h>

#include <memory>
#include <string>

#include "kernels/check.h"
#include "parallel/collective_watchdog.h"
#include "parallel/communicator.h"

// Every MPI call goes through this: MpiRuntime sets MPI_ERRORS_RETURN, so a failed call
// comes back here and aborts with the call, MPI's error string, the rank and the host.
#define SY_MPI_CHECK(call)                                                             \
  do {                                                                                 \
    int sy_mpi_rc_ = (call);                                                           \
    SY_CHECK(sy_mpi_rc_ == MPI_SUCCESS) << ::sy::mpi_error_context(sy_mpi_rc_, #call); \
  } while (0)

namespace sy {

// "MPI_Barrier(comm_) failed on rank 1/4 (host node07): MPI_ERR_COMM: invalid communicator".
std::string mpi_error_context(int code, const char* call);

// True between MPI_Init and MPI_Finalize.
bool mpi_active();

class MpiCommunicator final : public Communicator {
 public:
  // Wraps `comm`; frees it on destruction when `owned` (groups made by split()).
  MpiCommunicator(MPI_Comm comm, bool owned);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  MPI_Comm comm() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce(const Tensor& tensor, ReduceOp op) override;
  void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) override;
  void all_gather(const Tensor& out, const Tensor& in) override;
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override;
  void broadcast(const Tensor& tensor, int root) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  void all_reduce_host(std::span<double> values, ReduceOp op) override;
  std::vector<std::string> all_gather_host(const std::string& value) override;

 private:
  // Brackets one blocking MPI collective for CollectiveWatchdog::process().
  CollectiveWatchdog::Scope watch(const char* op, const char* dtype, int64_t elements);

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t calls_ = 0;  // watched calls so far: names the call a timeout message reports
};

// Initialises MPI (MPI_Init_thread, at least MPI_THREAD_FUNNELED: only the thread that made
// the runtime calls MPI) and finalises it when destroyed. Create one, first thing in main,
// and keep it for the life of the process; a second one while the first lives shares the
// first's MPI and finalises nothing. Sets MPI_ERRORS_RETURN so SY_MPI_CHECK sees failures.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  MpiRuntime() : MpiRuntime(nullptr, nullptr) {}
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // MPI_COMM_WORLD as a Communicator; lives as long as the runtime.
  MpiCommunicator& world() { return *world_; }

 private:
  bool owns_mpi_ = false;
  std::unique_ptr<MpiCommunicator> world_;
};

// Prints "switchyard: error: [rank R/host] message" (every line of it) to stderr, then calls
// MPI_Abort so that every rank exits non-zero within seconds, including ranks blocked in a
// collective. Without MPI it exits(1).
[[noreturn]] void fail_all(const std::string& message);

}  // namespace sy
