#pragma once
// Communicator: the collectives a group of ranks runs over Tensors, whatever carries the
// bytes (MPI for CPU tensors, NCCL for CUDA tensors). Every rank of the group must make the
// same calls in the same order with agreeing shapes; a call blocks until its data is in place.
//
// Tensors may be f32, bf16, i32 or i64 (every Tensor is contiguous). Arguments that do not
// fit together (dtype, device, shape, counts) are programming errors and abort with a check.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/tensor.h"

namespace sy {

// kAvg is kSum divided by the group size; it is defined for floating-point data only.
// bf16 data is reduced in f32 and rounded once at the end.
enum class ReduceOp : uint8_t { kSum, kAvg, kMax };
const char* reduce_op_name(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's index in the group, in [0, size()).
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // tensor = op over the group of tensor, in place; every rank ends with the same values.
  virtual void all_reduce(const Tensor& tensor, ReduceOp op) = 0;
  // in holds size() blocks of out.numel() elements; rank r receives op over the group of
  // block r. `in` and `out` must not overlap.
  virtual void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) = 0;
  // out holds size() blocks of in.numel() elements, rank-major: block r is rank r's `in`.
  virtual void all_gather(const Tensor& out, const Tensor& in) = 0;
  // Rows along dim 0 go to peers in order: the first send_counts[0] rows of `send` go to
  // rank 0, the next send_counts[1] to rank 1, and so on; `recv` gets recv_counts[p] rows
  // from each peer p, in peer order. Counts are rows (not elements), one per peer, and must
  // match what the peers send (use exchange_counts). Both tensors have the same dtype and
  // row width (elements per row); either may have zero rows.
  virtual void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                            const Tensor& recv, const std::vector<int64_t>& recv_counts) = 0;
  // An all-to-all of the count vectors: returns recv_counts with recv_counts[p] = the
  // send_counts[rank()] that peer p passed. Host memory, whatever the backend.
  virtual std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) = 0;
  // tensor = root's tensor, on every rank.
  virtual void broadcast(const Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;

  // A new group per distinct color, made of the ranks that passed that color, ordered by key
  // (ties broken by rank here). Every rank of this group must call it.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Host-side helpers for bookkeeping (losses, norms, token counts), in double precision.
  virtual void all_reduce_host(std::span<double> values, ReduceOp op) = 0;
  // Every rank's string, indexed by rank; the strings may differ in length.
  virtual std::vector<std::string> all_gather_host(const std::string& value) = 0;
};

// OK when `value` is the same on every rank of `comm`; otherwise an error, identical on every
// rank, that names `what` and the ranks that disagree with rank 0. Used at start-up to catch
// ranks launched with different configs. Collective.
absl::Status check_same_on_all_ranks(Communicator& comm, const std::string& what,
                                     const std::string& value);

}  // namespace sy
