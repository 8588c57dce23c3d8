#pragma once
// How many threads the CPU kernels use, and the one loop that spreads work over them.
// The count defaults to the machine's cores; set_cpu_threads also sizes the BLAS library's
// pool, so one knob (train.cpu_threads) governs both. Small models run faster on one thread:
// their GEMMs are too small to amortise waking a pool.
#include <cstdint>
#include <functional>

namespace sy::cpu {

// The most threads one parallel loop starts. Each costs a stack and a clone(); far more than
// the cores only adds switching, and tens of thousands exhaust the process's thread limit.
// train.cpu_threads is validated against it; set_cpu_threads clamps to it as well.
inline constexpr int kMaxCpuThreads = 1024;

void set_cpu_threads(int n);  // n <= 0: all cores; clamped to kMaxCpuThreads
int cpu_threads();

// Runs fn(i) for every i in [0, n), on up to cpu_threads() threads when `work` (any measure
// of the total cost) reaches `min_work`, else inline. fn must be safe to run concurrently
// for different i.
void parallel_for(int64_t n, int64_t work, int64_t min_work,
                  const std::function<void(int64_t)>& fn);

}  // namespace sy::cpu
