#pragma once
// An external reward: a long-running command that scores completions, for rewards
// switchyard cannot compute itself (unit tests of generated code, a judge model, ...).
//
// Protocol (JSON lines). For each completion switchyard writes one line to the command's
// stdin:
//     {"prompt":"37+48=","completion":"85\n","answer":"85"}
// i.e. the prompt text, the completion, and the task's fields (rl/tasks.h) merged in, in
// batch order, flushed at the end of the batch. The command answers one line per
// completion, in the same order, on its stdout: a JSON number (`1`, `0.25`) or an object
// with a numeric "reward" (`{"reward": 1, "note": "..."}`; other keys are ignored). The
// reward must be finite. The command stays up across batches and should exit when its
// stdin closes. Its stderr is captured (the last lines go into error messages), not shown.
//
// Text goes out as JSON strings; a byte-level policy can emit bytes that are not UTF-8, and
// those are replaced with U+FFFD so that the line is valid UTF-8 for any JSON reader.
//
// Every failure is a Status naming the command and what happened, and leaves the command
// dead (killed and reaped): later calls repeat the error. Start a new one to go on.
//  - cannot start: not found, not executable;
//  - exits or dies: the exit status or signal, and its last stderr lines;
//  - silent for longer than the timeout while rewards are owed: killed, "timed out";
//  - garbage: a line that is not a finite number or {"reward": number}, more lines than
//    completions, output nobody asked for.
// Writing to a command that died never raises SIGPIPE in switchyard: the write is made with
// SIGPIPE blocked on the calling thread, and EPIPE is handled like a death.
//
// Not thread-safe: one caller at a time. Under MPI, run it on one rank (e.g. rank 0 scores
// the gathered batch and broadcasts the rewards) or one per rank for its own completions.
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "rl/tasks.h"

namespace sy {

// One completion to score, and the prompt it answers (not owned).
struct RewardQuery {
  const Prompt* prompt = nullptr;
  std::string_view completion;
};

// The request line for one completion (without the '\n'): what the command reads.
std::string reward_request_line(const Prompt& prompt, std::string_view completion);

class RewardCommand {
 public:
  // Starts `argv` (argv[0] is looked up in PATH; no shell is involved unless argv names
  // one, e.g. {"sh", "-c", "..."}). `timeout`: the longest the command may stay silent
  // while it owes rewards (each reward line restarts the clock), so a command that answers
  // line by line needs only its time per completion, one that reads a whole batch first
  // its time per batch. Fails when the program cannot be started.
  static absl::StatusOr<std::unique_ptr<RewardCommand>> start(std::vector<std::string> argv,
                                                              std::chrono::milliseconds timeout);

  // Closes the command's stdin, gives it a moment to exit, then kills it.
  ~RewardCommand();
  RewardCommand(const RewardCommand&) = delete;
  RewardCommand& operator=(const RewardCommand&) = delete;

  // One reward per query, in order. An empty batch returns at once.
  absl::StatusOr<std::vector<double>> score(std::span<const RewardQuery> batch);

  // The command line as shown in messages.
  const std::string& display_name() const { return display_; }
  pid_t pid() const { return pid_; }
  // The last bytes of the command's stderr read so far (up to a few KiB).
  const std::string& stderr_tail() const { return stderr_tail_; }

 private:
  RewardCommand(std::string display, std::chrono::milliseconds timeout)
      : display_(std::move(display)), timeout_(timeout) {}

  // Reads what stderr has without blocking (keeping the tail); true at EOF.
  bool drain_stderr();
  // Marks the command dead with `status` (kill + reap first) and returns it.
  absl::Status fail(absl::Status status);
  // After stdout's EOF: collects the rest of stderr and the exit status (killing it if it
  // lingers), and describes how it ended.
  std::string describe_exit();
  void kill_and_reap();
  // "; its last stderr lines:\n..." or "" when it wrote none.
  std::string stderr_suffix() const;
  void close_fds();

  std::string display_;
  std::chrono::milliseconds timeout_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int wait_status_ = 0;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  std::string stdout_buffer_;  // bytes read past the last complete line
  std::string stderr_tail_;
  absl::Status dead_;  // ok while the command is usable
};

}  // namespace sy
