#pragma once
// Hugging Face checkpoints in and out: a directory with config.json and model.safetensors (or
// model.safetensors.index.json and its shards), as transformers' save_pretrained writes it,
// for LlamaForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM and Qwen3MoeForCausalLM.
//
// config.json becomes our model / moe sections (every field that changes the math is read; an
// option we cannot serve is refused with the field and its value), and each of our parameters
// is assembled from the checkpoint's tensors by a table (hf_checkpoint.cc): a name pattern on
// each side, the parts stacked along the first dimension (gate before up in w13, the experts
// one after another). Export runs the same table backwards and writes the Hub layout.
//
// This is the edge where the external format is read: nothing below trainer/ sees it.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/switchyard.pb.h"
#include "kernels/tensor.h"
#include "models/param_store.h"

namespace sy {

// Whether `dir` holds a Hugging Face checkpoint (its config.json), rather than our run.
bool is_hf_checkpoint(const std::string& dir);

// The experiment an HF checkpoint directory describes: name, model, moe and mtp (none), with
// train defaults that make it a valid experiment. Errors name DIR/config.json and the field.
absl::StatusOr<switchyard::Experiment> experiment_from_hf(const std::string& dir);

// Fills every parameter of `store` (built for experiment_from_hf(dir)'s model, on any device
// and any expert-parallel rank) from the checkpoint. Each rank reads only the tensors it
// holds: its own experts, every dense tensor. Missing, extra or misshapen tensors are errors
// naming the file and the tensor. `progress` (a console, null for none) gets
// trainer/progress.h's line over the bytes filled and a summary line.
absl::Status load_hf_weights(const std::string& dir, ParamStore& store,
                             std::ostream* progress = nullptr);

// Import: writes RUN_DIR as a trained run looks (config.textproto, checkpoints/step_00000000
// with fp32 weights, checkpoints/latest), plus the checkpoint's tokenizer and generation files
// copied verbatim and its config.json kept as hf_config.json (export starts from it). RUN_DIR
// must not exist; it appears whole or not at all.
absl::Status import_hf_checkpoint(const std::string& hf_dir, const std::string& run_dir,
                                  std::ostream& log);

struct HfExportOptions {
  DType dtype = DType::kBF16;               // of the written tensors: bf16 or f32
  int64_t max_shard_bytes = 5'000'000'000;  // one file when everything fits
};

// Export: the latest checkpoint of RUN_DIR as a directory transformers loads as is. The MTP
// modules, which these architectures lack, are left out (said on `log`). OUT_DIR must not
// exist; it appears whole or not at all.
absl::Status export_hf_checkpoint(const std::string& run_dir, const std::string& out_dir,
                                  const HfExportOptions& options, std::ostream& log);

// `switchyard convert --input DIR --output DIR [--dtype bf16|f32] [--max_shard_size 5GB]`.
absl::Status run_convert_command(const std::vector<std::string>& args, std::ostream& out);

}  // namespace sy
