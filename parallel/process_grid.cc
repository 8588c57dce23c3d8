#include "parallel/process_grid.h"

#include "absl/strings/str_cat.h"
#include "parallel/device_choice.h"

namespace sy {

absl::StatusOr<GridLayout> GridLayout::create(int world_size, int expert_parallel_size,
                                              int num_experts) {
  const int ep = expert_parallel_size;
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size ", world_size, ": a job needs at least one rank"));
  }
  if (ep < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.expert_parallel_size = ", ep, " must be at least 1 (1 = no expert parallelism)"));
  }
  if (world_size % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size ", world_size, " is not divisible by parallel.expert_parallel_size = ", ep,
        "; launch a multiple of ", ep, " processes, or set expert_parallel_size to a divisor of ",
        world_size, " (world = data_parallel x expert_parallel)"));
  }
  if (num_experts < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe.num_experts = ", num_experts, " is negative"));
  }
  if (num_experts == 0 && ep > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.expert_parallel_size = ", ep,
        " but the model has no routed experts to spread; set expert_parallel_size to 1"));
  }
  if (num_experts % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe.num_experts = ", num_experts,
        " is not divisible by parallel.expert_parallel_size = ", ep,
        "; every rank of an expert-parallel group must own the same number of experts, so "
        "make num_experts a multiple of ",
        ep, " or choose an expert_parallel_size that divides ", num_experts));
  }
  GridLayout layout;
  layout.world_size = world_size;
  layout.expert_parallel = ep;
  layout.data_parallel = world_size / ep;
  layout.num_experts = num_experts;
  return layout;
}

std::vector<int> GridLayout::ep_group(int rank) const {
  std::vector<int> ranks;
  for (int e = 0; e < expert_parallel; ++e) ranks.push_back(dp_rank(rank) * expert_parallel + e);
  return ranks;
}

std::vector<int> GridLayout::edp_group(int rank) const {
  std::vector<int> ranks;
  for (int d = 0; d < data_parallel; ++d) ranks.push_back(d * expert_parallel + ep_rank(rank));
  return ranks;
}

absl::StatusOr<ProcessGrid> ProcessGrid::create(Communicator& world, int expert_parallel_size,
                                                int num_experts, Device device) {
  ProcessGrid grid;
  SY_ASSIGN_OR_RETURN(grid.layout_,
                      GridLayout::create(world.size(), expert_parallel_size, num_experts));
  // The layout is checked first: its errors come back before any NCCL set-up.
  grid.owned_world_ = make_world_for(device, world);
  grid.world_ = grid.owned_world_ ? grid.owned_world_.get() : &world;
  Communicator& carrier = *grid.world_;
  const int rank = carrier.rank();
  grid.ep_ =
      carrier.split(/*color=*/grid.layout_.dp_rank(rank), /*key=*/grid.layout_.ep_rank(rank));
  grid.edp_ =
      carrier.split(/*color=*/grid.layout_.ep_rank(rank), /*key=*/grid.layout_.dp_rank(rank));
  SY_CHECK(grid.ep_->size() == grid.layout_.expert_parallel && grid.ep_->rank() == grid.ep_rank())
      << "EP group of rank " << rank << " came out as rank " << grid.ep_->rank() << " of "
      << grid.ep_->size();
  SY_CHECK(grid.edp_->size() == grid.layout_.data_parallel && grid.edp_->rank() == grid.dp_rank())
      << "EDP group of rank " << rank << " came out as rank " << grid.edp_->rank() << " of "
      << grid.edp_->size();
  return grid;
}

std::string ProcessGrid::describe() const {
  return absl::StrCat("grid: world ", layout_.world_size, " = data ", layout_.data_parallel,
                      " x expert ", layout_.expert_parallel, " | rank ", rank(), ": dp ", dp_rank(),
                      ", ep ", ep_rank(), ", experts [", first_expert(), ", ", end_expert(),
                      ") of ", layout_.num_experts);
}

}  // namespace sy
