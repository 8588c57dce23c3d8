// The switchyard binary: the subcommands live in trainer/cli.cc's table, plus those of
// layers above trainer/ (rl/), registered here.
#include <iostream>
#include <string>
#include <vector>

#include "rl/rl_command.h"
#include "trainer/cli.h"
#include "trainer/cli/last_resort.h"
#include "trainer/io/hf_checkpoint.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  sy::register_subcommand({"rl", "fine-tune a checkpoint with GRPO or PPO", sy::run_rl_command});
  sy::register_rl_config_kind();  // `switchyard config` on an RL config
  sy::register_subcommand({"convert", "import a Hugging Face checkpoint as a run, or export a run",
                           sy::run_convert_command});
  // User errors come back as Status; library exceptions (std::bad_alloc above all) end here
  // as one error line, so that a user never sees an abort.
  return sy::run_catching_exceptions(args.empty() ? "" : args[0], std::cerr,
                                     [&] { return sy::run_cli(args, std::cout, std::cerr); });
}
