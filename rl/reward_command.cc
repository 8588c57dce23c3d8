#include "rl/reward_command.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace sy {

namespace {

using Clock = std::chrono::steady_clock;

// A reward line longer than this is garbage, not something to buffer without end.
constexpr size_t kMaxLineBytes = 1 << 20;
// How much of the command's stderr is kept, and how many of its last lines a message shows.
constexpr size_t kStderrTailBytes = 4096;
constexpr int kStderrLines = 10;
// How long a command that closed its stdout gets to finish dying (its last stderr lines
// and exit status are worth waiting for), and how long the destructor waits after closing
// stdin before it kills.
constexpr std::chrono::milliseconds kExitGrace{1000};
constexpr std::chrono::milliseconds kShutdownGrace{200};
constexpr size_t kShownBytes = 200;

// Appends the UTF-8 sequence at s[i..] when it is valid (no overlongs, surrogates or code
// points past U+10FFFF) and returns its length, else 0.
size_t valid_utf8_sequence(std::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf)
    len = 2, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef)
    len = 3, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4)
    len = 4, cp = c & 0x07;
  else
    return 0;
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

// The text with each byte that does not start a valid UTF-8 sequence replaced by U+FFFD.
std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len = valid_utf8_sequence(s, i);
    if (len == 0) {
      out += "\xef\xbf\xbd";
      ++i;
    } else {
      out.append(s.substr(i, len));
      i += len;
    }
  }
  return out;
}

Json with_valid_utf8(const Json& value) {
  if (value.is_string()) return Json(to_valid_utf8(value.as_string()));
  if (value.is_array()) {
    Json::Array out;
    for (const Json& v : value.as_array()) out.push_back(with_valid_utf8(v));
    return Json(std::move(out));
  }
  if (value.is_object()) {
    Json::Object out;
    for (const auto& [k, v] : value.as_object())
      out.emplace_back(to_valid_utf8(k), with_valid_utf8(v));
    return Json(std::move(out));
  }
  return value;
}

// write() that cannot raise SIGPIPE: SIGPIPE is blocked on this thread for the call, and a
// SIGPIPE the write raised is consumed before unblocking (one that was already pending is
// left alone). Leaves the process-wide disposition as it was.
ssize_t write_without_sigpipe(int fd, const char* data, size_t size) {
  sigset_t pipe_set, old_mask, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
  sigpending(&pending);
  bool was_pending = sigismember(&pending, SIGPIPE);
  ssize_t written = write(fd, data, size);
  int saved_errno = errno;
  if (written < 0 && saved_errno == EPIPE && !was_pending) {
    timespec zero{0, 0};
    while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  errno = saved_errno;
  return written;
}

// An argument as shown in messages: double-quoted when it holds spaces or quotes, so the
// words of `sh -c "..."` stay visible as one argument.
std::string quote_arg(const std::string& arg) {
  if (!arg.empty() && arg.find_first_of(" \t\n'\"\\") == std::string::npos) return arg;
  std::string out = "\"";
  for (char c : arg) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// A line as shown in a message: escaped, cut at kShownBytes.
// (absl::string_view is its own type in this abseil build, hence the explicit conversion.)
std::string shown(std::string_view line) {
  absl::string_view text(line.data(), std::min(line.size(), kShownBytes));
  if (line.size() <= kShownBytes) return absl::StrCat("'", absl::CHexEscape(text), "'");
  return absl::StrCat("'", absl::CHexEscape(text), "'... (", line.size(), " bytes)");
}

std::string seconds(std::chrono::milliseconds d) {
  return absl::StrCat(static_cast<double>(d.count()) / 1000.0, " s");
}

int poll_ms(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

// A reward line: a finite JSON number, or an object with a finite numeric "reward".
absl::StatusOr<double> parse_reward(std::string_view line) {
  absl::StatusOr<Json> json = parse_json(line);
  const Json* number = nullptr;
  if (json.ok()) {
    if (json->is_number())
      number = &*json;
    else if (json->is_object())
      number = json->find("reward");
  }
  if (number == nullptr || !number->is_number())
    return absl::InvalidArgumentError(
        absl::StrCat(shown(line), " is not a JSON number or an object {\"reward\": number}"));
  double reward = number->as_double();
  if (!std::isfinite(reward))
    return absl::InvalidArgumentError(absl::StrCat(shown(line), " is not a finite reward"));
  return reward;
}

}  // namespace

std::string reward_request_line(const Prompt& prompt, std::string_view completion) {
  Json line = Json::Object{};
  line.set("prompt", to_valid_utf8(prompt.text));
  line.set("completion", to_valid_utf8(completion));
  if (prompt.fields.is_object()) {
    for (const auto& [key, value] : prompt.fields.as_object()) {
      SY_CHECK(key != "prompt" && key != "completion")
          << "task field \"" << key << "\" collides with a reserved key of the request line";
      line.set(to_valid_utf8(key), with_valid_utf8(value));
    }
  }
  return to_json(line);
}

absl::StatusOr<std::unique_ptr<RewardCommand>> RewardCommand::start(
    std::vector<std::string> argv, std::chrono::milliseconds timeout) {
  if (argv.empty() || argv[0].empty())
    return absl::InvalidArgumentError("reward command: the command line is empty");
  std::vector<std::string> quoted;
  for (const std::string& a : argv) quoted.push_back(quote_arg(a));
  std::unique_ptr<RewardCommand> cmd(new RewardCommand(absl::StrJoin(quoted, " "), timeout));
  if (timeout.count() <= 0)
    return absl::InvalidArgumentError(absl::StrCat("reward command '", cmd->display_,
                                                   "': the timeout must be positive, got ",
                                                   timeout.count(), " ms"));

  // Close-on-exec everywhere: the child keeps only the ends dup2'ed onto 0/1/2, so no other
  // copy of a write end keeps a pipe open after either side is gone.
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    int saved_errno = errno;
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]})
      if (fd >= 0) close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("reward command '", cmd->display_, "': pipe: ", std::strerror(saved_errno)));
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  // Descriptors the parent opened without close-on-exec (MPI's sockets, files) stay ours.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#endif
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group, so a timeout kills what it started too (a shell's children); a
  // default SIGPIPE and an empty mask, whatever this process set for itself.
  sigset_t default_signals, empty_mask;
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  sigemptyset(&empty_mask);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  posix_spawnattr_setsigmask(&attr, &empty_mask);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  std::vector<char*> c_argv;
  for (std::string& a : argv) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  // posix_spawnp reports a failed exec (not found, not executable) as its return value.
  int rc = posix_spawnp(&cmd->pid_, argv[0].c_str(), &actions, &attr, c_argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  cmd->stdin_fd_ = in[1];
  cmd->stdout_fd_ = out[0];
  cmd->stderr_fd_ = err[0];
  if (rc != 0) {
    cmd->pid_ = -1;
    cmd->reaped_ = true;
    std::string hint = rc == ENOENT   ? " (is it installed, and on PATH or given with its path?)"
                       : rc == EACCES ? " (is it executable?)"
                                      : "";
    return absl::FailedPreconditionError(absl::StrCat(
        "reward command '", cmd->display_, "': cannot start: ", std::strerror(rc), hint));
  }
  for (int fd : {cmd->stdin_fd_, cmd->stdout_fd_, cmd->stderr_fd_})
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return cmd;
}

RewardCommand::~RewardCommand() {
  if (!reaped_ && pid_ > 0) {
    // EOF on stdin is the polite way to end it; kill only what does not take the hint.
    if (stdin_fd_ >= 0) close(stdin_fd_), stdin_fd_ = -1;
    Clock::time_point deadline = Clock::now() + kShutdownGrace;
    siginfo_t info{};
    while (Clock::now() < deadline) {
      info.si_pid = 0;
      if (waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    kill_and_reap();
  }
  close_fds();
}

void RewardCommand::close_fds() {
  for (int* fd : {&stdin_fd_, &stdout_fd_, &stderr_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void RewardCommand::kill_and_reap() {
  if (reaped_ || pid_ <= 0) return;
  // The group first (the command's own children), while the unreaped leader keeps the
  // group id from being reused; then the leader itself, in case it left the group.
  kill(-pid_, SIGKILL);
  kill(pid_, SIGKILL);
  while (waitpid(pid_, &wait_status_, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

bool RewardCommand::drain_stderr() {
  if (stderr_fd_ < 0) return true;
  char buf[4096];
  for (;;) {
    ssize_t n = read(stderr_fd_, buf, sizeof(buf));
    if (n > 0) {
      stderr_tail_.append(buf, static_cast<size_t>(n));
      if (stderr_tail_.size() > kStderrTailBytes)
        stderr_tail_.erase(0, stderr_tail_.size() - kStderrTailBytes);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    close(stderr_fd_);  // EOF, or an error that leaves nothing more to read
    stderr_fd_ = -1;
    return true;
  }
}

std::string RewardCommand::stderr_suffix() const {
  std::string_view tail = stderr_tail_;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.remove_suffix(1);
  if (tail.empty()) return "";
  // Keep what follows the kStderrLines-th newline from the end.
  size_t start = tail.size();
  for (int lines = 0; lines < kStderrLines && start > 0; ++lines) {
    size_t nl = tail.rfind('\n', start - 1);
    start = nl == std::string_view::npos ? 0 : nl;
  }
  if (start > 0) ++start;
  return absl::StrCat("; its stderr ends with:\n", std::string(tail.substr(start)));
}

std::string RewardCommand::describe_exit() {
  // Stdout is closed; the rest of stderr and the exit status normally follow at once.
  Clock::time_point deadline = Clock::now() + kExitGrace;
  while (!drain_stderr() && Clock::now() < deadline) {
    pollfd p{stderr_fd_, POLLIN, 0};
    poll(&p, 1, poll_ms(deadline));
  }
  siginfo_t info{};
  for (;;) {
    info.si_pid = 0;
    // WNOWAIT: look without reaping, so kill_and_reap can still clear its process group.
    if (waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != 0) break;
    if (Clock::now() >= deadline) {
      kill_and_reap();
      return "closed its stdout but kept running (killed it)";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill_and_reap();
  if (WIFEXITED(wait_status_))
    return absl::StrCat("exited with status ", WEXITSTATUS(wait_status_));
  if (WIFSIGNALED(wait_status_)) {
    int sig = WTERMSIG(wait_status_);
    return absl::StrCat("was killed by signal ", sig, " (", strsignal(sig), ")");
  }
  return "ended";
}

absl::Status RewardCommand::fail(absl::Status status) {
  kill_and_reap();
  close_fds();
  dead_ = status;
  return status;
}

absl::StatusOr<std::vector<double>> RewardCommand::score(std::span<const RewardQuery> batch) {
  if (!dead_.ok()) return dead_;
  if (batch.empty()) return std::vector<double>{};
  const std::string who = absl::StrCat("reward command '", display_, "'");
  const size_t n = batch.size();

  // Anything on stdout now was not asked for: it would be taken for this batch's first
  // rewards and shift every reward after it. EOF means it exited since the last batch.
  drain_stderr();
  for (;;) {
    char buf[4096];
    ssize_t got = read(stdout_fd_, buf, sizeof(buf));
    if (got > 0) {
      stdout_buffer_.append(buf, static_cast<size_t>(got));
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    if (got == 0 && stdout_buffer_.empty()) {
      std::string how = describe_exit();
      return fail(absl::UnavailableError(
          absl::StrCat(who, ": ", how, " while idle, before this batch", stderr_suffix())));
    }
    break;
  }
  if (!stdout_buffer_.empty())
    return fail(absl::DataLossError(
        absl::StrCat(who, ": wrote output nobody asked for (more reward lines than completions?): ",
                     shown(stdout_buffer_), stderr_suffix())));

  std::string request;
  for (const RewardQuery& q : batch) {
    SY_CHECK(q.prompt != nullptr) << "RewardQuery without a prompt";
    absl::StrAppend(&request, reward_request_line(*q.prompt, q.completion), "\n");
  }

  // One poll loop writes the requests and reads rewards and stderr as each becomes
  // possible: a command that answers (or logs) before it has read the whole batch cannot
  // fill a pipe and deadlock against our writes.
  std::vector<double> rewards;
  rewards.reserve(n);
  size_t written = 0;
  bool stdin_broken = false;
  Clock::time_point deadline = Clock::now() + timeout_;
  auto progress = [&] { return absl::StrCat("after answering ", rewards.size(), " of ", n); };
  while (rewards.size() < n) {
    pollfd fds[3];
    int nfds = 0;
    int out_i = nfds++;
    fds[out_i] = {stdout_fd_, POLLIN, 0};
    int err_i = -1, in_i = -1;
    if (stderr_fd_ >= 0) err_i = nfds++, fds[err_i] = {stderr_fd_, POLLIN, 0};
    if (written < request.size() && !stdin_broken)
      in_i = nfds++, fds[in_i] = {stdin_fd_, POLLOUT, 0};

    int ready = poll(fds, nfds, poll_ms(deadline));
    if (ready < 0 && errno != EINTR)
      return fail(absl::InternalError(absl::StrCat(who, ": poll: ", std::strerror(errno))));
    if (ready == 0 && Clock::now() >= deadline) {
      drain_stderr();
      std::string tail = stderr_suffix();
      return fail(absl::DeadlineExceededError(absl::StrCat(who, ": timed out: no reward within ",
                                                           seconds(timeout_), " (", progress(),
                                                           " completions); killed it", tail)));
    }
    if (ready <= 0) continue;

    if (in_i >= 0 && fds[in_i].revents != 0) {
      ssize_t w =
          write_without_sigpipe(stdin_fd_, request.data() + written, request.size() - written);
      if (w > 0) {
        written += static_cast<size_t>(w);
      } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        // EPIPE: it stopped reading, most likely because it died; stdout's EOF will say how.
        // Until then it may still answer what it has read.
        stdin_broken = true;
      }
    }
    if (err_i >= 0 && fds[err_i].revents != 0) drain_stderr();
    if (fds[out_i].revents == 0) continue;

    char buf[65536];
    ssize_t got = read(stdout_fd_, buf, sizeof(buf));
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return fail(absl::InternalError(absl::StrCat(who, ": read: ", std::strerror(errno))));
    }
    if (got == 0) {
      std::string how = describe_exit();
      return fail(absl::UnavailableError(
          absl::StrCat(who, ": ", how, " ", progress(), " completions", stderr_suffix())));
    }
    stdout_buffer_.append(buf, static_cast<size_t>(got));
    size_t start = 0;
    for (size_t eol; (eol = stdout_buffer_.find('\n', start)) != std::string::npos;
         start = eol + 1) {
      std::string_view line(stdout_buffer_.data() + start, eol - start);
      if (rewards.size() == n)
        return fail(absl::DataLossError(
            absl::StrCat(who, ": answered more lines than the ", n,
                         " completions it was sent; the extra one: ", shown(line))));
      absl::StatusOr<double> reward = parse_reward(line);
      if (!reward.ok())
        return fail(absl::InvalidArgumentError(
            absl::StrCat(who, ": reward line ", rewards.size() + 1, " of ", n, ": ",
                         reward.status().message(), stderr_suffix())));
      rewards.push_back(*reward);
      deadline = Clock::now() + timeout_;  // the timeout bounds silence, not the whole batch
    }
    stdout_buffer_.erase(0, start);
    if (stdout_buffer_.size() > kMaxLineBytes)
      return fail(absl::InvalidArgumentError(
          absl::StrCat(who, ": reward line ", rewards.size() + 1, " of ", n, " is longer than ",
                       kMaxLineBytes, " bytes: ", shown(stdout_buffer_))));
  }
  if (written < request.size())
    return fail(absl::DataLossError(absl::StrCat(
        who, ": answered all ", n, " completions before reading them all (", written, " of ",
        request.size(), " request bytes taken); its answers cannot be matched to completions")));
  if (!stdout_buffer_.empty())
    return fail(absl::DataLossError(
        absl::StrCat(who, ": answered more than the ", n,
                     " completions it was sent; after the last: ", shown(stdout_buffer_))));
  return rewards;
}

}  // namespace sy
