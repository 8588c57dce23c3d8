#include "models/rollout/scheduler.h"

#include <algorithm>

#include "kernels/check.h"

namespace sy {

SlotAllocator::SlotAllocator(int64_t slots) : used_(slots, false), free_count_(slots) {
  SY_CHECK(slots > 0) << "a KV pool needs at least one slot, got " << slots;
}

int64_t SlotAllocator::acquire() {
  if (free_count_ == 0) return -1;
  const auto it = std::find(used_.begin(), used_.end(), false);
  *it = true;
  --free_count_;
  return it - used_.begin();
}

void SlotAllocator::release(int64_t slot) {
  SY_CHECK(slot >= 0 && slot < capacity() && used_[slot]) << "slot " << slot << " is not held";
  used_[slot] = false;
  ++free_count_;
}

Scheduler::Scheduler(int64_t max_rows, int64_t prefill_tokens)
    : prefill_tokens_(prefill_tokens), slots_(max_rows) {
  SY_CHECK(prefill_tokens > 0) << "prefill_tokens must be positive, got " << prefill_tokens;
}

void Scheduler::add(int64_t id, int64_t prompt_len) {
  SY_CHECK(prompt_len > 0) << "sequence " << id << " has an empty prompt";
  pending_.push_back({.id = id, .slot = -1, .prompt_len = prompt_len});
}

std::vector<std::vector<Scheduler::Running>> Scheduler::admit() {
  std::vector<std::vector<Running>> batches;
  int64_t longest = 0;
  while (!pending_.empty() && slots_.free_count() > 0) {
    Running seq = pending_.front();
    pending_.pop_front();
    seq.slot = slots_.acquire();
    running_.push_back(seq);
    // Padded to the batch's longest prompt: start a new batch when this one would outgrow
    // the token budget.
    const int64_t grown = std::max(longest, seq.prompt_len);
    if (batches.empty() ||
        grown * static_cast<int64_t>(batches.back().size() + 1) > prefill_tokens_) {
      batches.emplace_back();
      longest = seq.prompt_len;
    } else {
      longest = grown;
    }
    batches.back().push_back(seq);
  }
  return batches;
}

void Scheduler::retire(int64_t id) {
  const auto it =
      std::find_if(running_.begin(), running_.end(), [&](const Running& r) { return r.id == id; });
  SY_CHECK(it != running_.end()) << "sequence " << id << " is not running";
  slots_.release(it->slot);
  running_.erase(it);
}

int64_t Scheduler::decode_rows(int64_t live) const {
  int64_t rows = 1;
  while (rows < live) rows *= 2;
  return std::min(rows, std::max(max_rows(), live));
}

}  // namespace sy
