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
};

State& state() {
  static State s;
  return s;
}

}  // namespace

void open(Device device) {
  State& s = state();
  SY_CHECK(!s.open) << "profile::open while a profile is open";
  s.open = true;
  s.device = device;
  s.marks.clear();
  s.counters.clear();
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
    SY_CUDA_CHECK(cudaEventCreate(&m.ev_begin));
    SY_CUDA_CHECK(cudaEventCreate(&m.ev_end));
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
      SY_CUDA_CHECK(cudaEventDestroy(m.ev_begin));
      SY_CUDA_CHECK(cudaEventDestroy(m.ev_end));
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
  std::string t = absl::StrFormat("%-22s %10s %7s %10s %6s\n", "region", "ms", "share",
                                  "host ms", "calls");
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
