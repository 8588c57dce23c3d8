#pragma once
// The stream this thread's ops are issued to (CUDA builds only): the per-thread default
// stream, or a side stream while a StreamFanout (kernels/streams.h) spreads independent work
// over several. Plain C++: included by the .cu files (through common.cuh) and by
// kernels/streams.cc alike.
#include <cuda_runtime_api.h>

namespace sy::cuda {
inline thread_local cudaStream_t t_side_stream = nullptr;
inline cudaStream_t stream() { return t_side_stream ? t_side_stream : cudaStreamPerThread; }
}  // namespace sy::cuda
