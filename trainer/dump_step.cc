#include "trainer/dump_step.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "kernels/cpu/threads.h"
#include "models/model_spec.h"
#include "models/transformer.h"
#include "parallel/local_communicator.h"
#include "trainer/arithmetic.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/safetensors.h"
#include "trainer/token_shards.h"
#include "trainer/train.h"

namespace sy {
namespace {

constexpr absl::string_view kRouterSuffix = ".moe.router.weight";
// Logits kept by default: 64 MiB of f32, all of them for any model small enough to check
// element by element.
constexpr int64_t kDefaultLogitValues = int64_t{1} << 24;

std::string number(double value) { return absl::StrFormat("%.17g", value); }

// The first micro-batch of the step a one-process run would take from `position`.
absl::StatusOr<TokenBatch> first_micro_batch(const switchyard::Experiment& config,
                                             const ModelSpec& spec, const DataPosition& position) {
  const auto& data = config.data();
  const int64_t micro = config.train().micro_batch();
  if (data.source() == switchyard::DataConfig::DATA_ARITHMETIC) {
    SY_ASSIGN_OR_RETURN(ArithmeticTask task,
                        ArithmeticTask::create({.min_digits = data.arithmetic().min_digits(),
                                                .max_digits = data.arithmetic().max_digits(),
                                                .operators = data.arithmetic().operators()},
                                               config.train().seed()));
    return task.make_batch(micro, spec.seq_len, position.next_index, Split::kTrain);
  }
  SY_ASSIGN_OR_RETURN(ShardLoader loader, ShardLoader::open({.pattern = data.train_shards(),
                                                             .seq_len = spec.seq_len,
                                                             .vocab_size = spec.vocab_size,
                                                             .seed = config.train().seed()}));
  SY_RETURN_IF_ERROR(loader.set_position({position.epoch, position.index}));
  return loader.next_batch(micro);
}

std::map<std::string, std::string> spec_metadata(const ModelSpec& s) {
  const MoeSpec& m = s.moe;
  return {
      {"spec.vocab_size", number(s.vocab_size)},
      {"spec.d_model", number(s.d_model)},
      {"spec.n_layers", number(s.n_layers)},
      {"spec.n_heads", number(s.n_heads)},
      {"spec.n_kv_heads", number(s.n_kv_heads)},
      {"spec.seq_len", number(s.seq_len)},
      {"spec.rope_theta", number(s.rope_theta)},
      {"spec.norm_eps", number(s.norm_eps)},
      {"spec.dense_ffn_hidden", number(s.dense_ffn_hidden)},
      {"spec.first_k_dense", number(s.first_k_dense)},
      {"spec.tie_embeddings", number(s.tie_embeddings)},
      {"spec.mtp_modules", number(s.mtp_modules)},
      {"spec.mtp_loss_weight", number(s.mtp_loss_weight)},
      {"spec.moe.num_experts", number(m.num_experts)},
      {"spec.moe.top_k", number(m.top_k)},
      {"spec.moe.expert_hidden", number(m.expert_hidden)},
      {"spec.moe.num_shared_experts", number(m.num_shared_experts)},
      {"spec.moe.score_function",
       m.score_function == ScoreFunction::kSigmoid ? "sigmoid" : "softmax"},
      {"spec.moe.normalize_topk", number(m.normalize_topk)},
      {"spec.moe.route_scale", number(m.route_scale)},
      {"spec.moe.capacity_factor", number(m.capacity_factor)},
      {"spec.moe.aux_loss_coef", number(m.aux_loss_coef)},
      {"spec.moe.z_loss_coef", number(m.z_loss_coef)},
      {"spec.moe.seq_aux_loss_coef", number(m.seq_aux_loss_coef)},
      {"spec.moe.bias_update_rate", number(m.bias_update_rate)},
      {"spec.moe.n_groups", number(m.n_groups)},
      {"spec.moe.topk_groups", number(m.topk_groups)},
  };
}

}  // namespace

absl::Status dump_step(const switchyard::Experiment& config, const DumpStepOptions& options,
                       std::ostream& log) {
  LocalCommunicator alone;
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, alone));
  cpu::set_cpu_threads(config.train().cpu_threads());
  const ModelSpec spec = model_spec_from_config(config);
  SY_ASSIGN_OR_RETURN(const DType compute, choose_precision(config, device));
  ParamStore store(device, compute);
  Transformer model(spec, store);
  store.initialize(config.train().seed());
  CheckpointState state;
  if (!options.checkpoint_dir.empty()) {
    SY_ASSIGN_OR_RETURN(std::string dir, latest_checkpoint(options.checkpoint_dir));
    SY_ASSIGN_OR_RETURN(
        state, load_checkpoint(dir, store, nullptr,
                               {.expert_parallel = config.parallel().expert_parallel_size()}));
  }
  SY_ASSIGN_OR_RETURN(TokenBatch batch, first_micro_batch(config, spec, state.data));

  // Names of the MoE layers, in moe_layers() order: trunk blocks, then MTP blocks, which is
  // also the order their routers were registered in.
  std::vector<std::string> moe_names;
  for (const Param* p : store.params()) {
    if (absl::EndsWith(p->name, kRouterSuffix))
      moe_names.push_back(p->name.substr(0, p->name.size() - kRouterSuffix.size()));
  }
  std::vector<MoeFfn*> moes = model.moe_layers();
  SY_CHECK(moe_names.size() == moes.size())
      << moe_names.size() << " router weights for " << moes.size() << " MoE layers";

  const TargetCounts counts = model.count_targets(batch.targets);
  const double lambda = spec.mtp_loss_weight;
  std::map<std::string, std::string> meta = spec_metadata(spec);
  meta["count.lm"] = number(static_cast<double>(counts.lm));

  // Each MTP module's mean CE on its own: a pass with only that module's loss switched on.
  for (int k = 0; k < spec.mtp_modules; ++k) {
    LossScales only;
    only.lm = 0;
    only.mtp.assign(spec.mtp_modules, 0.0);
    only.mtp[k] = counts.mtp[k] > 0 ? 1.0 / counts.mtp[k] : 0.0;
    only.balance = 0;
    meta[absl::StrCat("loss.mtp.", k)] =
        number(model.forward_backward(batch.inputs, batch.targets, only).mtp);
    meta[absl::StrCat("count.mtp.", k)] = number(static_cast<double>(counts.mtp[k]));
  }

  // The step itself, with the trainer's scales for a step of this one micro-batch.
  store.zero_grad();
  for (MoeFfn* m : moes) m->stats().reset(spec.moe.num_experts);
  LossScales scales;
  scales.lm = counts.lm > 0 ? 1.0 / counts.lm : 0.0;
  for (int k = 0; k < spec.mtp_modules; ++k)
    scales.mtp.push_back(counts.mtp[k] > 0 ? lambda / spec.mtp_modules / counts.mtp[k] : 0.0);
  scales.balance = 1.0;
  const LossTerms terms = model.forward_backward(batch.inputs, batch.targets, scales);
  meta["loss.total"] = number(terms.total());
  meta["loss.lm"] = number(terms.lm);
  meta["loss.mtp"] = number(terms.mtp);
  meta["loss.balance"] = number(terms.aux);
  double aux = 0, seq_aux = 0, z = 0;
  for (size_t i = 0; i < moes.size(); ++i) {
    const RoutingStats& s = moes[i]->stats();
    meta[absl::StrCat("loss.aux[", moe_names[i], "]")] = number(s.aux_loss);
    meta[absl::StrCat("loss.seq_aux[", moe_names[i], "]")] = number(s.seq_aux_loss);
    meta[absl::StrCat("loss.z[", moe_names[i], "]")] = number(s.z_loss);
    aux += s.aux_loss;
    seq_aux += s.seq_aux_loss;
    z += s.z_loss;
  }
  meta["loss.balance.aux"] = number(aux);
  meta["loss.balance.seq_aux"] = number(seq_aux);
  meta["loss.balance.z"] = number(z);

  // Main-head logits and the evaluation loss, from the forward alone (no MTP).
  const int64_t rows = batch.inputs.numel();
  const int64_t keep =
      options.logits_rows > 0
          ? std::min(rows, options.logits_rows)
          : std::min(rows, std::max<int64_t>(1, kDefaultLogitValues / spec.vocab_size));
  Tensor logits = model.logits(batch.inputs, false)
                      .view({rows, spec.vocab_size})
                      .rows(0, keep)
                      .to(Device::cpu())
                      .clone();
  meta["eval.lm_sum"] = number(model.eval_loss(batch.inputs, batch.targets).first);

  Tensor mask = Tensor::empty(batch.targets.shape(), DType::kI32);
  const std::vector<int32_t> targets = batch.targets.to_i32_vector();
  for (size_t i = 0; i < targets.size(); ++i) mask.data<int32_t>()[i] = targets[i] != kIgnoreIndex;

  meta["format"] = "switchyard-dump-step/1";
  meta["compute_dtype"] = dtype_name(store.compute_dtype());
  meta["device"] = device.str();
  meta["step"] = number(static_cast<double>(state.step));
  meta["config"] = resolved_experiment_text(config);

  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"batch.inputs", batch.inputs},
      {"batch.targets", batch.targets},
      {"batch.mask", mask},
      {"logits", logits},
  };
  for (const Param* p : store.params())
    tensors.emplace_back("weight." + p->name, p->value.to(Device::cpu()).clone());
  for (const Param* p : store.params()) {
    if (p->trainable) tensors.emplace_back("grad." + p->name, p->grad.to(Device::cpu()).clone());
  }
  SY_RETURN_IF_ERROR(save_safetensors(options.out_path, tensors, meta));
  log << absl::StrFormat(
      "dump-step: %s on %s (%s), step %d: loss %.6f (lm %.6f mtp %.6f balance %.6f) | %d "
      "tensors, %d of %d logit rows -> %s\n",
      config.name(), device.str(), meta["compute_dtype"], state.step, terms.total(), terms.lm,
      terms.mtp, terms.aux, tensors.size(), keep, rows, options.out_path);
  return absl::OkStatus();
}

absl::Status run_dump_step_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags(
      "switchyard dump-step",
      "--config FILE [--checkpoint RUN_DIR] [--set TEXT]... --out FILE.safetensors",
      "Runs one training step's forward and backward (no optimizer update) on the config's\n"
      "device and writes its batch, logits, loss terms, weights and gradients to a\n"
      "safetensors file, for bench/oracle.py to check against PyTorch. Weights come from\n"
      "the config's init, or from the latest checkpoint of RUN_DIR (whose config.textproto\n"
      "is used when --config is left out).");
  ExperimentFlags experiment_flags;
  add_experiment_flags(flags, &experiment_flags);
  DumpStepOptions options;
  flags.add_string("checkpoint", "RUN_DIR", &options.checkpoint_dir,
                   "take the weights and data position from this run's latest checkpoint");
  flags.add_string("out", "FILE", &options.out_path, "the safetensors file to write (required)");
  flags.add_int("logits_rows", "N", &options.logits_rows,
                "main-head logit rows to keep (0: all, up to 16M values)");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("out"));
  if (options.logits_rows < 0) return absl::InvalidArgumentError("--logits_rows must be >= 0");
  switchyard::Experiment config;
  if (!flags.was_given("config") && !options.checkpoint_dir.empty()) {
    const std::string saved =
        (std::filesystem::path(options.checkpoint_dir) / "config.textproto").string();
    if (!std::filesystem::exists(saved)) {
      return absl::NotFoundError(absl::StrCat("--checkpoint ", options.checkpoint_dir,
                                              ": no config.textproto there; is it a run "
                                              "directory? (or give --config)"));
    }
    SY_ASSIGN_OR_RETURN(config, load_experiment(saved, experiment_flags.overrides));
  } else {
    SY_ASSIGN_OR_RETURN(config, load_experiment_from_flags(flags, experiment_flags));
  }
  return dump_step(config, options, out);
}

}  // namespace sy
