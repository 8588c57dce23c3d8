#pragma once
// StreamFanout: runs independent pieces of GPU work (a MoE layer's per-expert GEMMs) on
// several streams at once, so that small kernels overlap instead of queueing one after the
// other. Construction forks side streams off the thread's stream; select(i) sends this
// thread's next ops to side stream i; destruction joins: the thread's stream waits for every
// side stream. The pieces must not allocate tensors (allocation is ordered on the main
// stream) and must write disjoint memory. On the CPU, or with one way, it does nothing.
#include "kernels/tensor.h"

namespace sy {

class StreamFanout {
 public:
  StreamFanout(Device device, int ways);
  ~StreamFanout();
  StreamFanout(const StreamFanout&) = delete;
  StreamFanout& operator=(const StreamFanout&) = delete;
  void select(int piece);

 private:
  int device_ = -1;  // -1: inactive
  int ways_ = 0;
};

}  // namespace sy
