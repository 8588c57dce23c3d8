#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of build/attention_bench, timed the same
way (CUDA events, median of N runs after warmup) and counted the same way (causal half:
forward 4 B H T^2/2 hd, backward 2.5x that), so the two programs' TFLOP/s compare directly.

    python3 bench/sdpa_bench.py [repeats]
"""
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = [  # name, batch, heads, kv heads, seq, head dim (as bench/attention_bench.cu)
    ("B8 T2048 H16 Hkv16 hd64", 8, 16, 16, 2048, 64),
    ("B4 T2048 H16 Hkv16 hd128", 4, 16, 16, 2048, 128),
    ("B8 T2048 H16 Hkv4 hd64", 8, 16, 4, 2048, 64),
]


def median_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    torch.manual_seed(0)
    print(f"sdpa_bench: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 causal, "
          f"median of {repeats} runs after 3 warmup")
    for name, b, h, hkv, t, hd in SHAPES:
        q = torch.randn(b, h, t, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, hkv, t, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, hkv, t, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        gqa = hkv != h
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        dout = torch.randn_like(out)

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

        def backward():
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

        fwd_flops = 4.0 * b * h * (t * t / 2) * hd
        fwd_ms, bwd_ms = median_ms(forward, repeats), median_ms(backward, repeats)
        print(f"{name:<28} sdpa forward  | {fwd_ms:8.3f} ms | {fwd_flops / fwd_ms * 1e-9:6.1f} TFLOP/s")
        print(f"{name:<28} sdpa backward | {bwd_ms:8.3f} ms | "
              f"{2.5 * fwd_flops / bwd_ms * 1e-9:6.1f} TFLOP/s")


if __name__ == "__main__":
    main()
