// The switchyard binary: the subcommands live in trainer/cli.cc's table, plus those of
// layers above trainer/ (rl/), registered here.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "rl/rl_command.h"
#include "trainer/cli.h"
#include "trainer/io/hf_checkpoint.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  sy::register_subcommand({"rl", "fine-tune a checkpoint with GRPO or PPO", sy::run_rl_command});
  sy::register_subcommand({"convert", "import a Hugging Face checkpoint as a run, or export a run",
                           sy::run_convert_command});
  // User errors come back as Status; this catch is the last line for library exceptions
  // (e.g. std::bad_alloc), so that a user still gets one line instead of an abort.
  try {
    return sy::run_cli(args, std::cout, std::cerr);
  } catch (const std::exception& error) {
    std::cerr << "switchyard: error: " << error.what() << "\n";
    return 1;
  }
}
