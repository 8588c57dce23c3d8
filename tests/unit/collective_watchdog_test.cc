// CollectiveWatchdog in one process, with a handler that records instead of exiting: a call
// that waits past the timeout is reported once, naming the call, within a tick of the
// timeout; calls that finish in time, or a watchdog that is off, report nothing; nested calls
// report the innermost and restore the outer; pollers (the NCCL backend's way in) are asked
// and their expiry carries its abort. The multi-rank behaviour (the job really ends) is
// tests/mpi/stuck_rank.cc.
#include "parallel/collective_watchdog.h"

#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "tests/testing/small_model.h"
#include "trainer/config.h"

namespace sy {
namespace {

using namespace std::chrono_literals;
using Clock = CollectiveWatchdog::Clock;

class Recorder {
 public:
  CollectiveWatchdog::Handler handler() {
    return [this](const CollectiveWatchdog::Expiry& e) {
      std::lock_guard<std::mutex> lock(mu_);
      messages_.push_back(e.message);
      times_.push_back(Clock::now());
      if (e.abort) e.abort();
    };
  }
  std::vector<std::string> messages() const {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_;
  }
  std::vector<Clock::time_point> times() const {
    std::lock_guard<std::mutex> lock(mu_);
    return times_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> messages_;
  std::vector<Clock::time_point> times_;
};

const CollectiveCall kAllReduce{"all_reduce", "f32", 1024, 1, 4, 17};

TEST(CollectiveWatchdog, DescribesTheCall) {
  EXPECT_EQ(describe(kAllReduce),
            "all_reduce of 1024 f32 on rank 1 of a group of 4 (call #17 on "
            "this group)");
  EXPECT_EQ(describe({"barrier", "", 0, 0, 2, 3}),
            "barrier on rank 0 of a group of 2 (call #3 on this group)");
  EXPECT_EQ(describe({"ncclCommInitRank", "", 0, 0, 8, 0}),
            "ncclCommInitRank on rank 0 of a group of 8");
}

TEST(CollectiveWatchdog, ACallPastTheTimeoutIsReportedOnceWithItsName) {
  Recorder recorder;
  CollectiveWatchdog watchdog(recorder.handler());
  watchdog.set_timeout(0.2);
  const Clock::time_point start = Clock::now();
  {
    CollectiveWatchdog::Scope scope(watchdog, kAllReduce);
    std::this_thread::sleep_for(700ms);  // three timeouts: still one report
  }
  const std::vector<std::string> messages = recorder.messages();
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_TRUE(absl::StrContains(messages[0], describe(kAllReduce))) << messages[0];
  EXPECT_TRUE(absl::StrContains(messages[0], "past parallel.collective_timeout_s = 0.2"))
      << messages[0];
  // Reported after the timeout and at most a tick (a quarter timeout) late, plus whatever
  // a loaded machine adds to waking a thread.
  const double after = std::chrono::duration<double>(recorder.times()[0] - start).count();
  EXPECT_GE(after, 0.2);
  EXPECT_LT(after, 0.65);
}

TEST(CollectiveWatchdog, CallsThatFinishInTimeAreNotReported) {
  Recorder recorder;
  CollectiveWatchdog watchdog(recorder.handler());
  watchdog.set_timeout(0.4);
  // Together far longer than the timeout, each one well within it.
  for (int i = 0; i < 12; ++i) {
    CollectiveWatchdog::Scope scope(watchdog, kAllReduce);
    std::this_thread::sleep_for(50ms);
  }
  std::this_thread::sleep_for(500ms);  // idle: no call in progress, nothing to report
  EXPECT_TRUE(recorder.messages().empty());
}

TEST(CollectiveWatchdog, ZeroTurnsItOff) {
  Recorder recorder;
  CollectiveWatchdog watchdog(recorder.handler());
  EXPECT_FALSE(watchdog.enabled());
  {
    CollectiveWatchdog::Scope scope(watchdog, kAllReduce);
    std::this_thread::sleep_for(100ms);
  }
  watchdog.set_timeout(0.05);
  EXPECT_TRUE(watchdog.enabled());
  watchdog.set_timeout(0);
  EXPECT_FALSE(watchdog.enabled());
  {
    CollectiveWatchdog::Scope scope(watchdog, kAllReduce);
    std::this_thread::sleep_for(300ms);
  }
  EXPECT_TRUE(recorder.messages().empty());
}

TEST(CollectiveWatchdog, NestedCallsReportTheInnermostAndRestoreTheOuter) {
  Recorder recorder;
  CollectiveWatchdog watchdog(recorder.handler());
  watchdog.set_timeout(0.2);
  const CollectiveCall outer{"split", "", 0, 0, 2, 5};
  const CollectiveCall inner{"all_gather_host", "bytes", 12, 0, 2, 6};
  {
    CollectiveWatchdog::Scope a(watchdog, outer);
    {
      CollectiveWatchdog::Scope b(watchdog, inner);
      std::this_thread::sleep_for(700ms);
    }
    // The outer call has waited since its own start: past the timeout already, so it is
    // reported at the next tick.
    std::this_thread::sleep_for(400ms);
  }
  const std::vector<std::string> messages = recorder.messages();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_TRUE(absl::StrContains(messages[0], describe(inner))) << messages[0];
  EXPECT_TRUE(absl::StrContains(messages[1], describe(outer))) << messages[1];
}

TEST(CollectiveWatchdog, PollersAreAskedAndTheirAbortRuns) {
  Recorder recorder;
  CollectiveWatchdog watchdog(recorder.handler());
  watchdog.set_timeout(0.1);
  const Clock::time_point queued = Clock::now();
  std::atomic<int> polls{0}, aborts{0};
  std::atomic<bool> reported{false};
  // A stand-in for an NCCL communicator whose queued work never completes.
  const int id = watchdog.add_poller(
      [&](Clock::time_point now,
          Clock::duration timeout) -> std::optional<CollectiveWatchdog::Expiry> {
        ++polls;
        if (reported || now - queued < timeout) return std::nullopt;
        reported = true;
        return CollectiveWatchdog::Expiry{"NCCL all_reduce stuck", [&] { ++aborts; }};
      });
  std::this_thread::sleep_for(400ms);
  watchdog.remove_poller(id);
  const int polled = polls;
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(polls, polled) << "polled after remove_poller";
  EXPECT_GE(polled, 3);
  ASSERT_EQ(recorder.messages(), std::vector<std::string>{"NCCL all_reduce stuck"});
  EXPECT_EQ(aborts, 1);
}

TEST(CollectiveWatchdog, AShorterTimeoutTakesEffectAtOnce) {
  Recorder recorder;
  CollectiveWatchdog watchdog(recorder.handler());
  watchdog.set_timeout(3600);  // a tick of 1 s
  CollectiveWatchdog::Scope scope(watchdog, kAllReduce);
  const Clock::time_point start = Clock::now();
  watchdog.set_timeout(0.1);
  while (recorder.messages().empty() && Clock::now() - start < 2s)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(recorder.messages().size(), 1u);
  // Well before the old tick of 1 s would have looked.
  EXPECT_LT(std::chrono::duration<double>(recorder.times()[0] - start).count(), 0.8);
}

// The config's knob: seconds in [0, a week], checked with the rest of the experiment.
TEST(CollectiveTimeoutConfig, OutOfRangeValuesAreClearErrors) {
  for (const char* value : {"-1", "604801"}) {
    switchyard::Experiment config;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
    ASSERT_TRUE(google::protobuf::TextFormat::MergeFromString(
        std::string("parallel { collective_timeout_s: ") + value + " }", &config));
    const absl::Status status = validate_experiment(config);
    ASSERT_FALSE(status.ok()) << value;
    EXPECT_TRUE(absl::StrContains(status.message(),
                                  std::string("parallel.collective_timeout_s: must be in [0, "
                                              "604800], got ") +
                                      value))
        << status;
  }
  switchyard::Experiment config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(testing::kSmallModel, &config));
  ASSERT_TRUE(
      google::protobuf::TextFormat::MergeFromString("train { steps: 1 micro_batch: 1 }", &config));
  EXPECT_EQ(config.parallel().collective_timeout_s(), 1800) << "generous by default";
  config.mutable_parallel()->set_collective_timeout_s(0);
  const absl::Status off = validate_experiment(config);
  EXPECT_TRUE(off.ok()) << "0 turns the watchdog off: " << off;
}

}  // namespace
}  // namespace sy
