#include "parallel/device_choice.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/check.h"
#include "parallel/rank_env.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/stream_state.h"
#include "parallel/nccl_communicator.h"
#endif

namespace sy {

std::string RankGpus::encode() const {
  return absl::StrCat(host, "\t", local_rank, "\t", gpus, "\t", gpu_id);
}

absl::StatusOr<RankGpus> RankGpus::decode(const std::string& text) {
  std::vector<std::string> fields = absl::StrSplit(text, '\t');
  RankGpus r;
  if (fields.size() != 4 || !absl::SimpleAtoi(fields[1], &r.local_rank) ||
      !absl::SimpleAtoi(fields[2], &r.gpus)) {
    return absl::InvalidArgumentError(absl::StrCat("not a rank's GPU report: '", text, "'"));
  }
  r.host = fields[0];
  r.gpu_id = fields[3];
  return r;
}

namespace {

// "rank 3 (host node07)" or "ranks 1 (host node07), 3 (host node08)", at most 8 named.
std::string ranks_on_hosts(const std::vector<int>& which, const std::vector<RankGpus>& ranks) {
  constexpr size_t kNamed = 8;
  std::vector<std::string> named;
  for (size_t i = 0; i < which.size() && i < kNamed; ++i)
    named.push_back(absl::StrCat(which[i], " (host ", ranks[which[i]].host, ")"));
  std::string more =
      which.size() > kNamed ? absl::StrCat(" and ", which.size() - kNamed, " more") : "";
  return absl::StrCat(which.size() > 1 ? "ranks " : "rank ", absl::StrJoin(named, ", "), more);
}

}  // namespace

absl::StatusOr<Device> decide_device(DeviceWish wish, const std::vector<RankGpus>& ranks,
                                     int rank) {
  SY_CHECK(rank >= 0 && rank < static_cast<int>(ranks.size()))
      << "rank " << rank << " of " << ranks.size() << " reports";
  if (wish == DeviceWish::kCpu) return Device::cpu();
  std::vector<int> without;
  for (int r = 0; r < static_cast<int>(ranks.size()); ++r)
    if (ranks[r].gpus <= 0) without.push_back(r);
  if (!without.empty()) {
    if (wish == DeviceWish::kAuto) return Device::cpu();
    if (ranks.size() == 1) {
      return absl::FailedPreconditionError(
          "device: DEVICE_CUDA, but no GPU is visible (or this build has no CUDA); use "
          "DEVICE_AUTO to fall back to the CPU");
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "device: DEVICE_CUDA, but ", ranks_on_hosts(without, ranks),
        without.size() > 1 ? " see" : " sees", " no GPU (or this build has no CUDA) among ",
        ranks.size(),
        " ranks; a GPU job needs a GPU for every rank: start every rank where it sees one, or "
        "set device: DEVICE_AUTO (every rank trains on the CPU when one has no GPU) or "
        "DEVICE_CPU"));
  }
  // Two ranks of one host on one GPU: the first such pair by rank, the same on every rank.
  for (int r = 0; r < static_cast<int>(ranks.size()); ++r) {
    std::vector<int> sharing;
    for (int q = 0; q < static_cast<int>(ranks.size()); ++q) {
      if (ranks[q].host == ranks[r].host && ranks[q].gpu_id == ranks[r].gpu_id)
        sharing.push_back(q);
    }
    if (sharing.size() < 2) continue;
    const int on_host = static_cast<int>(std::count_if(
        ranks.begin(), ranks.end(), [&](const RankGpus& g) { return g.host == ranks[r].host; }));
    return absl::FailedPreconditionError(absl::StrCat(
        "ranks ", absl::StrJoin(sharing, ", "), " on host ", ranks[r].host,
        " would share one GPU (", ranks[r].gpu_id, "): ", on_host, " ranks run there and rank ",
        r, " sees ", ranks[r].gpus, ranks[r].gpus == 1 ? " GPU" : " GPUs",
        " (each rank takes GPU local_rank % GPUs it sees); start at most one rank per GPU "
        "(e.g. mpirun -np 2 on a 2-GPU node), or set device: DEVICE_CPU to train on the CPUs"));
  }
  const RankGpus& me = ranks[rank];
  return Device::cuda(me.local_rank % me.gpus);
}

absl::StatusOr<RankGpus> local_rank_gpus() {
  SY_ASSIGN_OR_RETURN(RankEnv env, rank_env_from_environment());
  RankGpus me;
  me.host = host_name();
  me.local_rank = env.local_rank;
#ifdef SWITCHYARD_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    count = 0;
  }
  me.gpus = count;
  if (count > 0) {
    const int index = env.local_rank % count;
    char bus_id[64] = {};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), index) == cudaSuccess) {
      me.gpu_id = bus_id;
    } else {
      cudaGetLastError();
      me.gpu_id = absl::StrCat("cuda:", index);  // the index at least tells ranks apart
    }
  }
#endif
  return me;
}

absl::StatusOr<Device> choose_job_device(DeviceWish wish, Communicator& world) {
  // A rank whose report fails still takes part in the gather, so that every rank returns.
  absl::StatusOr<RankGpus> mine = local_rank_gpus();
  const std::vector<std::string> all = world.all_gather_host(
      mine.ok() ? mine->encode() : absl::StrCat("!", mine.status().message()));
  std::vector<RankGpus> reports;
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    if (!all[r].empty() && all[r][0] == '!') {
      return absl::FailedPreconditionError(absl::StrCat("rank ", r, ": ", all[r].substr(1)));
    }
    SY_ASSIGN_OR_RETURN(RankGpus report, RankGpus::decode(all[r]));
    reports.push_back(std::move(report));
  }
  SY_ASSIGN_OR_RETURN(const Device device, decide_device(wish, reports, world.rank()));
#ifdef SWITCHYARD_HAVE_CUDA
  // From here on this thread's per-thread stream, and everything NCCL sets up, is on it.
  if (device.is_cuda()) cuda::set_device(device.index);
#endif
  return device;
}

bool carries(const Communicator& comm, Device device) {
  if (device.is_cpu() || comm.size() == 1) return true;
#ifdef SWITCHYARD_HAVE_CUDA
  const auto* nccl = dynamic_cast<const NcclCommunicator*>(&comm);
  return nccl != nullptr && nccl->device() == device;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_world_for(Device device, Communicator& host) {
  if (carries(host, device)) return nullptr;
#ifdef SWITCHYARD_HAVE_CUDA
  SY_CHECK(device.is_cuda()) << "no communicator carries " << device.str() << " tensors";
  return NcclCommunicator::create(host.split(/*color=*/0, /*key=*/host.rank()), device);
#else
  SY_CHECK(false) << "this build has no CUDA: no communicator carries " << device.str()
                  << " tensors";
  return nullptr;
#endif
}

}  // namespace sy
