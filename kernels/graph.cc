#include "kernels/graph.h"

#include "kernels/check.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/stream_state.h"
#endif

namespace sy {

#ifdef SWITCHYARD_HAVE_CUDA
struct CapturedGraph::State {
  int device = -1;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  detail::GraphPool* pool = nullptr;
  size_t nodes = 0;

  ~State() {
    if (device < 0) return;
    // The last replay may still run, and its memory goes back to the allocator's cache.
    if (cuda::try_set_device(device)) cudaStreamSynchronize(cudaStreamPerThread);
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    detail::graph_pool_destroy(pool);
  }
};
#else
struct CapturedGraph::State {};
#endif

bool CapturedGraph::supported(Device device) {
#ifdef SWITCHYARD_HAVE_CUDA
  return device.is_cuda();
#else
  (void)device;
  return false;
#endif
}

CapturedGraph::CapturedGraph() = default;
CapturedGraph::~CapturedGraph() = default;
CapturedGraph::CapturedGraph(CapturedGraph&&) noexcept = default;
CapturedGraph& CapturedGraph::operator=(CapturedGraph&&) noexcept = default;

void CapturedGraph::capture(Device device, const std::function<void()>& body) {
  SY_CHECK(supported(device)) << "CapturedGraph: " << device.str()
                              << " cannot capture a graph (CUDA devices only)";
#ifdef SWITCHYARD_HAVE_CUDA
  state_.reset();
  auto state = std::make_unique<State>();
  state->device = device.index;
  state->pool = detail::graph_pool_create(device.index);
  cuda::set_device(device.index);
  SY_CHECK(cuda::stream() == cudaStreamPerThread)
      << "CapturedGraph: capture from the thread's own stream, not inside a StreamFanout";
  // Relaxed: the allocator may map new memory (on a stream of its own) while the capture
  // runs; what would break the graph (a wait on the capturing stream, a host copy) still
  // fails, by CUDA's check or ours.
  SY_CUDA_CHECK(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed));
  detail::graph_pool_enter(state->pool);
  struct Exit {
    ~Exit() { detail::graph_pool_exit(); }
  } exit;
  try {
    body();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(cudaStreamPerThread, &broken);
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    throw;
  }
  SY_CUDA_CHECK(cudaStreamEndCapture(cudaStreamPerThread, &state->graph));
  SY_CUDA_CHECK(cudaGraphGetNodes(state->graph, nullptr, &state->nodes));
  SY_CUDA_CHECK(cudaGraphInstantiate(&state->exec, state->graph, 0));
  state_ = std::move(state);
#else
  (void)body;
#endif
}

void CapturedGraph::replay() const {
  SY_CHECK(captured()) << "CapturedGraph::replay before capture";
#ifdef SWITCHYARD_HAVE_CUDA
  cuda::set_device(state_->device);
  SY_CUDA_CHECK(cudaGraphLaunch(state_->exec, cuda::stream()));
#endif
}

bool CapturedGraph::captured() const {
#ifdef SWITCHYARD_HAVE_CUDA
  return state_ != nullptr && state_->exec != nullptr;
#else
  return false;
#endif
}

int64_t CapturedGraph::nodes() const {
#ifdef SWITCHYARD_HAVE_CUDA
  return captured() ? static_cast<int64_t>(state_->nodes) : 0;
#else
  return 0;
#endif
}

int64_t CapturedGraph::memory_bytes() const {
#ifdef SWITCHYARD_HAVE_CUDA
  return captured() ? detail::graph_pool_bytes(state_->pool) : 0;
#else
  return 0;
#endif
}

}  // namespace sy
