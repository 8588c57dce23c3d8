#include "parallel/local_communicator.h"

namespace sy {

void LocalCommunicator::reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp) {
  out.copy_from(in.view(out.shape()));
}

void LocalCommunicator::all_gather(const Tensor& out, const Tensor& in) {
  out.copy_from(in.view(out.shape()));
}

void LocalCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts,
                                     const Tensor& recv, const std::vector<int64_t>& recv_counts) {
  SY_CHECK(send_counts.size() == 1 && recv_counts.size() == 1 && send_counts[0] == recv_counts[0])
      << "all_to_all_v on a group of one needs one matching count";
  if (send_counts[0] > 0) recv.rows(0, recv_counts[0]).copy_from(send.rows(0, send_counts[0]));
}

std::vector<int64_t> LocalCommunicator::exchange_counts(const std::vector<int64_t>& send_counts) {
  SY_CHECK(send_counts.size() == 1) << "exchange_counts on a group of one takes one count";
  return send_counts;
}

void LocalCommunicator::broadcast(const Tensor&, int root) {
  SY_CHECK(root == 0) << "broadcast from rank " << root << " in a group of one";
}

std::unique_ptr<Communicator> LocalCommunicator::split(int, int) {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace sy
