#include "rl/reward_command.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sy {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::string script(const std::string& name) {
  return std::string(SWITCHYARD_SOURCE_DIR) + "/tests/data/reward_commands/" + name;
}

std::unique_ptr<RewardCommand> start_ok(std::vector<std::string> argv,
                                        milliseconds timeout = milliseconds(10000)) {
  absl::StatusOr<std::unique_ptr<RewardCommand>> cmd = RewardCommand::start(argv, timeout);
  SY_CHECK(cmd.ok()) << cmd.status();
  return *std::move(cmd);
}

// Queries over `prompts` (kept alive by the caller), completion k for prompt k.
std::vector<RewardQuery> queries(const std::vector<Prompt>& prompts,
                                 const std::vector<std::string>& completions) {
  std::vector<RewardQuery> q;
  for (size_t k = 0; k < completions.size(); ++k) q.push_back({&prompts[k], completions[k]});
  return q;
}

Prompt arith(const std::string& text, const std::string& answer) {
  return {text, Json::Object{{"answer", Json(answer)}}};
}

bool is_gone(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

// Status message contains every one of `parts`.
::testing::AssertionResult mentions(const absl::Status& status,
                                    std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts)
    if (std::string(status.message()).find(part) == std::string::npos)
      return ::testing::AssertionFailure()
             << "message lacks \"" << part << "\": " << status.message();
  return ::testing::AssertionSuccess();
}

TEST(RewardRequestLineTest, MergesFieldsAndKeepsLinesValidUtf8) {
  Prompt p{"3 4>7=", Json::Object{{"numbers", Json(Json::Array{3, 4})}, {"target", Json(7)}}};
  EXPECT_EQ(reward_request_line(p, "3+4\n"),
            R"({"prompt":"3 4>7=","completion":"3+4\n","numbers":[3,4],"target":7})");
  // A byte-level policy can emit anything: bad bytes become U+FFFD, valid UTF-8 stays.
  EXPECT_EQ(reward_request_line(Prompt{"x", Json::Object{}}, std::string("\xff\xc3\xa9\0", 4)),
            "{\"prompt\":\"x\",\"completion\":\"\xef\xbf\xbd\xc3\xa9\\u0000\"}");
}

TEST(RewardCommandTest, ScoresBatchesInOrderAcrossCalls) {
  auto cmd = start_ok({"python3", script("echo_reward.py")});
  std::vector<Prompt> prompts = {arith("1+1=", "2"), arith("2+2=", "4"), arith("9*9=", "81")};
  // Rewards: completion length in characters, +100 when it is the answer.
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n", "5\n", "81\n"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, (std::vector<double>{102, 2, 103}));
  r = cmd->score(queries(prompts, {"", "4\n"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, (std::vector<double>{0, 102}));
  r = cmd->score({});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->empty());
  // The invalid byte arrives as one U+FFFD character.
  std::string odd("\xff\n", 2);
  r = cmd->score(queries(prompts, {odd}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, (std::vector<double>{2}));
  // Its stderr was captured, not lost and not mixed into rewards.
  EXPECT_NE(cmd->stderr_tail().find("scored request 5"), std::string::npos) << cmd->stderr_tail();
}

TEST(RewardCommandTest, LargeBatchWithChattyCommandDoesNotDeadlock) {
  // The command writes 1 MiB to stderr before reading, then answers each 1 KiB request with a
  // 1 KiB line: far beyond any pipe buffer in both directions at once.
  auto cmd = start_ok({"python3", script("misbehave.py"), "chatty"});
  std::vector<Prompt> prompts(2000, arith("1+1=", "2"));
  std::vector<std::string> completions;
  for (int k = 0; k < 2000; ++k) completions.push_back(std::string(1000 + k % 7, 'a'));
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, completions));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2000u);
  for (int k = 0; k < 2000; ++k) EXPECT_EQ((*r)[k], 1000 + k % 7);
}

TEST(RewardCommandTest, MissingOrNotExecutableCommandFailsToStart) {
  absl::StatusOr<std::unique_ptr<RewardCommand>> cmd =
      RewardCommand::start({"switchyard-no-such-reward-command", "--flag"}, milliseconds(500));
  ASSERT_FALSE(cmd.ok());
  EXPECT_TRUE(mentions(cmd.status(), {"reward command 'switchyard-no-such-reward-command --flag'",
                                      "cannot start", "No such file or directory"}));

  cmd = RewardCommand::start({"/nonexistent/dir/reward"}, milliseconds(500));
  ASSERT_FALSE(cmd.ok());
  EXPECT_TRUE(mentions(cmd.status(), {"/nonexistent/dir/reward", "cannot start"}));

  // A file that exists but lacks the execute bit (root ignores permission bits when reading
  // but not when executing a file with no x bit at all).
  std::string path = ::testing::TempDir() + "/reward_not_executable.sh";
  std::ofstream(path) << "#!/bin/sh\necho 1\n";
  chmod(path.c_str(), 0644);
  cmd = RewardCommand::start({path}, milliseconds(500));
  ASSERT_FALSE(cmd.ok());
  EXPECT_TRUE(mentions(cmd.status(), {path, "cannot start", "Permission denied", "executable"}));

  cmd = RewardCommand::start({}, milliseconds(500));
  ASSERT_FALSE(cmd.ok());
  EXPECT_TRUE(mentions(cmd.status(), {"empty"}));
  cmd = RewardCommand::start({"true"}, milliseconds(0));
  ASSERT_FALSE(cmd.ok());
  EXPECT_TRUE(mentions(cmd.status(), {"timeout"}));
}

TEST(RewardCommandTest, CommandThatExitsAtOnceIsReportedAndDoesNotRaiseSigpipe) {
  // By the time the batch is written the command is gone: the write meets a closed pipe,
  // which must be an error here, not a SIGPIPE that kills the test.
  auto cmd = start_ok({"sh", "-c", "echo 'reward: no model file' >&2; exit 0"});
  std::this_thread::sleep_for(milliseconds(200));
  std::vector<Prompt> prompts = {arith("1+1=", "2"), arith("2+2=", "4")};
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n", "4\n"}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(mentions(r.status(),
                       {"reward command 'sh -c", "exited with status 0", "reward: no model file"}));
  // A dead command stays dead: the same error again, at once.
  absl::StatusOr<std::vector<double>> again = cmd->score(queries(prompts, {"2\n"}));
  EXPECT_EQ(again.status(), r.status());
}

TEST(RewardCommandTest, WritingToAClosedStdinIsAnErrorNotASigpipe) {
  // The command closes its stdin but lives on for a moment: our write meets a pipe with no
  // reader (EPIPE, and a SIGPIPE that would end this test process if it were delivered),
  // and the error then reports how the command ended.
  auto cmd = start_ok({"sh", "-c", "exec 0<&-; sleep 0.3; echo 'reward: gave up' >&2; exit 2"});
  std::this_thread::sleep_for(milliseconds(100));
  std::vector<Prompt> prompts(2, arith("1+1=", "2"));
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n", "4\n"}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(
      mentions(r.status(), {"exited with status 2", "after answering 0 of 2", "reward: gave up"}));
}

TEST(RewardCommandTest, CrashMidBatchReportsExitStatusAndStderr) {
  auto cmd = start_ok({"python3", script("misbehave.py"), "crash"});
  std::vector<Prompt> prompts(3, arith("1+1=", "2"));
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"a", "b", "c"}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(
      mentions(r.status(), {"misbehave.py crash'", "exited with status 3", "after answering 1 of 3",
                            "reward: cannot score request 1: the judge fell over"}));
  EXPECT_TRUE(is_gone(cmd->pid()));
}

TEST(RewardCommandTest, DeathBySignalIsNamed) {
  auto cmd = start_ok({"sh", "-c", "read line; kill -SEGV $$"});
  std::vector<Prompt> prompts(1, arith("1+1=", "2"));
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n"}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(mentions(r.status(), {"killed by signal 11"}));
}

TEST(RewardCommandTest, HangingCommandTimesOutAndIsKilled) {
  auto cmd = start_ok({"sleep", "30"}, milliseconds(500));
  std::vector<Prompt> prompts(2, arith("1+1=", "2"));
  Clock::time_point t0 = Clock::now();
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n", "3\n"}));
  double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(mentions(r.status(), {"reward command 'sleep 30'", "timed out", "0.5 s",
                                    "after answering 0 of 2", "killed it"}));
  EXPECT_GE(elapsed, 0.45);
  EXPECT_LT(elapsed, 1.5);
  EXPECT_TRUE(is_gone(cmd->pid()));
}

TEST(RewardCommandTest, GarbageAnswersAreRejected) {
  std::vector<Prompt> prompts(2, arith("1+1=", "2"));
  {
    auto cmd = start_ok({"python3", script("misbehave.py"), "garbage"});
    absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n", "3\n"}));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(mentions(r.status(), {"misbehave.py garbage'", "reward line 1 of 2", "'hello'",
                                      "is not a JSON number"}));
    EXPECT_TRUE(is_gone(cmd->pid()));
  }
  {
    auto cmd = start_ok({"python3", script("misbehave.py"), "nan"});
    absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n", "3\n"}));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(mentions(r.status(), {"reward line 1 of 2", "'NaN'"}));
  }
  {
    // Valid JSON, but an infinite reward (1e999 overflows a double), or no "reward" key.
    auto cmd = start_ok({"sh", "-c", "read line; echo 1e999"});
    absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n"}));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(mentions(r.status(), {"reward line 1 of 1", "1e999"}));
    cmd = start_ok({"sh", "-c", "read line; echo '{\"score\": 1}'"});
    r = cmd->score(queries(prompts, {"2\n"}));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(mentions(r.status(), {"reward line 1 of 1", "{\"reward\": number}"}));
  }
}

TEST(RewardCommandTest, TooFewLinesTimeOutWithTheCount) {
  auto cmd = start_ok({"python3", script("misbehave.py"), "too_few"}, milliseconds(500));
  std::vector<Prompt> prompts(3, arith("1+1=", "2"));
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"a", "b", "c"}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(mentions(r.status(), {"timed out", "after answering 2 of 3"}));
}

TEST(RewardCommandTest, TooFewLinesThenExitReportsTheCount) {
  auto cmd = start_ok({"sh", "-c", "read a; echo 1; read b; read c"});
  std::vector<Prompt> prompts(3, arith("1+1=", "2"));
  absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"a", "b", "c"}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(mentions(r.status(), {"exited with status 0", "after answering 1 of 3"}));
}

TEST(RewardCommandTest, TooManyLinesAreRejected) {
  std::vector<Prompt> prompts(1, arith("1+1=", "2"));
  {
    auto cmd = start_ok({"python3", script("misbehave.py"), "too_many"});
    absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n"}));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(mentions(r.status(), {"answered more", "than the 1 completions", "'2'"}));
  }
  {
    // The extra line arrives after the batch is done: the next batch must not take it as
    // its first reward.
    auto cmd = start_ok({"python3", script("misbehave.py"), "late_extra"});
    absl::StatusOr<std::vector<double>> r = cmd->score(queries(prompts, {"2\n"}));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, (std::vector<double>{1}));
    std::this_thread::sleep_for(milliseconds(400));
    r = cmd->score(queries(prompts, {"2\n"}));
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(mentions(r.status(), {"output nobody asked for", "'7\\n'"}));
  }
}

TEST(RewardCommandTest, DestructorEndsTheCommand) {
  pid_t pid;
  {
    // Ignores EOF on stdin: the destructor must kill it rather than wait forever.
    auto cmd = start_ok({"sleep", "30"});
    pid = cmd->pid();
    EXPECT_FALSE(is_gone(pid));
  }
  EXPECT_TRUE(is_gone(pid));
}

}  // namespace
}  // namespace sy
