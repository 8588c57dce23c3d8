#pragma once
// ProcessGrid: how the ranks of the world split the work of a MoE model.
//
//   world = data_parallel x expert_parallel
//   ep_rank = rank % ep, dp_rank = rank / ep: an EP group is ep consecutive ranks (one node,
//   NVLink) that together hold one copy of the experts; rank r of an EP group owns experts
//   [r·E/ep, (r+1)·E/ep). The expert-data-parallel (EDP) group is the ranks with the same
//   ep_rank: they hold the same experts and average their gradients. Dense parameters are
//   replicated on every rank and averaged over the world.
//
// For world 4, ep 2: EP groups {0,1} {2,3}; EDP groups {0,2} {1,3}.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace sy {

// The grid's arithmetic without communicators, so every rule of it is checkable anywhere.
struct GridLayout {
  int world_size = 1;
  int expert_parallel = 1;
  int data_parallel = 1;
  int num_experts = 0;

  // Errors (the same on every rank, so every rank reports them): expert_parallel_size < 1,
  // world_size not divisible by it, num_experts not divisible by it.
  static absl::StatusOr<GridLayout> create(int world_size, int expert_parallel_size,
                                           int num_experts);

  int ep_rank(int rank) const { return rank % expert_parallel; }
  int dp_rank(int rank) const { return rank / expert_parallel; }
  int experts_per_rank() const { return num_experts / expert_parallel; }
  // The experts `rank` owns: [first_expert, end_expert).
  int first_expert(int rank) const { return ep_rank(rank) * experts_per_rank(); }
  int end_expert(int rank) const { return first_expert(rank) + experts_per_rank(); }
  // The ep_rank (index within any EP group) that owns `expert`.
  int expert_owner(int expert) const { return expert / experts_per_rank(); }
  // World ranks of `rank`'s EP group in ep_rank order, and of its EDP group in dp_rank order.
  std::vector<int> ep_group(int rank) const;
  std::vector<int> edp_group(int rank) const;
};

class ProcessGrid {
 public:
  // Splits `world` into the EP and EDP groups, communicators that carry `device` tensors
  // (parallel/device_choice.h): for a CUDA device on several ranks the grid's world is an
  // NcclCommunicator over a copy of `world`, owned by the grid, and the groups are NCCL
  // groups split from it; otherwise the grid's world is `world`. Collective over `world`;
  // the grid may keep a reference to it, so `world` must outlive the grid.
  static absl::StatusOr<ProcessGrid> create(Communicator& world, int expert_parallel_size,
                                            int num_experts, Device device = Device::cpu());

  const GridLayout& layout() const { return layout_; }
  int rank() const { return world_->rank(); }
  int ep_rank() const { return layout_.ep_rank(rank()); }
  int dp_rank() const { return layout_.dp_rank(rank()); }
  int first_expert() const { return layout_.first_expert(rank()); }
  int end_expert() const { return layout_.end_expert(rank()); }
  int num_local_experts() const { return layout_.experts_per_rank(); }

  // Every rank of the job, over the transport of the grid's device: the world to hand
  // collectives on that device's tensors (gradients, ZeRO-1 broadcasts).
  Communicator& world() const { return *world_; }
  Communicator& ep() const { return *ep_; }
  Communicator& edp() const { return *edp_; }

  // "grid: world 4 = data 2 x expert 2 | rank 3: dp 1, ep 1, experts [4, 8) of 8"
  std::string describe() const;

 private:
  ProcessGrid() = default;
  GridLayout layout_;
  std::unique_ptr<Communicator> owned_world_;  // before the groups: destroyed after them
  Communicator* world_ = nullptr;
  std::unique_ptr<Communicator> ep_;
  std::unique_ptr<Communicator> edp_;
};

}  // namespace sy
