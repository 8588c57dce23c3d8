// A training job in which rank 1 stalls inside a step while the other ranks go on to the
// step's next collective. Run under mpirun by ctest (tests/mpi/expect_failure.cmake) with
// parallel { collective_timeout_s: 3 }: the waiting ranks must end the job with an error that
// names them and the collective, within the timeout and a few seconds, and a non-zero exit.
//   stuck_rank sleep   rank 1 sleeps far longer than the timeout (a hung step)
//   stuck_rank stop    rank 1 stops itself with SIGSTOP (a suspended process)
//   stuck_rank nccl    as stop, training on one GPU per rank: rank 0's gradient traffic is
//                      NCCL work queued on its GPU that never completes (skipped, with a line
//                      ctest reads as a skip, where a rank has no GPU of its own)
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>

#include "google/protobuf/text_format.h"
#include "kernels/check.h"
#include "parallel/device_choice.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace {

constexpr char kRun[] = R"pb(
  device: DEVICE_CPU
  model {
    vocab_size: 64
    d_model: 16
    n_layers: 2
    n_heads: 2
    n_kv_heads: 1
    seq_len: 12
    first_k_dense: 1
    dense_ffn_hidden: 32
  }
  moe { num_experts: 4 top_k: 2 expert_hidden: 16 }
  data { arithmetic { min_digits: 1 max_digits: 1 operators: "+" eval_examples: 4 } }
  train { steps: 6 micro_batch: 2 cpu_threads: 1 }
  checkpoint { interval: 0 }
  parallel { collective_timeout_s: 3 }
)pb";

int g_rank = -1;

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "sleep";
  SY_CHECK(mode == "sleep" || mode == "stop" || mode == "nccl")
      << "mode is sleep, stop or nccl, got " << mode;
  switchyard::Experiment config;
  SY_CHECK(google::protobuf::TextFormat::ParseFromString(kRun, &config));
  if (mode == "nccl") {
    // Every rank of this single-host job sees the same GPUs; two ranks need two.
    absl::StatusOr<sy::RankGpus> gpus = sy::local_rank_gpus();
    if (!gpus.ok() || gpus->gpus < 2) {
      std::printf("skipped: needs a GPU per rank\n");
      return 0;
    }
    config.set_device(switchyard::Experiment::DEVICE_CUDA);
  }
  const absl::Status valid = sy::validate_experiment(config);
  SY_CHECK(valid.ok()) << valid;

  sy::set_after_backward_hook_for_testing([&](int64_t step, sy::ParamStore&) {
    if (step != 1 || g_rank != 1) return;
    std::fprintf(stderr, "rank 1 stalls in step 2 (%s)\n", mode.c_str());
    std::fflush(stderr);
    if (mode != "sleep") {
      raise(SIGSTOP);
    } else {
      std::this_thread::sleep_for(std::chrono::seconds(120));
    }
  });
  const std::string run_dir =
      (std::filesystem::temp_directory_path() / ("switchyard_stuck_rank_" + mode)).string();
  const absl::Status status =
      sy::run_as_job(config, std::cout, [&](sy::Communicator* world) -> absl::Status {
        SY_CHECK(world != nullptr && world->size() >= 2) << "run under mpirun with 2+ ranks";
        g_rank = world->rank();
        return sy::train(config, {.run_dir = run_dir}, std::cout, world);
      });
  if (!status.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", g_rank, std::string(status.message()).c_str());
    return 1;
  }
  std::printf("rank %d finished although rank 1 stalled\n", g_rank);
  return 0;
}
