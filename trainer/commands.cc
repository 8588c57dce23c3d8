// The `train` and `data` subcommands: flags in, the library's entry points out.
#include "trainer/commands.h"

#include <filesystem>
#include <new>

#include "absl/strings/str_cat.h"
#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif
#include "parallel/local_communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/rank_env.h"
#include "trainer/cli.h"
#include "trainer/cli/last_resort.h"
#include "trainer/config.h"
#include "trainer/data/text_data.h"
#include "trainer/data/tokenizer.h"
#include "trainer/token_shards.h"
#include "trainer/train.h"

namespace sy {

absl::Status run_as_job(const switchyard::Experiment& config, std::ostream& out,
                        const std::function<absl::Status(Communicator*)>& body) {
  // Started by mpirun or srun: join the job. Every rank prints its banner line.
  SY_ASSIGN_OR_RETURN(RankEnv env, rank_env_from_environment());
  std::unique_ptr<MpiRuntime> mpi;
  Communicator* world = nullptr;
  double watchdog_timeout = 0;  // the process's before this job: restored after it
  if (env.size > 1) {
    mpi = std::make_unique<MpiRuntime>();
    world = &mpi->world();
    // From here on a rank that stops joining collectives ends the job instead of hanging it.
    watchdog_timeout = CollectiveWatchdog::process().timeout_seconds();
    CollectiveWatchdog::process().set_timeout(config.parallel().collective_timeout_s());
    SY_RETURN_IF_ERROR(check_rank_env_matches_world(env, world->rank(), world->size()));
  }
  LocalCommunicator alone;
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, world ? *world : alone));
  std::string device_text = device.str();
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) device_text = cuda::device_description(device.index);
#endif
  out << banner_line(env, host_name(), device_text) << std::endl;
  absl::Status status;
  // A failed allocation (sizes the memory estimate let through) is this rank's error like any
  // other: the other ranks must hear of it below, not wait for it in a collective.
  try {
    status = body(world);
  } catch (const std::bad_alloc& error) {
    status = absl::ResourceExhaustedError(out_of_memory_message("", error.what()));
  }
  if (world) CollectiveWatchdog::process().set_timeout(watchdog_timeout);
  // One rank's failure must end the whole job at once, not leave the others in a collective.
  if (!status.ok() && world && world->size() > 1) fail_all(std::string(status.message()));
  return status;
}

absl::StatusOr<switchyard::Experiment> load_resume_config(
    const FlagSet& flags, const std::string& resume, const std::vector<std::string>& overrides,
    const ConfigRules& rules) {
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
  return load_experiment(saved, overrides, rules);
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

absl::Status run_data_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard data",
                "--input FILE... --output DIR [--tokenizer DIR] [--field NAME] [--eot TOKEN] "
                "[--tokens_per_shard N]",
                "Tokenizes text files (each one document) or JSON Lines files (*.jsonl, one\n"
                "document per line's --field) into llm.c-layout token shards:\n"
                "DIR/train_000000.bin, ... and DIR/val_000000.bin (the last ~1% of the tokens).\n"
                "--tokenizer names a run or Hugging Face directory (tokenizer.json there, else\n"
                "bytes); without it the byte tokenizer is used.");
  std::vector<std::string> inputs;
  TextDataOptions options;
  std::string tokenizer_dir, eot = "auto";
  flags.add_strings("input", "FILE", &inputs, "a .txt or .jsonl file (required)");
  flags.add_string("output", "DIR", &options.output_dir, "directory for the shards (required)");
  flags.add_string("tokenizer", "DIR", &tokenizer_dir,
                   "run or Hugging Face directory whose tokenizer to use (default: bytes)");
  flags.add_string("field", "NAME", &options.field, "the text field of .jsonl lines");
  flags.add_string("eot", "TOKEN", &eot,
                   "token appended after each document: its text (e.g. \"<|endoftext|>\"), "
                   "\"none\", or \"auto\" (the tokenizer's first eos; none for bytes)");
  flags.add_int("tokens_per_shard", "N", &options.tokens_per_shard, "tokens per shard file");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("input"));
  SY_RETURN_IF_ERROR(flags.require("output"));
  options.inputs = inputs;
  std::unique_ptr<Tokenizer> tokenizer = make_byte_tokenizer();
  if (!tokenizer_dir.empty()) {
    auto loaded = load_tokenizer(tokenizer_dir);
    if (!loaded.ok())
      return absl::InvalidArgumentError(absl::StrCat("--tokenizer: ", loaded.status().message()));
    tokenizer = std::move(*loaded);
  }
  if (eot == "auto") {
    if (tokenizer->kind() != "bytes" && !tokenizer->eos_ids().empty())
      options.end_of_document = tokenizer->eos_ids().front();
  } else if (eot != "none") {
    std::optional<int32_t> id = tokenizer->token_to_id(eot);
    if (!id)
      return absl::InvalidArgumentError(absl::StrCat(
          "--eot: \"", eot, "\" is not a token of the ", tokenizer->kind(),
          " tokenizer; give a token's text, \"none\" or \"auto\""));
    options.end_of_document = *id;
  }
  return write_token_shards(*tokenizer, options, &out);
}

}  // namespace sy
