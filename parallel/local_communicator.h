#pragma once
// The group of one: every collective is the identity (or a copy). A single-process run uses
// it, so the model and the trainer speak to a Communicator whether or not MPI is running.
#include "parallel/communicator.h"

namespace sy {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(const Tensor&, ReduceOp) override {}
  void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp) override;
  void all_gather(const Tensor& out, const Tensor& in) override;
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override;
  void broadcast(const Tensor&, int root) override;
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
  void all_reduce_host(std::span<double>, ReduceOp) override {}
  std::vector<std::string> all_gather_host(const std::string& value) override { return {value}; }
};

}  // namespace sy
