// Causal attention through cuDNN's fused scaled-dot-product attention (its graph API, via the
// vendored header-only cudnn-frontend in third_party/): the default for bf16 training shapes
// (Tq == Tk) where the build has it (kernels/cuda/attention_tc.h). A shape cuDNN refuses (its
// graph does not validate or build, e.g. T = 1) is remembered and goes to our own kernels.
// Same contract as kernels/attention.h: q [B, T, H, hd], k and v [B, T, Hkv, hd], out like q,
// lse [B, H, T] f32 (cuDNN's softmax statistics: the log-sum-exp of the scaled scores), the
// backward writing dq, dk, dv. Layouts go to cuDNN as strides of its [B, H, T, hd] view, so
// nothing is transposed. The backward asks for cuDNN's deterministic algorithm (a run repeats
// bit for bit, as our own kernels do) unless set_attention_deterministic(false)
// (Experiment.deterministic) lets it add dq with atomics.
// One cuDNN handle per device; one built graph (or refusal) per (device, shape, direction),
// kept for the process (building one costs milliseconds; a run has a few shapes).
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/stream_state.h"
#include "kernels/tensor.h"

namespace sy::cuda {
namespace {

namespace fe = cudnn_frontend;

#define SY_CUDNN_CHECK(expr)                                       \
  do {                                                             \
    cudnnStatus_t sy_cudnn_status_ = (expr);                       \
    SY_CHECK(sy_cudnn_status_ == CUDNN_STATUS_SUCCESS)             \
        << #expr << ": " << cudnnGetErrorString(sy_cudnn_status_); \
  } while (0)

// A cudnn-frontend step that failed at run time: what cuDNN said, and how to get going again.
void fe_check(fe::error_t status, const char* step) {
  SY_CHECK(!status.is_bad()) << "cuDNN attention, " << step << ": " << status.get_message()
                             << ". SWITCHYARD_ATTENTION=tc uses the built-in kernels instead.";
}

cudnnHandle_t handle_for(int device) {
  static std::mutex mutex;
  static std::array<cudnnHandle_t, kMaxDevices> handles{};
  SY_CHECK(device < kMaxDevices) << "device " << device;
  std::lock_guard<std::mutex> lock(mutex);
  if (handles[device] == nullptr) SY_CUDNN_CHECK(cudnnCreate(&handles[device]));
  return handles[device];
}

// Tensor ids in a graph's variant pack.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct Shape4 {
  int64_t b, t, h, hkv, hd;
  auto operator<=>(const Shape4&) const = default;
};

// [B, T, heads, hd] row-major seen as cuDNN's [B, heads, T, hd].
std::vector<int64_t> bhtd_dims(const Shape4& s, int64_t heads) { return {s.b, heads, s.t, s.hd}; }
std::vector<int64_t> bhtd_strides(const Shape4& s, int64_t heads) {
  return {s.t * heads * s.hd, s.hd, heads * s.hd, 1};
}

std::shared_ptr<fe::graph::Tensor_attributes> input(fe::graph::Graph& g, const char* name, Uid uid,
                                                    const Shape4& s, int64_t heads) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim(bhtd_dims(s, heads))
                      .set_stride(bhtd_strides(s, heads)));
}

void output(const std::shared_ptr<fe::graph::Tensor_attributes>& t, Uid uid, const Shape4& s,
            int64_t heads) {
  t->set_output(true).set_uid(uid).set_dim(bhtd_dims(s, heads)).set_stride(bhtd_strides(s, heads));
}

// lse [B, H, T] f32 as cuDNN's statistics [B, H, T, 1].
void as_stats(const std::shared_ptr<fe::graph::Tensor_attributes>& t, const Shape4& s) {
  t->set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim({s.b, s.h, s.t, 1})
      .set_stride({s.h * s.t, s.t, 1, 1});
}

// A graph ready to run, or (graph null) cuDNN's reason for refusing the shape.
struct Built {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  std::string refusal;
};

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

Built finish(std::shared_ptr<fe::graph::Graph> g, cudnnHandle_t handle) {
  Built built;
  // Each step only after the one before it succeeded; the first failure is the refusal.
  auto step = [&](const char* what, auto&& call) {
    if (!built.refusal.empty()) return;
    fe::error_t status = call();
    if (status.is_bad()) built.refusal = std::string(what) + ": " + status.get_message();
  };
  step("validating the graph", [&] { return g->validate(); });
  step("building the operation graph", [&] { return g->build_operation_graph(handle); });
  step("asking for execution plans",
       [&] { return g->create_execution_plans({fe::HeurMode_t::A}); });
  step("checking support", [&] { return g->check_support(handle); });
  step("building the plans", [&] { return g->build_plans(handle); });
  step("sizing the workspace", [&] { return g->get_workspace_size(built.workspace); });
  if (built.refusal.empty()) built.graph = std::move(g);
  return built;
}

Built build_forward(const Shape4& s, cudnnHandle_t handle) {
  auto g = new_graph();
  auto q = input(*g, "q", kQ, s, s.h), k = input(*g, "k", kK, s, s.hkv),
       v = input(*g, "v", kV, s, s.hkv);
  auto attributes = fe::graph::SDPA_attributes()
                        .set_name("attention")
                        .set_generate_stats(true)
                        .set_causal_mask(true)
                        .set_attn_scale(1.0f / std::sqrt(static_cast<float>(s.hd)));
  auto [o, stats] = g->sdpa(q, k, v, attributes);
  output(o, kO, s, s.h);
  stats->set_output(true);
  as_stats(stats, s);
  return finish(std::move(g), handle);
}

Built build_backward(const Shape4& s, bool deterministic, cudnnHandle_t handle) {
  auto g = new_graph();
  auto q = input(*g, "q", kQ, s, s.h), k = input(*g, "k", kK, s, s.hkv),
       v = input(*g, "v", kV, s, s.hkv), o = input(*g, "o", kO, s, s.h),
       d_o = input(*g, "dO", kDO, s, s.h);
  auto stats = g->tensor(fe::graph::Tensor_attributes().set_name("stats"));
  as_stats(stats, s);
  auto attributes = fe::graph::SDPA_backward_attributes()
                        .set_name("attention backward")
                        .set_causal_mask(true)
                        .set_attn_scale(1.0f / std::sqrt(static_cast<float>(s.hd)))
                        .set_deterministic_algorithm(deterministic);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, d_o, stats, attributes);
  output(dq, kDQ, s, s.h);
  output(dk, kDK, s, s.hkv);
  output(dv, kDV, s, s.hkv);
  return finish(std::move(g), handle);
}

// The built graph for (device, shape, direction, and for the backward whether it is
// deterministic), built on first use.
const Built& graph_for(int device, const Shape4& s, bool backward) {
  static std::mutex mutex;
  static std::map<std::tuple<int, Shape4, bool, bool>, Built> graphs;
  const bool deterministic = !backward || attention_deterministic();
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(device, s, backward, deterministic);
  auto it = graphs.find(key);
  if (it == graphs.end()) {
    cudnnHandle_t handle = handle_for(device);
    it = graphs
             .emplace(key, backward ? build_backward(s, deterministic, handle)
                                    : build_forward(s, handle))
             .first;
  }
  return it->second;
}

Shape4 shape_of(const Tensor& q, const Tensor& k) {
  return {q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
}

void run(const Built& built, int device, std::unordered_map<int64_t, void*>& pack,
         const Shape4& s) {
  SY_CHECK(built.graph) << "cuDNN attention refused B " << s.b << " T " << s.t << " H " << s.h
                        << " Hkv " << s.hkv << " hd " << s.hd << " (" << built.refusal
                        << "); cudnn_attention_takes sends such shapes to the built-in kernels";
  cudnnHandle_t handle = handle_for(device);
  SY_CUDNN_CHECK(cudnnSetStream(handle, stream()));
  // The workspace from the tensor allocator (its blocks are ordered on the per-thread stream,
  // which attention runs on: it is never inside a StreamFanout).
  const Tensor workspace = built.workspace > 0 ? Tensor::empty({(built.workspace + 3) / 4},
                                                               DType::kI32, Device::cuda(device))
                                               : Tensor();
  fe_check(built.graph->execute(handle, pack, workspace.defined() ? workspace.raw() : nullptr),
           "running");
}

}  // namespace

bool cudnn_attention_takes(std::initializer_list<const Tensor*> tensors, bool backward) {
  if (attention_kernels() != AttentionKernels::kCudnn) return false;
  const Tensor& q = **tensors.begin();
  const Tensor& k = **(tensors.begin() + 1);
  if (q.dtype() != DType::kBF16 || q.dim(1) != k.dim(1)) return false;  // training shapes only
  if (q.dim(3) % 8 != 0 || q.dim(3) > 256) return false;
  for (const Tensor* t : tensors) {
    if (reinterpret_cast<uintptr_t>(t->data<bf16>()) % 16 != 0) return false;
  }
  // The graph is built (or refused) here, once per shape; running it then finds it cached.
  return graph_for(q.device().index, shape_of(q, k), backward).graph != nullptr;
}

void cudnn_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                             const Tensor& v) {
  const int device = q.device().index;
  set_device(device);
  const Shape4 s = shape_of(q, k);
  std::unordered_map<int64_t, void*> pack = {
      {kQ, q.raw()}, {kK, k.raw()}, {kV, v.raw()}, {kO, out.raw()}, {kStats, lse.raw()}};
  run(graph_for(device, s, false), device, pack, s);
}

void cudnn_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse) {
  const int device = q.device().index;
  set_device(device);
  const Shape4 s = shape_of(q, k);
  std::unordered_map<int64_t, void*> pack = {
      {kQ, q.raw()},       {kK, k.raw()},   {kV, v.raw()},   {kO, out.raw()}, {kDO, dout.raw()},
      {kStats, lse.raw()}, {kDQ, dq.raw()}, {kDK, dk.raw()}, {kDV, dv.raw()}};
  run(graph_for(device, s, true), device, pack, s);
}

}  // namespace sy::cuda
