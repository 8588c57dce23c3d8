#include "kernels/cpu/threads.h"

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

#ifdef SWITCHYARD_HAVE_BLAS
extern "C" void openblas_set_num_threads(int num_threads);
#endif

namespace sy::cpu {
namespace {
std::atomic<int> g_threads{0};  // 0: not set, use all cores
}  // namespace

void set_cpu_threads(int n) {
  g_threads.store(std::clamp(n, 0, kMaxCpuThreads));
#ifdef SWITCHYARD_HAVE_BLAS
  openblas_set_num_threads(cpu_threads());
#endif
}

int cpu_threads() {
  const int set = g_threads.load();
  return set > 0 ? set
                 : std::clamp<int>(static_cast<int>(std::thread::hardware_concurrency()), 1,
                                   kMaxCpuThreads);
}

void parallel_for(int64_t n, int64_t work, int64_t min_work,
                  const std::function<void(int64_t)>& fn) {
  const int64_t threads = work >= min_work ? std::min<int64_t>(n, cpu_threads()) : 1;
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    // A host out of threads (ulimit -u, a container's pids limit) refuses a thread; the loop
    // then runs on those it has, rather than ending the process.
    try {
      pool.emplace_back([&] {
        for (int64_t i = next++; i < n; i = next++) fn(i);
      });
    } catch (const std::system_error&) {
      break;
    }
  }
  for (int64_t i = next++; i < n; i = next++) fn(i);
  for (std::thread& thread : pool) thread.join();
}

}  // namespace sy::cpu
