#pragma once
// CapturedGraph: GPU work recorded once as a CUDA graph and then issued with one launch.
//
// Why: a decode step of the rollout engine is ~20 small kernels per layer, and issuing each
// costs the host a few microseconds, about as long as the GPU takes to run it; the step was
// bound by the host issuing it. A replayed graph costs one launch.
//
// capture(device, body) runs body with this thread's stream capturing: body's kernels and
// device-to-device copies are recorded, not run (call replay() to run them). The contract on
// body, which holds for the engine's decode step and is what a graph needs:
//   - the same buffers on every replay: what body reads or writes outside the tensors it
//     makes itself must stay at its address for the graph's life (weights updated in place,
//     inputs written into persistent tensors before each replay);
//   - nothing from or to the host: a copy from or to host memory, a HostReadback or a host
//     wait inside body fails the capture with an error naming it (a CUDA error for a wait);
//   - no host decision on device values (they are read at capture time, if at all).
// Tensors body makes take their memory from the graph's own pool, kept for the graph's life:
// a replay writes those addresses again, so no other tensor is given them. A tensor made by
// body that outlives it (kept in a member) holds what the last replay wrote.
//
// On the CPU (or a build without CUDA) supported() is false and capture() refuses.
#include <cstdint>
#include <functional>
#include <memory>

#include "kernels/tensor.h"

namespace sy {

class CapturedGraph {
 public:
  // Whether work on `device` can be captured: a CUDA device in a CUDA build.
  static bool supported(Device device);

  CapturedGraph();
  ~CapturedGraph();  // waits for the stream, then releases the graph and its memory
  CapturedGraph(CapturedGraph&&) noexcept;
  CapturedGraph& operator=(CapturedGraph&&) noexcept;
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  // Records body's work on `device` (replacing any earlier capture). Nothing runs.
  void capture(Device device, const std::function<void()>& body);
  // Queues the recorded work on this thread's stream; nothing waits.
  void replay() const;
  bool captured() const;
  int64_t nodes() const;         // kernels and copies recorded
  int64_t memory_bytes() const;  // the graph's own memory (the tensors body made)

 private:
  struct State;
  std::unique_ptr<State> state_;
};

namespace detail {
// The allocator's side of a capture (kernels/tensor.cc), for graph.cc.
struct GraphPool;
GraphPool* graph_pool_create(int device);
void graph_pool_destroy(GraphPool* pool);
void graph_pool_enter(GraphPool* pool);  // this thread's allocations on its device use it
void graph_pool_exit();
int64_t graph_pool_bytes(const GraphPool* pool);
}  // namespace detail

}  // namespace sy
