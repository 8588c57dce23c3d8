#pragma once
// Tensor-core causal attention (kernels/cuda/attention_tc.cu): the bf16 path with head dim 64
// or 128 that kernels/cuda/attention.cu hands off to, and the switch between it and the CUDA-
// core kernels. Same contract as kernels/attention.h. Defined in CUDA builds only; plain C++
// so that tests and benchmarks can include it.
#include <initializer_list>

#include "kernels/tensor.h"

namespace sy::cuda {

// Which kernels run bf16 attention. Starts as kCudnn where the build has cuDNN attention
// (else kTensorCore), or as SWITCHYARD_ATTENTION=cudnn / tc / simt says (read once, at the
// first call); tests and the benchmark set it to compare them. kCudnn sends bf16 training
// shapes (Tq == Tk, head dim a multiple of 8 up to 256) that cuDNN accepts to its fused
// attention (kernels/cuda/attention_cudnn.cc) and the rest to the tensor-core kernels (head
// dim 64 or 128) or the CUDA-core ones. On an H200, training shape B 8, T 2048, 16 heads of
// 64: cuDNN 0.19 ms forward, 0.71 ms backward; ours 0.30 and 0.98 (bench/attention_bench).
enum class AttentionKernels { kTensorCore, kSimt, kCudnn };
AttentionKernels attention_kernels();
void set_attention_kernels(AttentionKernels kernels);

// True when the tensor-core kernels take a call on these tensors (q first): bf16, head dim 64
// or 128, every tensor 16-byte aligned, and kTensorCore (or kCudnn, for what cuDNN does not
// take) chosen.
bool tensor_core_attention_takes(std::initializer_list<const Tensor*> tensors);
// True when cuDNN takes a call (q, then k, first): kCudnn chosen, bf16, Tq == Tk, head dim a
// multiple of 8 up to 256, every tensor 16-byte aligned, and cuDNN builds a graph for the
// shape and direction (`backward`); a refusal is remembered, so it is asked once per shape.
bool cudnn_attention_takes(std::initializer_list<const Tensor*> tensors, bool backward);

// Launchers; the arguments are already checked by kernels/attention.cc and dims_of.
void tensor_core_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q,
                                   const Tensor& k, const Tensor& v);
void tensor_core_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                    const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse);
void cudnn_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                             const Tensor& v);
void cudnn_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv,
                              const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse);

}  // namespace sy::cuda
