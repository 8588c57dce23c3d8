#pragma once
// CollectiveWatchdog: ends a job whose collective waits too long for the other ranks.
//
// A collective completes only when every rank of its group joins; a rank that is stopped
// (SIGSTOP, a debugger), hung (a dead NFS mount, a stuck kernel) or lost in a loop never
// joins, and every other rank would wait forever. (A rank that dies is not this case: the
// launcher already ends the job within seconds.) The watchdog is one thread per process that
// wakes a few times per timeout and looks at
//   - the blocking host collective in progress, if any (MpiCommunicator brackets each MPI
//     call with a Scope: two clock reads and an uncontended lock, nothing on the wire), and
//   - asynchronous collectives through pollers (NcclCommunicator: work queued on the GPU
//     that has not completed, and NCCL's asynchronous errors).
// When one has waited longer than the timeout, the handler gets a message naming the
// operation, its size, the group and this rank. The process's watchdog prints it on stderr
// and exits non-zero, so the launcher (mpirun, srun --kill-on-bad-exit) ends every rank;
// each rank that reached the call prints the same, so the rank missing from the reports is
// the one that stalled. It never calls MPI itself: the runtime is MPI_THREAD_FUNNELED.
//
// Collectives are made by one thread (the MPI runtime's), so one host call is in progress at
// a time; nested Scopes (a collective built of others) report the innermost.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace sy {

// One collective call, as the timeout message names it.
struct CollectiveCall {
  const char* op = "";     // "all_reduce", "barrier", ...
  const char* dtype = "";  // element type ("f32", "f64", "bytes"); "" when nothing travels
  int64_t elements = 0;    // elements this rank passes in
  int group_rank = 0;
  int group_size = 1;
  uint64_t sequence = 0;  // 1-based count of watched calls on its group; 0 when not counted
};

// "all_reduce of 1024 f32 on rank 0 of a group of 2 (call #17 on this group)".
std::string describe(const CollectiveCall& call);

class CollectiveWatchdog {
 public:
  using Clock = std::chrono::steady_clock;
  struct Expiry {
    std::string message;
    // Cancels the stuck work (ncclCommAbort) before the process ends; may be empty.
    std::function<void()> abort;
  };
  using Handler = std::function<void(const Expiry&)>;
  // Asked on every tick, on the watchdog's thread, whether asynchronous work of its own has
  // waited longer than `timeout` or failed.
  using Poller =
      std::function<std::optional<Expiry>(Clock::time_point now, Clock::duration timeout)>;

  // `handler` runs on the watchdog's thread, at most once per expired call.
  explicit CollectiveWatchdog(Handler handler);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // The one the communicators report to; its handler prints the message (prefixed with the
  // world rank and host, like fail_all) and exits the process with status 1.
  static CollectiveWatchdog& process();

  // 0 (the start) turns it off: no thread, and Scopes cost one relaxed atomic load.
  void set_timeout(double seconds);
  double timeout_seconds() const;
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // The rank that prefixes the process watchdog's message (MPI_COMM_WORLD's); until set, the
  // launcher's environment tells.
  void set_world_rank(int rank) { world_rank_.store(rank, std::memory_order_relaxed); }
  int world_rank() const { return world_rank_.load(std::memory_order_relaxed); }

  // Marks one blocking collective for the life of the object.
  class Scope {
   public:
    Scope(CollectiveWatchdog& watchdog, const CollectiveCall& call);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CollectiveWatchdog* watchdog_;  // null when the watchdog was off at the start
    CollectiveCall saved_call_;
    Clock::time_point saved_start_;
    bool saved_active_ = false;
    bool saved_reported_ = false;
  };

  // Returns an id for remove_poller, which waits for a poll in progress to finish, so that
  // the poller's state may be freed right after.
  int add_poller(Poller poller);
  void remove_poller(int id);

 private:
  void run();
  Clock::duration tick() const;

  Handler handler_;
  std::atomic<bool> enabled_{false};
  std::atomic<int> world_rank_{-1};

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable wake_;
  Clock::duration timeout_{0};
  bool stopping_ = false;
  std::thread thread_;
  bool active_ = false;    // a host collective is in progress
  bool reported_ = false;  // ... and has been reported
  CollectiveCall call_;
  Clock::time_point start_;

  std::mutex poll_mu_;  // held while pollers run; guards pollers_ and next_poller_
  std::map<int, Poller> pollers_;
  int next_poller_ = 0;
};

}  // namespace sy
