// The switchyard binary: every subcommand lives in trainer/cli.cc's table.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "trainer/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // User errors come back as Status; this catch is the last line for library exceptions
  // (e.g. std::bad_alloc), so that a user still gets one line instead of an abort.
  try {
    return sy::run_cli(args, std::cout, std::cerr);
  } catch (const std::exception& error) {
    std::cerr << "switchyard: error: " << error.what() << "\n";
    return 1;
  }
}
