// CUDA GEMM, C = alpha op(A) op(B) + beta C on row-major tensors, through cuBLASLt.
// A and B are both f32 or both bf16; the products accumulate in fp32 (CUBLAS_COMPUTE_32F,
// which for f32 inputs is exact fp32, no TF32); C is f32, or bf16 when A and B are bf16.
// cuBLASLt is column-major: a row-major X [r, c] is the column-major X^T [c, r] with
// leading dimension c, so we ask for C^T = op(B)^T op(A)^T, i.e. swap A and B and keep each
// one's transpose flag. beta == 0 leaves C unread (cuBLASLt's contract; NaN in C is
// ignored), and k == 0 or alpha == 0 reduce to C = beta C without a GEMM, as on the CPU.
// One cuBLASLt handle per device and one workspace per (device, stream), made on first use
// and kept for the process: GEMMs on different streams (StreamFanout) may run at once, so
// they must not share scratch; ops on one device are issued from one host thread.
#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <bit>
#include <compare>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/matmul.h"
#include "kernels/profile.h"

#define SY_CUBLAS_CHECK(expr)                                                \
  do {                                                                       \
    cublasStatus_t sy_cublas_status_ = (expr);                               \
    SY_CHECK(sy_cublas_status_ == CUBLAS_STATUS_SUCCESS)                     \
        << #expr << ": " << cublasLtGetStatusName(sy_cublas_status_) << " (" \
        << cublasLtGetStatusString(sy_cublas_status_) << ")";                \
  } while (0)

namespace sy::cuda {
namespace {

// C = beta C (beta == 0 writes zeros without reading C): the GEMM with nothing to multiply.
template <typename T>
__global__ void scale_kernel(T* c, int64_t n, float beta) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    c[i] = from_f32<T>(beta == 0.0f ? 0.0f : beta * to_f32(c[i]));
  }
}

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLAS's recommendation for Hopper

// The workspace the heuristic may plan for: SWITCHYARD_GEMM_WORKSPACE_MB (0 to 32, default 32).
// With 0 it picks only algorithms without one: on the H200, ~250 of a 1B step's GEMMs are
// "coop" kernels that cuBLASLt precedes with a 4-byte memset of their workspace, a kernel and
// a dependent launch gap each; this is the knob to measure whether the others are as fast.
size_t planned_workspace_bytes() {
  static const size_t bytes = [] {
    const char* text = std::getenv("SWITCHYARD_GEMM_WORKSPACE_MB");
    if (text == nullptr || *text == 0) return kWorkspaceBytes;
    char* end = nullptr;
    const long mb = std::strtol(text, &end, 10);
    SY_CHECK(*end == 0 && mb >= 0 && (size_t{1} << 20) * mb <= kWorkspaceBytes)
        << "SWITCHYARD_GEMM_WORKSPACE_MB=" << text << ": expected a whole number from 0 to "
        << (kWorkspaceBytes >> 20);
    return static_cast<size_t>(mb) << 20;
  }();
  return bytes;
}

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  std::map<cudaStream_t, void*> workspaces;
};

// What one GEMM call uses: its device's handle and its stream's workspace.
struct CallContext {
  cublasLtHandle_t handle;
  void* workspace;
};

// The context for a call on `device` (the one the op's tensors live on) and the current stream.
CallContext call_context(int device) {
  static std::mutex mutex;
  static std::array<DeviceState, kMaxDevices> states;
  SY_CHECK(device < kMaxDevices) << "device " << device << " beyond " << kMaxDevices;
  std::lock_guard<std::mutex> lock(mutex);
  DeviceState& state = states[device];
  if (state.handle == nullptr) SY_CUBLAS_CHECK(cublasLtCreate(&state.handle));
  void*& workspace = state.workspaces[stream()];
  if (workspace == nullptr) SY_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  return {state.handle, workspace};
}

// The largest power of two (up to 256) dividing the address: cuBLASLt's heuristic assumes
// 256-byte aligned operands unless told otherwise, and views (rows()) can be less aligned.
uint32_t alignment(const void* p) {
  uint32_t a = 256;
  while (a > 1 && reinterpret_cast<uintptr_t>(p) % a != 0) a /= 2;
  return a;
}

// Everything the algorithm choice depends on; the heuristic runs once per distinct key.
// m, n and k enter as power-of-two buckets: a dropless MoE layer's per-expert row counts
// change every step, and a heuristic query per new size costs more host time than the GEMM
// takes on the GPU. An algorithm chosen for one size of a bucket serves the others (within
// 2x of it); if cuBLASLt refuses it for a size, that call asks the heuristic afresh.
struct AlgoKey {
  int device;
  int64_t batch;  // 1, or the batch count of a strided-batched call
  int64_t m, n, k;
  bool trans_a, trans_b;
  cudaDataType_t in_type, out_type;
  uint32_t align_a, align_b, align_c;
  bool beta_zero;
  auto operator<=>(const AlgoKey&) const = default;
};

// A cuBLASLt descriptor destroyed at the end of the scope.
template <typename H, cublasStatus_t (*Destroy)(H)>
struct Owned {
  H h = nullptr;
  Owned() = default;
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() {
    if (h) Destroy(h);
  }
};
using MatmulDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

cudaDataType_t cuda_type(DType dtype) { return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

namespace {

// `batch` products of the row-major matrices [rows, cols] stored back to back in a, b and c
// (batch 1: the 2-D op; more: cuBLASLt's strided batch, one call for all of them).
void gemm(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
          float alpha, float beta, int64_t batch, int64_t a_rows, int64_t a_cols, int64_t b_rows,
          int64_t b_cols, int64_t m, int64_t n) {
  const int64_t k = trans_a ? a_rows : a_cols;
  if (batch == 0 || m == 0 || n == 0) return;
  use_device(c);
  if (k == 0 || alpha == 0.0f) {
    const int64_t count = batch * m * n;
    dispatch_float(c.dtype(), "matmul C", [&](auto tag) {
      using T = decltype(tag);
      scale_kernel<T><<<grid_for(count), kThreads, 0, stream()>>>(ptr<T>(c), count, beta);
      launch_check("matmul scale_kernel");
    });
    return;
  }
  const int device = c.device().index;
  // While a step is profiled: the host's time per GEMM call and per heuristic query.
  profile::HostTimer call_timer("cublasLt matmul call");
  const CallContext ctx = call_context(device);

  // Column-major view: D' [n, m] = op(B') [n, k] @ op(A') [k, m], B' = B^T, A' = A^T.
  const cudaDataType_t in_type = cuda_type(a.dtype()), out_type = cuda_type(c.dtype());
  MatmulDesc op;
  SY_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  SY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                 sizeof(op_first)));
  SY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                 sizeof(op_second)));

  Layout first, second, out;
  // A row-major [r, c] tensor is a column-major matrix of c rows, r columns, ld c.
  SY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&first.h, in_type, b_cols, b_rows, b_cols));
  SY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&second.h, in_type, a_cols, a_rows, a_cols));
  SY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&out.h, out_type, n, m, n));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    const int64_t strides[3] = {b_rows * b_cols, a_rows * a_cols, m * n};
    const cublasLtMatrixLayout_t layouts[3] = {first.h, second.h, out.h};
    for (int i = 0; i < 3; ++i) {
      SY_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      SY_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
          layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i],
          sizeof(strides[i])));
    }
  }

  // Every matrix of a batch starts one stride after the last: the stride's bytes bound the
  // alignment as much as the first address does.
  auto align_of = [&](const Tensor& t, int64_t elements) {
    const uint32_t base = alignment(t.raw());
    if (batch == 1) return base;
    const uintptr_t stride_bytes = static_cast<uintptr_t>(elements) * dtype_size(t.dtype());
    return std::min(base, alignment(reinterpret_cast<const void*>(stride_bytes)));
  };
  const uint32_t align_a = align_of(a, a_rows * a_cols), align_b = align_of(b, b_rows * b_cols),
                 align_c = align_of(c, m * n);
  auto bucket = [](int64_t x) { return static_cast<int64_t>(std::bit_ceil(uint64_t(x))); };
  const AlgoKey key{device,   batch,    bucket(m), bucket(n), bucket(k), trans_a, trans_b,
                    in_type,  out_type, align_a,   align_b,   align_c,   beta == 0.0f};
  static std::mutex cache_mutex;
  static std::map<AlgoKey, cublasLtMatmulAlgo_t> cache;
  cublasLtMatmulAlgo_t algo;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) {
      algo = it->second;
      cached = true;
    }
  }
  // `why` names the counter of a profiled step: a bucket seen for the first time, or one
  // whose algorithm refused this size.
  auto heuristic = [&](const char* why) {
    profile::HostTimer timer(why);
    Preference pref;
    SY_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.h));
    const size_t workspace = planned_workspace_bytes();
    SY_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
    for (auto [attr, value] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_b},
                               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_a},
                               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
                               {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}}) {
      SY_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, attr, &value, sizeof(value)));
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    SY_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.handle, op.h, first.h, second.h, out.h,
                                                   out.h, pref.h, 1, &result, &found));
    SY_CHECK(found > 0) << "cuBLASLt has no algorithm for matmul C " << shape_str(c.shape()) << " ("
                        << dtype_name(c.dtype()) << ") = A " << shape_str(a.shape())
                        << (trans_a ? "^T" : "") << " @ B " << shape_str(b.shape())
                        << (trans_b ? "^T" : "") << " (" << dtype_name(a.dtype()) << ")";
    return result.algo;
  };
  if (!cached) {
    // A profiled step names the bucket: a step of a steady run should have none of these.
    char why[160] = "";
    if (profile::is_open()) {
      std::snprintf(why, sizeof(why),
                    "cublasLt heuristic query, new bucket b%lld m%lld n%lld k%lld %s%s %s "
                    "align %u/%u/%u beta%d",
                    static_cast<long long>(batch), static_cast<long long>(key.m),
                    static_cast<long long>(key.n),
                    static_cast<long long>(key.k), trans_a ? "T" : "N", trans_b ? "T" : "N",
                    in_type == CUDA_R_16BF ? "bf16" : "f32", align_a, align_b, align_c,
                    beta == 0.0f ? 0 : 1);
    }
    algo = heuristic(why);
    std::lock_guard<std::mutex> lock(cache_mutex);
    cache.emplace(key, algo);
  }
  auto run = [&] {
    return cublasLtMatmul(ctx.handle, op.h, &alpha, b.raw(), first.h, a.raw(), second.h, &beta,
                          c.raw(), out.h, c.raw(), out.h, &algo, ctx.workspace,
                          planned_workspace_bytes(), stream());
  };
  cublasStatus_t status = run();
  if (cached && status != CUBLAS_STATUS_SUCCESS) {
    // The bucket's algorithm does not fit this size: ask for this one, and let it serve the
    // bucket from now on (a profiled step counts how often this happens).
    algo = heuristic("cublasLt heuristic query (bucket's algorithm refused the size)");
    status = run();
    if (status == CUBLAS_STATUS_SUCCESS) {
      std::lock_guard<std::mutex> lock(cache_mutex);
      cache[key] = algo;
    }
  }
  SY_CUBLAS_CHECK(status);
}

}  // namespace

void matmul(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, float beta) {
  gemm(c, a, b, trans_a, trans_b, alpha, beta, 1, a.dim(0), a.dim(1), b.dim(0), b.dim(1),
       c.dim(0), c.dim(1));
}

void matmul_batched(const Tensor& c, const Tensor& a, const Tensor& b, bool trans_a,
                    bool trans_b, float alpha, float beta) {
  gemm(c, a, b, trans_a, trans_b, alpha, beta, c.dim(0), a.dim(1), a.dim(2), b.dim(1), b.dim(2),
       c.dim(1), c.dim(2));
}

}  // namespace sy::cuda
