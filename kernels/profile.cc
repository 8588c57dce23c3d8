#include "kernels/profile.h"

#include <chrono>
#include <map>

#include "absl/strings/str_format.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/stream_state.h"
#endif

namespace sy::profile {
namespace {

struct Mark {
  const char* name;
  std::chrono::steady_clock::time_point begin, end;
#ifdef SWITCHYARD_HAVE_CUDA
  cudaEvent_t ev_begin = nullptr, ev_end = nullptr;
#endif
};

struct State {
  bool open = false;
  Device device;
  std::vector<Mark> marks;
  std::vector<Counter> counters;  // first-seen order
#ifdef SWITCHYARD_HAVE_CUDA
  // Events made before the profiled step starts and reused by later profiles: creating two
  // per region inside the step made its host slower than the other steps'.
  std::vector<cudaEvent_t> events;
  size_t events_used = 0;
  int events_device = -1;
#endif
};

State& state() {
  static State s;
  return s;
}

#ifdef SWITCHYARD_HAVE_CUDA
void add_event(State& s) {
  cudaEvent_t e;
  SY_CUDA_CHECK(cudaEventCreate(&e));
  s.events.push_back(e);
}

cudaEvent_t next_event(State& s) {
  if (s.events_used == s.events.size()) add_event(s);
  return s.events[s.events_used++];
}
#endif

}  // namespace

void open(Device device) {
  State& s = state();
  SY_CHECK(!s.open) << "profile::open while a profile is open";
  s.open = true;
  s.device = device;
  s.marks.clear();
  s.counters.clear();
#ifdef SWITCHYARD_HAVE_CUDA
  s.events_used = 0;
  if (device.is_cuda()) {
    if (s.events_device != device.index) {  // events belong to the device they were made on
      for (cudaEvent_t e : s.events) SY_CUDA_CHECK(cudaEventDestroy(e));
      s.events.clear();
      s.events_device = device.index;
    }
    cuda::set_device(device.index);
    constexpr size_t kPrepared = 1024;  // a step of the 1B benchmark uses about 340
    while (s.events.size() < kPrepared) add_event(s);
  }
#endif
}

void count(const char* name, double host_ms) {
  State& s = state();
  if (!s.open) return;
  for (Counter& c : s.counters) {
    if (c.name == name) {
      ++c.times;
      c.host_ms += host_ms;
      return;
    }
  }
  s.counters.push_back({.name = name, .times = 1, .host_ms = host_ms});
}

std::vector<Counter> counters() { return state().counters; }

HostTimer::HostTimer(const char* name) : name_(name), active_(is_open()) {
  if (active_) start_ = std::chrono::steady_clock::now();
}

HostTimer::~HostTimer() {
  if (!active_) return;
  count(
      name_,
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count());
}

bool is_open() { return state().open; }

void sync(Device device) {
#ifdef SWITCHYARD_HAVE_CUDA
  if (device.is_cuda()) SY_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
#endif
  (void)device;
}

Scope::Scope(const char* name) {
  State& s = state();
  if (!s.open) return;
  slot_ = static_cast<int>(s.marks.size());
  Mark m;
  m.name = name;
#ifdef SWITCHYARD_HAVE_CUDA
  if (s.device.is_cuda()) {
    m.ev_begin = next_event(s);
    m.ev_end = next_event(s);
    SY_CUDA_CHECK(cudaEventRecord(m.ev_begin, cudaStreamPerThread));
  }
#endif
  m.begin = std::chrono::steady_clock::now();
  s.marks.push_back(m);
}

Scope::~Scope() {
  State& s = state();
  if (slot_ < 0 || !s.open) return;
  Mark& m = s.marks[slot_];
  m.end = std::chrono::steady_clock::now();
#ifdef SWITCHYARD_HAVE_CUDA
  if (s.device.is_cuda()) SY_CUDA_CHECK(cudaEventRecord(m.ev_end, cudaStreamPerThread));
#endif
}

std::vector<Region> close() {
  State& s = state();
  SY_CHECK(s.open) << "profile::close without profile::open";
  s.open = false;
#ifdef SWITCHYARD_HAVE_CUDA
  if (s.device.is_cuda()) SY_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
#endif
  std::vector<Region> out;
  std::map<std::string, size_t> index;
  for (Mark& m : s.marks) {
    const double host_ms = std::chrono::duration<double, std::milli>(m.end - m.begin).count();
    double ms = host_ms;
#ifdef SWITCHYARD_HAVE_CUDA
    if (s.device.is_cuda()) {
      float elapsed = 0;
      SY_CUDA_CHECK(cudaEventElapsedTime(&elapsed, m.ev_begin, m.ev_end));
      ms = elapsed;
    }
#endif
    auto [it, fresh] = index.emplace(m.name, out.size());
    if (fresh) out.push_back({.name = m.name});
    out[it->second].ms += ms;
    out[it->second].host_ms += host_ms;
    out[it->second].calls += 1;
  }
  s.marks.clear();
  return out;
}

std::string format_table(const std::vector<Region>& regions, double total_ms) {
  std::string t =
      absl::StrFormat("%-22s %10s %7s %10s %6s\n", "region", "ms", "share", "host ms", "calls");
  double sum = 0;
  for (const Region& r : regions) {
    sum += r.ms;
    t += absl::StrFormat("%-22s %10.3f %6.1f%% %10.3f %6d\n", r.name, r.ms,
                         total_ms > 0 ? 100 * r.ms / total_ms : 0.0, r.host_ms, r.calls);
  }
  t += absl::StrFormat("%-22s %10.3f %6.1f%%\n", "(outside regions)", total_ms - sum,
                       total_ms > 0 ? 100 * (total_ms - sum) / total_ms : 0.0);
  t += absl::StrFormat("%-22s %10.3f\n", "step", total_ms);
  for (const Counter& c : counters())
    t += absl::StrFormat("host: %s %d times, %.3f ms\n", c.name, c.times, c.host_ms);
  return t;
}

}  // namespace sy::profile
