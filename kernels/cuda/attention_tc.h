#pragma once
// Tensor-core causal attention (kernels/cuda/attention_tc.cu): the bf16 path with head dim 64
// or 128 that kernels/cuda/attention.cu hands off to, and the switch between it and the CUDA-
// core kernels. Same contract as kernels/attention.h. Defined in CUDA builds only; plain C++
// so that tests and benchmarks can include it.
#include <initializer_list>

#include "kernels/tensor.h"

namespace sy::cuda {

// Which kernels run bf16 attention of head dim 64 or 128. Starts as kTensorCore, or kSimt /
// kCudnn when the environment has SWITCHYARD_ATTENTION=simt / cudnn (read once, at the first
// call); tests and the benchmark set it to compare them. kCudnn sends bf16 training shapes
// (Tq == Tk, head dim a multiple of 8 up to 256) to cuDNN's fused attention
// (kernels/cuda/attention_cudnn.cc) and the rest to the tensor-core kernels; it is opt-in
// until measured against them.
enum class AttentionKernels { kTensorCore, kSimt, kCudnn };
AttentionKernels attention_kernels();
void set_attention_kernels(AttentionKernels kernels);

// True when the tensor-core kernels take a call on these tensors (q first): bf16, head dim 64
// or 128, every tensor 16-byte aligned, and kTensorCore (or kCudnn, for what cuDNN does not
// take) chosen.
bool tensor_core_attention_takes(std::initializer_list<const Tensor*> tensors);
// True when cuDNN takes a call (q, then k, first): kCudnn chosen, bf16, Tq == Tk, head dim a
// multiple of 8 up to 256, every tensor 16-byte aligned.
bool cudnn_attention_takes(std::initializer_list<const Tensor*> tensors);

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
