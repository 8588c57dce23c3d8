#pragma once
// Moves MoE token rows between the ranks of an expert-parallel group.
//
// Rank p of an EP group of size P owns the experts [p*E/P, (p+1)*E/P). A rank's permuted rows
// (make_dispatch_plan: grouped by global expert) are therefore already grouped by owner, so
// one all-to-all-v sends each owner its rows. The owner receives them grouped by source rank
// and, within a source, by expert; to run one GEMM per local expert it regroups them by
// local expert (within an expert, by source rank). `to_experts` is that forward motion,
// `from_experts` its inverse; the backward of each is the other, with the same counts.
// With a group of one both are the identity and nothing is copied.
#include <cstdint>
#include <vector>

#include "kernels/tensor.h"
#include "parallel/communicator.h"

namespace sy {

class ExpertDispatcher {
 public:
  ExpertDispatcher(Communicator& ep, int num_experts);

  // Sets the layout for the rows of this forward: rows_per_expert[e] for every global
  // expert e (this rank's permuted rows). Exchanges counts with the group (collective).
  void plan(const std::vector<int64_t>& rows_per_expert);

  // [M, D] rows grouped by global expert -> [R, D] rows of this rank's experts, grouped by
  // local expert. Collective.
  Tensor to_experts(const Tensor& rows) const;
  // [R, D'] grouped by local expert -> [M, D'] in this rank's original row order. Collective.
  Tensor from_experts(const Tensor& expert_rows) const;

  int num_local_experts() const { return local_experts_; }
  int first_local_expert() const { return first_expert_; }
  // Rows each local expert received, summed over source ranks; and their prefix sums.
  const std::vector<int64_t>& local_counts() const { return local_counts_; }
  const std::vector<int64_t>& local_offsets() const { return local_offsets_; }
  int64_t local_rows() const { return local_offsets_.back(); }

 private:
  Communicator& ep_;
  int num_experts_;
  int local_experts_;
  int first_expert_;
  std::vector<int64_t> send_counts_, recv_counts_;  // rows per peer
  std::vector<int64_t> recv_expert_counts_;         // [peer][local expert]
  std::vector<int64_t> local_counts_, local_offsets_;
  int64_t sent_rows_ = 0;
};

}  // namespace sy
