#include "parallel/expert_dispatch.h"

namespace sy {

ExpertDispatcher::ExpertDispatcher(Communicator& ep, int num_experts)
    : ep_(ep), num_experts_(num_experts) {
  SY_CHECK(num_experts % ep.size() == 0)
      << num_experts << " experts do not split over an expert-parallel group of " << ep.size();
  local_experts_ = num_experts / ep.size();
  first_expert_ = ep.rank() * local_experts_;
}

void ExpertDispatcher::plan(const std::vector<int64_t>& rows_per_expert) {
  SY_CHECK(static_cast<int>(rows_per_expert.size()) == num_experts_)
      << "dispatch plan for " << rows_per_expert.size() << " experts, expected " << num_experts_;
  const int peers = ep_.size();
  send_counts_.assign(peers, 0);
  for (int e = 0; e < num_experts_; ++e) send_counts_[e / local_experts_] += rows_per_expert[e];
  sent_rows_ = 0;
  for (int64_t c : send_counts_) sent_rows_ += c;

  if (peers == 1) {
    recv_counts_ = send_counts_;
    recv_expert_counts_ = rows_per_expert;
  } else {
    // Each owner learns how many rows of each of its experts every peer sends.
    Tensor counts = Tensor::empty({num_experts_}, DType::kI64);
    for (int e = 0; e < num_experts_; ++e) counts.data<int64_t>()[e] = rows_per_expert[e];
    Tensor received = Tensor::empty({num_experts_}, DType::kI64);
    const std::vector<int64_t> per_peer(peers, local_experts_);
    ep_.all_to_all_v(counts, per_peer, received, per_peer);
    recv_expert_counts_.assign(received.data<int64_t>(), received.data<int64_t>() + num_experts_);
    recv_counts_.assign(peers, 0);
    for (int p = 0; p < peers; ++p)
      for (int e = 0; e < local_experts_; ++e)
        recv_counts_[p] += recv_expert_counts_[p * local_experts_ + e];
  }
  local_counts_.assign(local_experts_, 0);
  for (int p = 0; p < peers; ++p)
    for (int e = 0; e < local_experts_; ++e)
      local_counts_[e] += recv_expert_counts_[p * local_experts_ + e];
  local_offsets_.assign(local_experts_ + 1, 0);
  for (int e = 0; e < local_experts_; ++e)
    local_offsets_[e + 1] = local_offsets_[e] + local_counts_[e];
}

Tensor ExpertDispatcher::to_experts(const Tensor& rows) const {
  SY_CHECK(rows.dim(0) == sent_rows_)
      << "to_experts got " << rows.dim(0) << " rows, plan has " << sent_rows_;
  if (ep_.size() == 1) return rows;
  const int peers = ep_.size();
  Shape shape = rows.shape();
  shape[0] = local_rows();
  Tensor received = Tensor::empty(shape, rows.dtype(), rows.device());
  ep_.all_to_all_v(rows, send_counts_, received, recv_counts_);
  // Regroup (source, expert) blocks into (expert, source) order.
  Tensor out = Tensor::empty(shape, rows.dtype(), rows.device());
  std::vector<int64_t> cursor(local_offsets_.begin(), local_offsets_.end() - 1);
  int64_t src = 0;
  for (int p = 0; p < peers; ++p) {
    for (int e = 0; e < local_experts_; ++e) {
      const int64_t n = recv_expert_counts_[p * local_experts_ + e];
      if (n) out.rows(cursor[e], cursor[e] + n).copy_from(received.rows(src, src + n));
      cursor[e] += n;
      src += n;
    }
  }
  return out;
}

Tensor ExpertDispatcher::from_experts(const Tensor& expert_rows) const {
  SY_CHECK(expert_rows.dim(0) == local_rows())
      << "from_experts got " << expert_rows.dim(0) << " rows, plan has " << local_rows();
  if (ep_.size() == 1) return expert_rows;
  const int peers = ep_.size();
  Shape shape = expert_rows.shape();
  // Undo the regrouping, then send every row back to the rank it came from.
  Tensor by_source = Tensor::empty(shape, expert_rows.dtype(), expert_rows.device());
  std::vector<int64_t> cursor(local_offsets_.begin(), local_offsets_.end() - 1);
  int64_t dst = 0;
  for (int p = 0; p < peers; ++p) {
    for (int e = 0; e < local_experts_; ++e) {
      const int64_t n = recv_expert_counts_[p * local_experts_ + e];
      if (n) by_source.rows(dst, dst + n).copy_from(expert_rows.rows(cursor[e], cursor[e] + n));
      cursor[e] += n;
      dst += n;
    }
  }
  shape[0] = sent_rows_;
  Tensor out = Tensor::empty(shape, expert_rows.dtype(), expert_rows.device());
  ep_.all_to_all_v(by_source, recv_counts_, out, send_counts_);
  return out;
}

}  // namespace sy
