#pragma once
// `switchyard dump-step`: one training step's forward and backward, written to a safetensors
// file so that an outside oracle (bench/oracle.py, PyTorch) can recompute it from the file
// alone and compare.
//
// The step is the one a one-process run of the config would take next: weights from the
// config's init (or a checkpoint), the first micro-batch of that step's data (problems
// [next, next + micro_batch) of the arithmetic task, or the shard loader's next windows),
// and the trainer's loss scales for a step of that single micro-batch:
//   loss = CE(main) / lm targets + lambda / D * sum_k CE_k / module k's targets + balancing.
//
// Tensors:
//   batch.inputs, batch.targets  i32 [B, T]  as fed to the model (targets -1: no loss)
//   batch.mask                   i32 [B, T]  1 where the target carries loss
//   logits                       f32 [R, V]  main-head logits of the first R of the B*T rows
//   weight.<param>               f32         every parameter as used (incl. routing bias)
//   grad.<param>                 f32         d(loss)/d(param), every trainable parameter
// Metadata (strings; numbers printed with 17 significant digits):
//   format "switchyard-dump-step/1", compute_dtype (f32 or bf16: config.precision on the device),
//   device, step (of the checkpoint; 0 from init), config (the resolved text),
//   spec.<field>  the model's shape (models/model_spec.h), defaults resolved,
//   loss.total, loss.lm, loss.mtp (weighted, as in the total), loss.mtp.<k> (mean CE of
//   module k, unweighted), loss.balance (all balancing terms), loss.balance.{aux,seq_aux,z}
//   (summed over MoE layers) and loss.{aux,seq_aux,z}[<layer prefix>] per MoE layer,
//   count.lm, count.mtp.<k> (target tokens), eval.lm_sum (summed CE from eval_loss).
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "configs/switchyard.pb.h"

namespace sy {

struct DumpStepOptions {
  std::string out_path;
  // A run directory: weights and data position from its latest checkpoint. Empty: init.
  std::string checkpoint_dir;
  // Rows of logits to keep; 0: all of them up to 16M values, else as many rows as fit.
  int64_t logits_rows = 0;
};

// Runs the step on the config's device and writes the file; one summary line goes to `log`.
absl::Status dump_step(const switchyard::Experiment& config, const DumpStepOptions& options,
                       std::ostream& log);

absl::Status run_dump_step_command(const std::vector<std::string>& args, std::ostream& out);

}  // namespace sy
