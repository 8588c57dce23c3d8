#include "parallel/collective_watchdog.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "parallel/rank_env.h"

namespace sy {
namespace {

// How long the process watchdog lets an abort (ncclCommAbort) run before it exits anyway: an
// abort of a communicator whose peer is stopped may itself wait on that peer.
constexpr std::chrono::seconds kAbortWait{10};

double seconds(CollectiveWatchdog::Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Runs on the watchdog's thread while the main thread is still blocked in the call: print,
// cancel what can be cancelled, and leave without unwinding or calling MPI (MPI_Abort from
// this thread would break MPI_THREAD_FUNNELED). The non-zero exit makes the launcher end the
// other ranks, as it does for a rank that dies.
void report_and_exit(const CollectiveWatchdog::Expiry& expiry) {
  int rank = CollectiveWatchdog::process().world_rank();
  if (rank < 0) {
    absl::StatusOr<RankEnv> env = rank_env_from_environment();
    rank = env.ok() ? env->rank : 0;
  }
  const std::string prefix =
      absl::StrCat("switchyard: error: [rank ", rank, "/", host_name(), "] ");
  std::fflush(stdout);
  for (absl::string_view line : absl::StrSplit(expiry.message, '\n')) {
    const std::string text = absl::StrCat(prefix, line, "\n");
    std::fputs(text.c_str(), stderr);
  }
  std::fflush(stderr);
  if (expiry.abort) {
    // Detached, since it may never return; the promise outlives it through the shared state.
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> finished = done->get_future();
    std::thread([abort = expiry.abort, done] {
      abort();
      done->set_value();
    }).detach();
    finished.wait_for(kAbortWait);
  }
  std::_Exit(1);
}

}  // namespace

std::string describe(const CollectiveCall& call) {
  std::string text = call.op;
  if (call.dtype[0] != '\0') absl::StrAppend(&text, " of ", call.elements, " ", call.dtype);
  absl::StrAppend(&text, " on rank ", call.group_rank, " of a group of ", call.group_size);
  if (call.sequence > 0) absl::StrAppend(&text, " (call #", call.sequence, " on this group)");
  return text;
}

CollectiveWatchdog::CollectiveWatchdog(Handler handler) : handler_(std::move(handler)) {}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

CollectiveWatchdog& CollectiveWatchdog::process() {
  // Never destroyed: its thread may be reporting while the process exits.
  static CollectiveWatchdog* watchdog = new CollectiveWatchdog(report_and_exit);
  return *watchdog;
}

void CollectiveWatchdog::set_timeout(double timeout_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool on = timeout_seconds > 0;
  timeout_ = on ? std::chrono::duration_cast<Clock::duration>(
                      std::chrono::duration<double>(timeout_seconds))
                : Clock::duration(0);
  enabled_.store(on, std::memory_order_relaxed);
  if (on && !thread_.joinable()) thread_ = std::thread([this] { run(); });
  wake_.notify_all();  // a shorter timeout takes effect now, not after the old tick
}

double CollectiveWatchdog::timeout_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seconds(timeout_);
}

CollectiveWatchdog::Clock::duration CollectiveWatchdog::tick() const {
  // A few looks per timeout: an expiry is reported at most a quarter timeout (or 1 s) late.
  return std::clamp<Clock::duration>(timeout_ / 4, std::chrono::milliseconds(10),
                                     std::chrono::seconds(1));
}

CollectiveWatchdog::Scope::Scope(CollectiveWatchdog& watchdog, const CollectiveCall& call)
    : watchdog_(watchdog.enabled() ? &watchdog : nullptr) {
  if (!watchdog_) return;
  const Clock::time_point now = Clock::now();
  std::lock_guard<std::mutex> lock(watchdog_->mu_);
  saved_call_ = watchdog_->call_;
  saved_start_ = watchdog_->start_;
  saved_active_ = watchdog_->active_;
  saved_reported_ = watchdog_->reported_;
  watchdog_->call_ = call;
  watchdog_->start_ = now;
  watchdog_->active_ = true;
  watchdog_->reported_ = false;
}

CollectiveWatchdog::Scope::~Scope() {
  if (!watchdog_) return;
  std::lock_guard<std::mutex> lock(watchdog_->mu_);
  // The outer call's clock keeps running from its own start: it has been waiting all along.
  watchdog_->call_ = saved_call_;
  watchdog_->start_ = saved_start_;
  watchdog_->active_ = saved_active_;
  watchdog_->reported_ = saved_reported_;
}

int CollectiveWatchdog::add_poller(Poller poller) {
  std::lock_guard<std::mutex> lock(poll_mu_);
  const int id = next_poller_++;
  pollers_.emplace(id, std::move(poller));
  return id;
}

void CollectiveWatchdog::remove_poller(int id) {
  std::lock_guard<std::mutex> lock(poll_mu_);
  pollers_.erase(id);
}

void CollectiveWatchdog::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (timeout_ <= Clock::duration(0)) {
      wake_.wait(lock);  // off: sleep until turned on again or stopped
      continue;
    }
    wake_.wait_for(lock, tick());
    if (stopping_ || timeout_ <= Clock::duration(0)) continue;
    const Clock::duration timeout = timeout_;
    const Clock::time_point now = Clock::now();
    std::optional<Expiry> host_expiry;
    if (active_ && !reported_ && now - start_ >= timeout) {
      reported_ = true;
      host_expiry = Expiry{
          absl::StrFormat(
              "%s has waited %.1f s for the other ranks, past parallel.collective_timeout_s = "
              "%g; a rank of the group is stopped, hung or far behind (each rank that reached "
              "this call reports it: the rank missing from these reports is the one to look "
              "at). Ending the job.",
              describe(call_), seconds(now - start_), seconds(timeout)),
          {}};
    }
    lock.unlock();  // the main thread may begin and end calls while we report or poll
    if (host_expiry) handler_(*host_expiry);
    {
      // Held across the handler too, so that a poller's state (and the communicator its
      // abort cancels) lives until the handler is done with it.
      std::lock_guard<std::mutex> polling(poll_mu_);
      for (auto& [id, poller] : pollers_) {
        if (std::optional<Expiry> expiry = poller(now, timeout)) handler_(*expiry);
      }
    }
    lock.lock();
  }
}

}  // namespace sy
