#pragma once
// Per-region timing of one training step, for the per-op breakdown a performance note needs.
// While a profile is open, every Scope on that device records how long its region took: on
// CUDA a pair of events on the compute stream (no synchronisation inside the step, so the
// step runs as it would unprofiled), on the CPU the wall clock (CPU ops are synchronous).
// close() waits for the GPU and returns each region's total time in first-seen order, with
// the host's time inside the region beside it: on a GPU, a region whose host time is close
// to its GPU time is bound by issuing work (or by a wait), not by the kernels.
// With no profile open a Scope costs one branch.
//
//   profile::open(device);
//   { profile::Scope s("attn.core"); attention_forward(...); }
//   for (const auto& r : profile::close()) ...
//
// Regions may nest; a nested region's time is also inside its parent's.
#include <chrono>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace sy::profile {

struct Region {
  std::string name;
  double ms = 0;       // device time (CUDA events), or wall clock on the CPU
  double host_ms = 0;  // the host's wall clock between the region's start and end
  int calls = 0;
};

void open(Device device);
// Waits until the device has finished the work queued so far (a no-op on the CPU).
void sync(Device device);
bool is_open();
std::vector<Region> close();

class Scope {
 public:
  explicit Scope(const char* name);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  int slot_ = -1;
};

// Host-side counters while a profile is open (no-ops otherwise): how often something
// happened and how long the host spent in it, e.g. the cuBLASLt calls and their heuristic
// queries. close() returns them after the regions, format_table prints them last.
void count(const char* name, double host_ms = 0);
struct Counter {
  std::string name;
  int64_t times = 0;
  double host_ms = 0;
};
std::vector<Counter> counters();  // of the profile close() just closed

// count(name, host ms from construction to destruction), when a profile is open at
// construction; otherwise reads no clock. `name` must outlive the timer.
class HostTimer {
 public:
  explicit HostTimer(const char* name);
  ~HostTimer();
  HostTimer(const HostTimer&) = delete;
  HostTimer& operator=(const HostTimer&) = delete;

 private:
  const char* name_;
  bool active_;
  std::chrono::steady_clock::time_point start_;
};

// A fixed-width table of the regions (ms per step, share of `total_ms`, host ms, calls),
// then the counters.
std::string format_table(const std::vector<Region>& regions, double total_ms);

}  // namespace sy::profile
