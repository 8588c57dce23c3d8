#pragma once
// The CUDA runtime helpers that plain C++ files can use too (CUDA builds only; the .cu files
// get them through common.cuh): SY_CUDA_CHECK, and the stream this thread's ops are issued
// to, the per-thread default stream or a side stream while a StreamFanout
// (kernels/streams.h) spreads independent work over several.
#include <cuda_runtime_api.h>

#include "kernels/check.h"

// Aborts with file:line, the failed call and CUDA's message when a runtime call fails.
#define SY_CUDA_CHECK(expr)                                                                   \
  do {                                                                                        \
    cudaError_t sy_cuda_err_ = (expr);                                                        \
    SY_CHECK(sy_cuda_err_ == cudaSuccess) << #expr << ": " << cudaGetErrorName(sy_cuda_err_)  \
                                          << " (" << cudaGetErrorString(sy_cuda_err_) << ")"; \
  } while (0)

namespace sy::cuda {
// The most GPUs a process addresses: per-device state (cuBLASLt handles, side streams, pool
// settings) lives in fixed arrays of this size.
inline constexpr int kMaxDevices = 64;

// Makes `device` this thread's current GPU, calling cudaSetDevice only when it changes: ops
// make their tensors' device current before every launch (~1,500 times a training step,
// each call ~0.5 us of host time where the GPU may be waiting for the host). The project
// switches devices only through here, so the remembered device is the runtime's.
inline thread_local int t_current_device = -1;
inline void set_device(int device) {
  if (device == t_current_device) return;
  SY_CUDA_CHECK(cudaSetDevice(device));
  t_current_device = device;
}

// This thread's current GPU (as the runtime reports it until set_device first runs).
inline int current_device() {
  if (t_current_device >= 0) return t_current_device;
  int device = 0;
  SY_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// The same without aborting (destructors): false if the runtime refused.
inline bool try_set_device(int device) {
  if (device == t_current_device) return true;
  if (cudaSetDevice(device) != cudaSuccess) return false;
  t_current_device = device;
  return true;
}

inline thread_local cudaStream_t t_side_stream = nullptr;
inline cudaStream_t stream() { return t_side_stream ? t_side_stream : cudaStreamPerThread; }

// Whether this thread's stream is being captured into a CUDA graph (kernels/graph.h): what
// needs the host mid-stream (a copy to or from host memory, a wait) must refuse then.
inline bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  SY_CUDA_CHECK(cudaStreamIsCapturing(stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}
}  // namespace sy::cuda
