#pragma once
// Which device each rank of a job trains on, and the communicator that carries that device's
// tensors between ranks.
//
// A job is all-GPU or all-CPU: MoE layers exchange tokens every step, so a CPU rank cannot
// work with GPU ranks. Every rank reports its host, its local rank (from the launcher) and
// the GPU it would take, local_rank % (GPUs it sees), by its PCI bus id; every rank then
// makes the same decision from the same reports:
//
//   DEVICE_CPU    the CPU
//   DEVICE_AUTO   the GPU, when every rank sees one; otherwise the CPU on every rank
//   DEVICE_CUDA   the GPU; an error naming the ranks that see none
//
// and, whenever GPUs are chosen, an error when two ranks of one host would take the same GPU
// (more ranks on a node than GPUs): they would not fail, only crawl, or NCCL would refuse.
// local_rank % GPUs serves both common launches: mpirun -np N on an N-GPU node (every rank
// sees every GPU, rank r takes GPU r) and Slurm's --gpus-per-task=1 (every rank sees only
// its own GPU, as cuda:0).
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "parallel/communicator.h"

namespace sy {

enum class DeviceWish : uint8_t { kCpu, kAuto, kCuda };

// What one rank reports for the decision.
struct RankGpus {
  std::string host;
  int local_rank = 0;
  int gpus = 0;        // CUDA devices this rank sees (0 in a build without CUDA)
  std::string gpu_id;  // PCI bus id of GPU local_rank % gpus; empty when gpus == 0

  std::string encode() const;
  static absl::StatusOr<RankGpus> decode(const std::string& text);
};

// The device rank `rank` takes, given every rank's report (indexed by rank); the same
// decision, or the same error, on every rank. The pure rule, for tests; choose_job_device
// gathers the reports.
absl::StatusOr<Device> decide_device(DeviceWish wish, const std::vector<RankGpus>& ranks,
                                     int rank);

// This rank's report: host name, local rank from the launcher's environment, visible GPUs.
absl::StatusOr<RankGpus> local_rank_gpus();

// Collective over `world`: gathers every rank's report, decides, and makes the chosen GPU
// the calling thread's current device.
absl::StatusOr<Device> choose_job_device(DeviceWish wish, Communicator& world);

// Whether `comm` moves `device` tensors between its ranks: any communicator moves CPU
// tensors, and a group of one needs no transport; CUDA tensors between ranks need an
// NcclCommunicator on that device.
bool carries(const Communicator& comm, Device device);

// The communicator for `device` tensors over the ranks of `host`: null when `host` carries
// them itself (carries()), otherwise an NcclCommunicator on `device` over a copy of `host`
// (its host group, for counts and host helpers). Collective over `host`.
std::unique_ptr<Communicator> make_world_for(Device device, Communicator& host);

}  // namespace sy
