// The default run, exactly as the README starts it: `switchyard train --config
// configs/tiny.textproto` must finish and reach at least 90% exact-match accuracy on
// held-out arithmetic problems (chance is far below 1%). Label "e2e": it is the slowest
// test (about 1.5 minutes on 2 cores).
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "trainer/json.h"

namespace sy {
namespace {

TEST(DefaultRun, TinyConfigLearnsHeldOutArithmetic) {
  const std::string dir = std::filesystem::path(::testing::TempDir()) / "switchyard_default_run";
  std::filesystem::remove_all(dir);
  const std::string command =
      absl::StrCat(SWITCHYARD_BINARY, " train --config ", SWITCHYARD_SOURCE_DIR,
                   "/configs/tiny.textproto --run_dir ", dir, " > ", dir, ".log 2>&1");
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "see " << dir << ".log";

  std::ifstream metrics(std::filesystem::path(dir) / "metrics.jsonl");
  double accuracy = -1, first_loss = -1, last_loss = -1;
  for (std::string line; std::getline(metrics, line);) {
    auto j = parse_json(line);
    ASSERT_TRUE(j.ok()) << line;
    if (const Json* a = j->find("eval_accuracy")) accuracy = a->as_double();
    if (const Json* l = j->find("lm_loss")) {
      if (first_loss < 0) first_loss = l->as_double();
      last_loss = l->as_double();
    }
  }
  EXPECT_GE(accuracy, 0.90) << "final held-out exact-match accuracy";
  EXPECT_LT(last_loss, first_loss / 10);
}

}  // namespace
}  // namespace sy
