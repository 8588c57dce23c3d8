// The `train` and `data` subcommands: flags in, the library's entry points out.
#include "trainer/commands.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif
#include "absl/strings/numbers.h"
#include "models/generate.h"
#include "models/model_spec.h"
#include "parallel/local_communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/rank_env.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/token_shards.h"
#include "trainer/tokenizer.h"
#include "trainer/train.h"

namespace sy {

absl::Status run_as_job(const switchyard::Experiment& config, std::ostream& out,
                        const std::function<absl::Status(Communicator*)>& body) {
  // Started by mpirun or srun: join the job. Every rank prints its banner line.
  SY_ASSIGN_OR_RETURN(RankEnv env, rank_env_from_environment());
  std::unique_ptr<MpiRuntime> mpi;
  Communicator* world = nullptr;
  if (env.size > 1) {
    mpi = std::make_unique<MpiRuntime>();
    world = &mpi->world();
    SY_RETURN_IF_ERROR(check_rank_env_matches_world(env, world->rank(), world->size()));
  }
  LocalCommunicator alone;
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, world ? *world : alone));
  std::string device_text = device.str();
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) device_text = cuda::device_description(device.index);
#endif
  out << banner_line(env, host_name(), device_text) << std::endl;
  absl::Status status = body(world);
  // One rank's failure must end the whole job at once, not leave the others in a collective.
  if (!status.ok() && world && world->size() > 1) fail_all(std::string(status.message()));
  return status;
}

absl::StatusOr<switchyard::Experiment> load_resume_config(
    const FlagSet& flags, const std::string& resume, const std::vector<std::string>& overrides) {
  if (flags.was_given("config") || flags.was_given("run_dir")) {
    return absl::InvalidArgumentError(
        "--resume DIR takes its config and run directory from DIR; drop --config and --run_dir "
        "(use --set to change a field)");
  }
  const std::string saved = (std::filesystem::path(resume) / "config.textproto").string();
  if (!std::filesystem::exists(saved)) {
    return absl::NotFoundError(
        absl::StrCat("--resume ", resume, ": no config.textproto there; is it a run directory?"));
  }
  return load_experiment(saved, overrides);
}

absl::Status run_train_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard train", "--config FILE [--set TEXT]... [--run_dir DIR] | --resume DIR",
                "Trains the experiment's model. --resume DIR continues the run in DIR from its\n"
                "latest checkpoint with the config saved there (--set may still override it,\n"
                "e.g. to train for more steps). SIGTERM or SIGUSR1 writes a checkpoint and stops.");
  ExperimentFlags experiment_flags;
  add_experiment_flags(flags, &experiment_flags);
  std::string run_dir, resume;
  flags.add_string("run_dir", "DIR", &run_dir, "run directory (overrides the config's run_dir)");
  flags.add_string("resume", "DIR", &resume, "continue the run in DIR from its latest checkpoint");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  TrainOptions options;
  switchyard::Experiment config;
  if (!resume.empty()) {
    SY_ASSIGN_OR_RETURN(config, load_resume_config(flags, resume, experiment_flags.overrides));
    options.run_dir = resume;
    options.resume = true;
  } else {
    SY_ASSIGN_OR_RETURN(config, load_experiment_from_flags(flags, experiment_flags));
    options.run_dir = run_dir.empty() ? config.run_dir() : run_dir;
  }
  install_stop_signal_handlers();

  return run_as_job(config, out, [&](Communicator* world) { return train(config, options, out, world); });
}

absl::Status run_generate_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard generate", "--checkpoint RUN_DIR --prompt TEXT [sampling flags]",
                "Loads the latest checkpoint of a run and continues the prompt, byte by byte.\n"
                "Temperature 0 is greedy decoding; the completion ends at a newline unless\n"
                "--stop_at_newline=false.");
  std::string run_dir, prompt, temperature = "0", top_p = "1";
  std::vector<std::string> overrides;
  int64_t max_new = 32, top_k = 0, seed = 0;
  bool stop_at_newline = true;
  flags.add_string("checkpoint", "RUN_DIR", &run_dir, "a run directory (its latest checkpoint)");
  flags.add_string("prompt", "TEXT", &prompt, "the text to continue");
  flags.add_int("max_new_tokens", "N", &max_new, "at most this many new tokens");
  flags.add_string("temperature", "T", &temperature, "sampling temperature; 0 = greedy");
  flags.add_int("top_k", "K", &top_k, "sample among the K likeliest tokens; 0 = all");
  flags.add_string("top_p", "P", &top_p, "sample within the smallest set of probability >= P");
  flags.add_int("seed", "S", &seed, "sampling seed");
  flags.add_bool("stop_at_newline", &stop_at_newline, "end the completion at a newline");
  flags.add_strings("set", "TEXT", &overrides,
                    "override a field of the run's config (e.g. device)");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("checkpoint"));
  SY_RETURN_IF_ERROR(flags.require("prompt"));
  SamplingOptions options;
  if (!absl::SimpleAtof(temperature, &options.temperature) || options.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--temperature ", temperature, ": give a number >= 0"));
  }
  if (!absl::SimpleAtof(top_p, &options.top_p) || options.top_p <= 0 || options.top_p > 1) {
    return absl::InvalidArgumentError(absl::StrCat("--top_p ", top_p, ": give a number in (0, 1]"));
  }
  if (max_new <= 0 || top_k < 0 || prompt.empty()) {
    return absl::InvalidArgumentError(
        "--max_new_tokens must be positive, --top_k >= 0, and --prompt not empty");
  }
  options.max_new_tokens = static_cast<int>(max_new);
  options.top_k = static_cast<int>(top_k);
  options.seed = static_cast<uint64_t>(seed);
  if (stop_at_newline) options.stop_tokens = {'\n'};

  const std::string saved = (std::filesystem::path(run_dir) / "config.textproto").string();
  if (!std::filesystem::exists(saved)) {
    return absl::NotFoundError(absl::StrCat("--checkpoint ", run_dir,
                                            ": no config.textproto there; is it a run directory?"));
  }
  SY_ASSIGN_OR_RETURN(switchyard::Experiment config, load_experiment(saved, overrides));
  LocalCommunicator alone;
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, alone));
  const ModelSpec spec = model_spec_from_config(config);
  for (unsigned char c : prompt) {
    if (c >= spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--prompt: byte ", int(c), " is outside the model's vocabulary of ", spec.vocab_size));
    }
  }
  ParamStore store(device);
  Transformer model(spec, store);
  SY_ASSIGN_OR_RETURN(std::string dir, latest_checkpoint(run_dir));
  // This process holds every expert: an expert-parallel checkpoint's shards are joined.
  SY_RETURN_IF_ERROR(load_checkpoint(dir, store, nullptr, {.expert_parallel = 1}).status());
  const std::vector<int32_t> completion =
      generate(model, {ByteTokenizer::encode(prompt)}, options)[0];
  std::string text;
  for (int32_t t : completion) text.push_back(t < 256 ? static_cast<char>(t) : '?');
  out << prompt << text;
  if (text.empty() || text.back() != '\n') out << "\n";
  return absl::OkStatus();
}

absl::Status run_data_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard data", "--input TEXT... --output DIR [--tokens_per_shard N]",
                "Tokenizes text files byte by byte into llm.c-layout token shards:\n"
                "DIR/train_000000.bin, ... and DIR/val_000000.bin (the last ~1% of the text).");
  std::vector<std::string> inputs;
  std::string output;
  int64_t tokens_per_shard = 100'000'000;
  flags.add_strings("input", "TEXT", &inputs, "a text file to tokenize (repeatable, required)");
  flags.add_string("output", "DIR", &output, "directory for the shards (required)");
  flags.add_int("tokens_per_shard", "N", &tokens_per_shard, "tokens per shard file");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("input"));
  SY_RETURN_IF_ERROR(flags.require("output"));
  if (tokens_per_shard <= 0) {
    return absl::InvalidArgumentError("--tokens_per_shard must be positive");
  }
  SY_RETURN_IF_ERROR(write_text_shards(inputs, output, tokens_per_shard));
  out << "wrote shards to " << output << "\n";
  return absl::OkStatus();
}

}  // namespace sy
