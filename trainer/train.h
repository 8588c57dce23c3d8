#pragma once
// The training loop: data -> forward/backward over micro-batches -> gradient sync -> clip ->
// AdamW -> schedule -> metrics -> eval -> checkpoints, on one rank or many (expert and data
// parallel over a Communicator), on CPUs or on one GPU per rank.
#include <functional>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "configs/switchyard.pb.h"
#include "models/param_store.h"
#include "parallel/communicator.h"
#include "trainer/stop.h"  // stop signals: train returns after a checkpoint

namespace sy {

struct TrainOptions {
  std::string run_dir;  // resolved: the config's run_dir or --run_dir
  bool resume = false;  // continue from run_dir's latest checkpoint
};

// Runs training; progress goes to `log` (the console; rank 0 only). Returns an error for
// anything a user can fix (bad data, a checkpoint that does not match the config, an
// unwritable run dir). `world` is every rank of the job (null: this process alone); every
// rank must call train with the same config. Each rank trains on its own micro_batch
// sequences, so the global batch is micro_batch x world size x grad_accum. On GPUs, GPU
// tensors travel over an NCCL communicator that train builds over `world` (an MPI world, say)
// unless `world` already carries them.
absl::Status train(const switchyard::Experiment& config, const TrainOptions& options,
                   std::ostream& log, Communicator* world = nullptr);

// The device this rank trains on: config.device, where DEVICE_AUTO means the GPU when every
// rank of `world` sees one, else the CPU on every rank. On GPUs each rank takes GPU
// local_rank % (GPUs it sees); two ranks of a host on one GPU, or DEVICE_CUDA with a rank
// that sees none, is an error naming the ranks (parallel/device_choice.h has the rule).
// Collective over `world`: the same decision on every rank. Also applies the config's
// process-wide kernel settings (config.deterministic), which every command that runs a model
// takes from here.
absl::StatusOr<Device> choose_device(const switchyard::Experiment& config, Communicator& world);

// The compute dtype on `device`: config.precision, where PRECISION_AUTO means bf16 on a GPU
// and f32 on the CPU; bf16 on the CPU is an error that says what to change.
absl::StatusOr<DType> choose_precision(const switchyard::Experiment& config, Device device);

// Test hook (fault injection): called on every rank after each step's backward and gradient
// sync, before the optimizer, with the 0-based step (e.g. to write a NaN into a gradient).
// Empty: none.
using TrainStepHook = std::function<void(int64_t step, ParamStore& store)>;
void set_after_backward_hook_for_testing(TrainStepHook hook);

}  // namespace sy
