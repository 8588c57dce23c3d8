// Rotary position embedding on the GPU, half-split pairing: pair (i, i + hd/2) of each head
// vector at position p is rotated by sign * p * theta^(-2i/hd):
//   out_i = x_i cos - x_{i+hd/2} sin,   out_{i+hd/2} = x_i sin + x_{i+hd/2} cos.
// The backward (dx, written) is the rotation by the negative angle. x / out are f32 or
// bf16. Angles, cosines and sines are formed in double, as the CPU reference does (an f32
// angle at positions in the thousands is off by ~1e-4 rad), once per (token, pair index i),
// and used for that pair in every head.
//
// The op is bound by memory. A first kernel writes the (cos, sin) of every (token, i) to a
// table, one thread each (the double-precision sines are then spread over the whole GPU, not
// stacked at the start of the threads that move the data): into scratch for the op with
// positions, into the caller's tensor for rope_table. A second one rotates with the table.
// Where hd/2 is a whole number of 16-byte vectors (8 bf16 or 4 f32) and x, out and the table
// are 16-byte aligned, one thread per (token, group of kHeadsAtOnce heads, W = 8 or 4
// consecutive pairs) reads the W (cos, sin) once and, for each of its heads, x[i0 .. i0+W)
// and x[i0+hd/2 .. i0+hd/2+W) as two 16-byte vectors; otherwise one thread per (token, i)
// moves scalars through every head. The backward's sign multiplies the sine (exactly). On
// both paths a thread reads its elements before it writes the same elements, and no two
// threads touch one element, so out may alias x.
#include "kernels/cuda/common.cuh"
#include "kernels/rope.h"

namespace sy::cuda {
namespace {

// cs[r, i] = (cos, sin) of positions[r] * theta^(-2i/hd), the CPU reference's expressions.
// kShared: the block's threads share theta^(-2i/hd) through shared memory
// (hd <= kMaxVecHeadDim); otherwise each thread forms its own.
template <bool kShared>
__global__ void rope_angles_kernel(float2* cs, const int32_t* positions, int64_t rows, int64_t hd,
                                   double theta) {
  extern __shared__ double inv_freq[];  // [hd / 2] when kShared
  const int64_t half = hd / 2;
  if constexpr (kShared) {
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      inv_freq[i] = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
    }
    __syncthreads();
  }
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * half;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t % half;
    const double f = kShared ? inv_freq[i]
                             : pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
    const double angle = positions[t / half] * f;
    double sin_d, cos_d;
    sincos(angle, &sin_d, &cos_d);
    cs[t] = make_float2(static_cast<float>(cos_d), static_cast<float>(sin_d));
  }
}

// The scalar rotation: one thread per (token, i) through every head.
template <typename T>
__global__ void rope_table_kernel(T* out, const T* x, const float2* cs, int64_t rows,
                                  int64_t heads, int64_t hd, float sign) {
  const int64_t half = hd / 2;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * half;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / half, i = t % half;
    const float2 v = cs[t];
    const float c = v.x, s = sign * v.y;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (r * heads + h) * hd;
      const float x0 = to_f32(x[base + i]), x1 = to_f32(x[base + i + half]);
      out[base + i] = from_f32<T>(x0 * c - x1 * s);
      out[base + i + half] = from_f32<T>(x0 * s + x1 * c);
    }
  }
}

// Heads one thread of rope_vec_kernel rotates: their loads are in flight together, and the
// thread reads its (cos, sin) once for all of them.
constexpr int kHeadsAtOnce = 4;
// rope_angles_kernel keeps theta^(-2i/hd) for every i < hd/2 in shared memory.
constexpr int64_t kMaxVecHeadDim = 4096;

// One tensor of a rope_vec_kernel launch: x rotated into out, `heads` heads a row.
template <typename T>
struct RopeOperand {
  T* out;
  const T* x;
  int64_t heads;
};

// Threads [0, rows * groups(a) * vectors) rotate a, the next rows * groups(b) * vectors rotate
// b (b.heads 0: none), so an attention's q and k take one launch.
template <typename T>
__global__ void rope_vec_kernel(RopeOperand<T> a, RopeOperand<T> b, const float2* cs, int64_t rows,
                                int64_t hd, float sign) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t half = hd / 2, vectors = half / W;
  const int64_t groups_a = (a.heads + kHeadsAtOnce - 1) / kHeadsAtOnce;
  const int64_t groups_b = (b.heads + kHeadsAtOnce - 1) / kHeadsAtOnce;
  const int64_t threads_a = rows * groups_a * vectors;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       u < threads_a + rows * groups_b * vectors;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool first = u < threads_a;
    const int64_t t = first ? u : u - threads_a;
    const int64_t heads = first ? a.heads : b.heads, head_groups = first ? groups_a : groups_b;
    const T* x = first ? a.x : b.x;
    T* out = first ? a.out : b.out;
    const int64_t i0 = (t % vectors) * W, h0 = (t / vectors) % head_groups * kHeadsAtOnce;
    const int64_t r = t / vectors / head_groups;
    // W (cos, sin) pairs: 8 bytes each, 16-byte aligned (i0 is a multiple of W).
    float c[W], s[W];
#pragma unroll
    for (int q = 0; q < W / 2; ++q) {
      const float4 v = *reinterpret_cast<const float4*>(cs + r * half + i0 + 2 * q);
      c[2 * q] = v.x;
      s[2 * q] = sign * v.y;
      c[2 * q + 1] = v.z;
      s[2 * q + 1] = sign * v.w;
    }
    Vec<T> lo[kHeadsAtOnce], hi[kHeadsAtOnce];
#pragma unroll
    for (int k = 0; k < kHeadsAtOnce; ++k) {
      if (h0 + k < heads) {
        const int64_t base = (r * heads + h0 + k) * hd + i0;
        lo[k].raw = *reinterpret_cast<const uint4*>(x + base);
        hi[k].raw = *reinterpret_cast<const uint4*>(x + base + half);
      }
    }
#pragma unroll
    for (int k = 0; k < kHeadsAtOnce; ++k) {
      if (h0 + k < heads) {
        Vec<T> out_lo, out_hi;
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float x0 = to_f32(lo[k].x[e]), x1 = to_f32(hi[k].x[e]);
          out_lo.x[e] = from_f32<T>(x0 * c[e] - x1 * s[e]);
          out_hi.x[e] = from_f32<T>(x0 * s[e] + x1 * c[e]);
        }
        const int64_t base = (r * heads + h0 + k) * hd + i0;
        *reinterpret_cast<uint4*>(out + base) = out_lo.raw;
        *reinterpret_cast<uint4*>(out + base + half) = out_hi.raw;
      }
    }
  }
}

// The (cos, sin) table of `positions` for head dim hd into cs ([rows, hd/2] float2).
void fill_table(float2* cs, const Tensor& positions, int64_t rows, int64_t hd, float theta) {
  const int64_t half = hd / 2;
  if (hd <= kMaxVecHeadDim) {
    rope_angles_kernel<true><<<grid_for(rows * half), kThreads, half * sizeof(double), stream()>>>(
        cs, ptr<int32_t>(positions), rows, hd, static_cast<double>(theta));
  } else {
    rope_angles_kernel<false><<<grid_for(rows * half), kThreads, 0, stream()>>>(
        cs, ptr<int32_t>(positions), rows, hd, static_cast<double>(theta));
  }
  launch_check("rope_angles_kernel");
}

// rope_vec_kernel's threads for one operand of `heads` heads.
template <typename T>
int64_t vec_threads(int64_t rows, int64_t heads, int64_t hd) {
  return rows * ((heads + kHeadsAtOnce - 1) / kHeadsAtOnce) * (hd / 2 / Vec<T>::kWidth);
}

// Rotation of x into out by sign * the angles in cs, and where given of x2 into out2 (an
// attention's k beside its q, with the same B, T and hd): the vector kernel, one launch for
// both, where hd/2 is a whole number of 16-byte vectors and every tensor and the table are
// 16-byte aligned; else the scalar kernel, a launch each.
template <typename T>
void rotate_with(const Tensor& out, const Tensor& x, const float2* cs, float sign,
                 const Tensor* out2 = nullptr, const Tensor* x2 = nullptr) {
  const int64_t rows = x.dim(0) * x.dim(1), hd = x.dim(3), half = hd / 2;
  const RopeOperand<T> a{ptr<T>(out), ptr<T>(x), x.dim(2)};
  const RopeOperand<T> b = x2 ? RopeOperand<T>{ptr<T>(*out2), ptr<T>(*x2), x2->dim(2)}
                              : RopeOperand<T>{nullptr, nullptr, 0};
  // The vector kernel reads W (cos, sin) pairs as float4s: the table must be 16-byte aligned.
  if (vectorizable<T>(half, {a.out, a.x, b.out, b.x, cs})) {  // null (no b) is aligned
    const int64_t threads = vec_threads<T>(rows, a.heads, hd) + vec_threads<T>(rows, b.heads, hd);
    rope_vec_kernel<T><<<grid_for(threads), kThreads, 0, stream()>>>(a, b, cs, rows, hd, sign);
    launch_check("rope_vec_kernel");
    return;
  }
  for (const RopeOperand<T>& o : {a, b}) {
    if (o.heads == 0) continue;
    rope_table_kernel<T><<<grid_for(rows * half), kThreads, 0, stream()>>>(o.out, o.x, cs, rows,
                                                                          o.heads, hd, sign);
    launch_check("rope_table_kernel");
  }
}

// The op with positions: the table into scratch, then the rotation with it (the same
// kernels as with a caller's table, so the same bits).
void rotate(const Tensor& out, const Tensor& x, const Tensor& positions, float theta, float sign) {
  const int64_t rows = x.dim(0) * x.dim(1), heads = x.dim(2), hd = x.dim(3);
  if (rows == 0 || heads == 0 || hd == 0) return;
  use_device(x);
  Scratch cs(static_cast<size_t>(rows * (hd / 2)) * sizeof(float2));
  fill_table(cs.as<float2>(), positions, rows, hd, theta);
  dispatch_float(x.dtype(), "rope input",
                 [&](auto tag) { rotate_with<decltype(tag)>(out, x, cs.as<float2>(), sign); });
}

}  // namespace

void rope_forward(const Tensor& out, const Tensor& x, const Tensor& positions, float theta) {
  rotate(out, x, positions, theta, 1.0f);
}

void rope_backward(const Tensor& dx, const Tensor& dout, const Tensor& positions, float theta) {
  rotate(dx, dout, positions, theta, -1.0f);
}

void rope_table(const Tensor& table, const Tensor& positions, float theta) {
  const int64_t rows = table.dim(0), hd = 2 * table.dim(1);
  if (rows == 0 || hd == 0) return;
  use_device(table);
  fill_table(reinterpret_cast<float2*>(table.data<float>()), positions, rows, hd, theta);
}

void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& table, float sign) {
  if (x.numel() == 0) return;
  use_device(x);
  const auto* cs = reinterpret_cast<const float2*>(table.data<float>());
  dispatch_float(x.dtype(), "rope input",
                 [&](auto tag) { rotate_with<decltype(tag)>(out, x, cs, sign); });
}

void rope_rotate_qk(const Tensor& q, const Tensor& k, const Tensor& table, float sign) {
  if (q.numel() + k.numel() == 0) return;
  use_device(q);
  const auto* cs = reinterpret_cast<const float2*>(table.data<float>());
  dispatch_float(q.dtype(), "rope input",
                 [&](auto tag) { rotate_with<decltype(tag)>(q, q, cs, sign, &k, &k); });
}

}  // namespace sy::cuda
