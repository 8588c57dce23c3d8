// The runtime's hello-world, run by launch/mpirun_example.sh and by ctest: each rank finds
// its rank from the launcher, checks it against MPI and that every rank got the same
// arguments, builds the process grid, runs an all-reduce in each group and an all-to-all,
// and rank 0 prints every rank's banner and grid line in rank order.
//   mpi_smoke [expert_parallel_size (default 1)] [num_experts (default 4)]
// A layout error (e.g. 3 ranks with expert_parallel_size 2) is the same on every rank: rank 0
// prints it and every rank exits 1.
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_grid.h"
#include "parallel/rank_env.h"

namespace sy {
namespace {

int parse_arg(int argc, char** argv, int index, int fallback) {
  if (argc <= index) return fallback;
  int value = 0;
  if (!absl::SimpleAtoi(argv[index], &value)) {
    fail_all(absl::StrCat("argument ", index, " '", argv[index], "' is not an integer; usage: ",
                          "mpi_smoke [expert_parallel_size] [num_experts]"));
  }
  return value;
}

// Sum of the world ranks in `group` computed by the group, against the layout's member list.
void expect_group_sum(Communicator& group, int world_rank, const std::vector<int>& members,
                      const char* name) {
  Tensor t = Tensor::from_i32({world_rank}, {1});
  group.all_reduce(t, ReduceOp::kSum);
  int expected = 0;
  for (int r : members) expected += r;
  if (t.to_i32_vector()[0] != expected) {
    fail_all(absl::StrCat(name, " group all_reduce gave ", t.to_i32_vector()[0], ", expected ",
                          expected, " (members ", absl::StrJoin(members, ","), ")"));
  }
}

int run(MpiRuntime& mpi, int argc, char** argv) {
  MpiCommunicator& world = mpi.world();
  absl::StatusOr<RankEnv> env = rank_env_from_environment();
  if (!env.ok()) fail_all(std::string(env.status().message()));
  if (absl::Status s = check_rank_env_matches_world(*env, world.rank(), world.size()); !s.ok()) {
    fail_all(std::string(s.message()));
  }
  std::string args;
  for (int i = 1; i < argc; ++i) absl::StrAppend(&args, argv[i], "\n");
  if (absl::Status s = check_same_on_all_ranks(world, "the command line", args); !s.ok()) {
    if (world.rank() == 0) {
      std::fprintf(stderr, "switchyard: error: %s\n", std::string(s.message()).c_str());
    }
    return 1;
  }
  const int ep = parse_arg(argc, argv, 1, 1);
  const int experts = parse_arg(argc, argv, 2, 4);
  absl::StatusOr<ProcessGrid> grid = ProcessGrid::create(world, ep, experts);
  if (!grid.ok()) {
    if (world.rank() == 0) {
      std::fprintf(stderr, "switchyard: error: %s\n", std::string(grid.status().message()).c_str());
    }
    return 1;
  }
  const int me = world.rank();
  std::vector<int> everyone(world.size());
  std::iota(everyone.begin(), everyone.end(), 0);
  expect_group_sum(world, me, everyone, "world");
  expect_group_sum(grid->ep(), me, grid->layout().ep_group(me), "EP");
  expect_group_sum(grid->edp(), me, grid->layout().edp_group(me), "EDP");

  // One all-to-all over the EP group: rank r sends p+1 rows holding r to each EP peer p.
  Communicator& ep_group = grid->ep();
  std::vector<int64_t> send_counts;
  std::vector<int32_t> rows;
  for (int p = 0; p < ep_group.size(); ++p) {
    send_counts.push_back(p + 1);
    rows.insert(rows.end(), p + 1, me);
  }
  std::vector<int64_t> recv_counts = ep_group.exchange_counts(send_counts);
  int64_t recv_rows = 0;
  for (int64_t c : recv_counts) recv_rows += c;
  Tensor recv = Tensor::empty({recv_rows}, DType::kI32);
  ep_group.all_to_all_v(Tensor::from_i32(rows, {static_cast<int64_t>(rows.size())}), send_counts,
                        recv, recv_counts);
  std::vector<int32_t> got = recv.to_i32_vector(), expected;
  for (int member : grid->layout().ep_group(me)) {
    expected.insert(expected.end(), ep_group.rank() + 1, member);
  }
  if (got != expected) {
    fail_all(absl::StrCat("EP all_to_all_v gave [", absl::StrJoin(got, ","), "], expected [",
                          absl::StrJoin(expected, ","), "]"));
  }

  std::string line = absl::StrCat(banner_line(*env, host_name(), "cpu"), " | ", grid->describe());
  std::vector<std::string> lines = world.all_gather_host(line);
  if (me == 0) {
    for (const std::string& l : lines) std::printf("%s\n", l.c_str());
    std::printf("ok: world, EP and EDP all-reduce and EP all-to-all-v agree on %d ranks\n",
                world.size());
  }
  return 0;
}

}  // namespace
}  // namespace sy

int main(int argc, char** argv) {
  sy::MpiRuntime mpi(&argc, &argv);
  return sy::run(mpi, argc, argv);
}
