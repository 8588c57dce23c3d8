#pragma once
// The NCCL backend: collectives over CUDA tensors with NCCL, one GPU per rank, alongside a
// host group (MPI) that bootstraps it and carries everything that is not on the GPU (counts,
// host helpers, CPU tensors). A CUDA collective is issued on the ops' stream
// (sy::cuda::stream()), so it completes in stream order: every later op of this thread sees
// its data, and a host read of a result (a copy) waits for it. CUDA builds only.
#include <memory>

#include "parallel/communicator.h"

namespace sy {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `host`: its rank 0 makes an NCCL id and broadcasts it over `host`; every
  // rank joins with GPU `device` (distinct per rank on one host).
  static std::unique_ptr<NcclCommunicator> create(std::unique_ptr<Communicator> host,
                                                  Device device);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  Device device() const { return device_; }
  void all_reduce(const Tensor& tensor, ReduceOp op) override;
  void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) override;
  void all_gather(const Tensor& out, const Tensor& in) override;
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override;
  void broadcast(const Tensor& tensor, int root) override;
  void barrier() override;
  // Splits the host group, then builds an NCCL communicator for each new group.
  std::unique_ptr<Communicator> split(int color, int key) override;
  void all_reduce_host(std::span<double> values, ReduceOp op) override;
  std::vector<std::string> all_gather_host(const std::string& value) override;

 private:
  struct Impl;
  NcclCommunicator(std::unique_ptr<Communicator> host, Device device, std::unique_ptr<Impl> impl);
  std::unique_ptr<Communicator> host_;
  Device device_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy
