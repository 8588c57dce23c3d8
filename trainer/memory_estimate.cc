#include "trainer/memory_estimate.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#ifdef SWITCHYARD_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace sy {
namespace {

constexpr double kGiB = double(int64_t{1} << 30);

// Counts are doubles: with experts, E * 3 * expert_hidden * d_model * n_layers can pass 2^63
// at sizes that each pass validation, and the point is to refuse those, not to wrap.
struct Counts {
  double dense_vectors = 0;    // norms, biases: fp32 only, never a compute copy
  double dense_matrices = 0;   // replicated on every rank
  double expert_matrices = 0;  // this rank's experts
  double all() const { return dense_vectors + dense_matrices + expert_matrices; }
  double matrices() const { return dense_matrices + expert_matrices; }
};

// One block's parameters (models/layers.cc builds them in this shape).
void add_block(const ModelSpec& s, bool moe, int64_t expert_parallel, Counts& c) {
  const double d = s.d_model, hd = s.head_dim(), nh = s.n_heads, nkv = s.n_kv_heads;
  c.dense_vectors += 2 * d;  // attention and FFN norms
  if (s.qk_norm) c.dense_vectors += 2 * hd;
  c.dense_matrices += (2 * nh * hd + 2 * nkv * hd) * d;  // wq, wo; wk, wv
  if (!moe) {
    c.dense_matrices += 3 * double(s.dense_ffn_hidden) * d;
    return;
  }
  const double experts = s.moe.num_experts, eh = s.moe.expert_hidden;
  c.dense_matrices += experts * d;  // router
  if (s.moe.bias_update_rate > 0) c.dense_vectors += experts;
  c.expert_matrices += experts / double(std::max<int64_t>(1, expert_parallel)) * 3 * eh * d;
  c.dense_matrices += 3 * double(s.moe.num_shared_experts) * eh * d;
}

// Activation elements one token keeps through one block for the backward: the attention's
// input, norm, q, k, v and output, then the FFN's norm and hidden states (the experts' for
// each of its top_k slots, gathered and scattered).
double block_activations_per_token(const ModelSpec& s, bool moe) {
  const double d = s.d_model, hd = s.head_dim();
  double n = 3 * d + 2 * s.n_heads * hd + 2 * double(s.n_kv_heads) * hd;
  if (!moe) return n + 2 * d + 3 * double(s.dense_ffn_hidden);
  const double eh = s.moe.expert_hidden;
  n += 2 * d + s.moe.num_experts;                  // norm, output; router scores
  n += s.moe.top_k * (2 * d + 3 * eh);             // routed slots
  n += 3 * double(s.moe.num_shared_experts) * eh;  // shared experts
  return n;
}

int64_t saturate(double bytes) {
  constexpr double kMax = 9.0e18;  // below INT64_MAX, exactly representable enough
  return bytes >= kMax ? static_cast<int64_t>(kMax) : static_cast<int64_t>(std::ceil(bytes));
}

// A `key: N kB` line of /proc/meminfo, in bytes; -1 when absent.
int64_t meminfo_bytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  for (std::string name; in >> name;) {
    int64_t kib = 0;
    std::string unit;
    if (!(in >> kib)) return -1;
    std::getline(in, unit);
    if (name == key + ":") return kib * 1024;
  }
  return -1;
}

// A `key: N kB` line of /proc/self/status (VmSize, ...), in bytes; -1 when absent.
int64_t status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    int64_t kib = 0;
    return fields >> kib ? kib * 1024 : -1;
  }
  return -1;
}

// A number in a cgroup v2 file ("max" or absent: -1).
int64_t cgroup_number(const char* path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text)) return -1;
  int64_t v = 0;
  return absl::SimpleAtoi(text, &v) ? v : -1;
}

}  // namespace

std::string MemoryEstimate::breakdown() const {
  const std::string kv =
      kv_cache_bytes > 0 ? absl::StrFormat(", KV cache %.1f", kv_cache_bytes / kGiB) : "";
  return absl::StrFormat(
      "weights %.1f, gradients %.1f, AdamW moments %.1f, activations %.1f%s GiB; %.3g parameters",
      weight_bytes / kGiB, gradient_bytes / kGiB, optimizer_bytes / kGiB, activation_bytes / kGiB,
      kv, double(parameters));
}

MemoryEstimate estimate_memory(const ModelSpec& s, const MemoryPlan& plan) {
  Counts c;
  const double d = s.d_model, vocab = s.vocab_size;
  c.dense_matrices += vocab * d;  // embedding
  if (!s.tie_embeddings) c.dense_matrices += vocab * d;
  c.dense_vectors += d;  // final norm
  for (int l = 0; l < s.n_layers; ++l) add_block(s, s.is_moe_layer(l), plan.expert_parallel, c);
  for (int k = 0; k < s.mtp_modules; ++k) {
    c.dense_vectors += 3 * d;       // hnorm, enorm, out_norm
    c.dense_matrices += 2 * d * d;  // projection of [h; emb]
    add_block(s, s.has_moe(), plan.expert_parallel, c);
  }

  const double compute_size = double(dtype_size(plan.compute));
  MemoryEstimate e;
  e.parameters = saturate(c.all());
  double weights = 4 * c.all();
  if (plan.compute != DType::kF32) weights += compute_size * c.matrices();
  e.weight_bytes = saturate(weights);
  if (plan.training) {
    e.gradient_bytes = saturate(4 * c.all());
    e.optimizer_bytes = saturate(2 * double(dtype_size(plan.moments)) * c.all() /
                                 double(std::max<int64_t>(1, plan.optimizer_shards)));
    const double tokens = double(plan.micro_batch) * double(plan.seq_len);
    double per_token = 2 * d;  // embedding output, final norm
    for (int l = 0; l < s.n_layers; ++l)
      per_token += block_activations_per_token(s, s.is_moe_layer(l));
    per_token += s.mtp_modules * (4 * d + block_activations_per_token(s, s.has_moe()));
    // The output head computes its logits in chunks of at most 256 MiB (models/transformer.cc)
    // and keeps them for the loss's gradient: one chunk, or fewer rows than that.
    const double head = std::min(256.0 * (1 << 20), tokens * vocab * compute_size);
    e.activation_bytes = saturate(tokens * per_token * compute_size + head);
  }
  return e;
}

int64_t available_memory_bytes(Device device) {
  if (device.is_cuda()) {
#ifdef SWITCHYARD_HAVE_CUDA
    return cuda::free_memory_bytes(device.index);
#else
    return -1;
#endif
  }
  int64_t available = meminfo_bytes("MemAvailable");
  // In a container the cgroup's limit, not the host's free memory, is what the kernel's OOM
  // killer enforces.
  const int64_t limit = cgroup_number("/sys/fs/cgroup/memory.max");
  const int64_t used = cgroup_number("/sys/fs/cgroup/memory.current");
  if (limit > 0 && used >= 0) {
    const int64_t left = std::max<int64_t>(0, limit - used);
    available = available < 0 ? left : std::min(available, left);
  }
  // ulimit -v (common on shared login and batch nodes) caps the address space instead.
  rlimit address_space{};
  if (getrlimit(RLIMIT_AS, &address_space) == 0 && address_space.rlim_cur != RLIM_INFINITY) {
    const int64_t mapped = status_bytes("VmSize");
    const int64_t left = std::max<int64_t>(
        0, static_cast<int64_t>(address_space.rlim_cur) - std::max<int64_t>(0, mapped));
    available = available < 0 ? left : std::min(available, left);
  }
  return available;
}

absl::Status check_memory_fits(const MemoryEstimate& estimate, int64_t available, Device device,
                               const std::string& what, const std::string& fix) {
  if (available < 0 || estimate.total() <= available) return absl::OkStatus();
  const std::string where = device.is_cuda()
                                ? absl::StrCat("free on ", device.str())
                                : std::string(
                                      "available on this host (MemAvailable, or less under "
                                      "the cgroup's memory.max or ulimit -v)");
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s needs %.1f GiB per rank (%s), %.1f GiB %s; %s", what, estimate.total() / kGiB,
      estimate.breakdown(), available / kGiB, where,
      fix.empty() ? "lower the model's sizes (model.d_model, model.vocab_size, model.n_layers, "
                    "model.dense_ffn_hidden, moe.num_experts, moe.expert_hidden) or "
                    "train.micro_batch, or spread the experts over more ranks "
                    "(parallel.expert_parallel_size)"
                  : fix));
}

absl::Status check_memory_for(const ModelSpec& spec, const MemoryPlan& plan, Device device,
                              const std::string& what) {
  return check_memory_fits(estimate_memory(spec, plan), available_memory_bytes(device), device,
                           what);
}

}  // namespace sy
