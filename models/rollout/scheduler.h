#pragma once
// The rollout engine's scheduler: which sequences hold a KV slot, which wait, and how the
// newly admitted ones are grouped into prefill batches. Pure host bookkeeping (no tensors),
// so continuous batching is tested without a model or a GPU.
//
// Sequences are admitted in the order they were added (first come, first served) into the
// lowest free slot; a retired sequence's slot goes to the next pending one at the next
// admission. The running list keeps admission order: it is the decode batch's row order, so
// rows keep their relative order from one check point to the next.
#include <cstdint>
#include <deque>
#include <vector>

namespace sy {

// Slot indices [0, slots): acquire() gives the lowest free one.
class SlotAllocator {
 public:
  explicit SlotAllocator(int64_t slots);
  int64_t acquire();  // -1 when none is free
  void release(int64_t slot);
  int64_t free_count() const { return free_count_; }
  int64_t capacity() const { return static_cast<int64_t>(used_.size()); }

 private:
  std::vector<bool> used_;
  int64_t free_count_ = 0;
};

class Scheduler {
 public:
  struct Running {
    int64_t id = 0;  // the caller's sequence id (the engine's prompt index)
    int64_t slot = 0;
    int64_t prompt_len = 0;
  };

  // max_rows: KV slots (the most sequences running at once). prefill_tokens: the most padded
  // tokens (rows x longest prompt) one prefill batch may hold; a prompt longer than that is
  // a batch of its own.
  Scheduler(int64_t max_rows, int64_t prefill_tokens);

  void add(int64_t id, int64_t prompt_len);
  // Pending sequences, oldest first, into the free slots; returns them grouped into prefill
  // batches (in admission order), already in running().
  std::vector<std::vector<Running>> admit();
  // Frees the slot of a running sequence (any order).
  void retire(int64_t id);

  const std::vector<Running>& running() const { return running_; }
  int64_t pending() const { return static_cast<int64_t>(pending_.size()); }
  bool done() const { return pending_.empty() && running_.empty(); }
  int64_t max_rows() const { return slots_.capacity(); }

  // The decode batch's row count for `live` running sequences: the next power of two, at
  // most max_rows (a few fixed shapes, friendly to captured CUDA graphs); at least 1, so a
  // rank with nothing to do still joins every step.
  int64_t decode_rows(int64_t live) const;

 private:
  int64_t prefill_tokens_;
  SlotAllocator slots_;
  std::deque<Running> pending_;
  std::vector<Running> running_;
};

}  // namespace sy
