#!/usr/bin/env python3
"""The baseline of the rollout benchmark: Hugging Face transformers' `generate` on a
Mixtral-shaped model with the dimensions of configs/bench_moe_1b.textproto (8 layers, d_model
1024, 16 heads, 16 KV heads, 16 experts top-2, expert hidden 2816, vocab 32768, rope theta
10000, untied embeddings), random weights, bf16 on the GPU: 64 prompts of 128 random tokens,
256 new tokens each, sampled at temperature 1 with no top-k / top-p cut, every row decoding
the whole budget (min_new_tokens = max_new_tokens). One warm-up call, then one timed call.

    python3 bench/hf_generate_bench.py                      # the benchmark (needs a GPU)
    python3 bench/hf_generate_bench.py --device cpu --tiny  # smoke check without a GPU

Prints one JSON line: new tokens/s of the timed call (rows x new tokens / its wall time) and
the prefill time (a call with max_new_tokens = 1, timed alone, the prompts' forward and one
sampled token).
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import MixtralConfig, MixtralForCausalLM

BENCH = dict(vocab_size=32768, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=16, num_local_experts=16, num_experts_per_tok=2,
             intermediate_size=2816, rope_theta=10000.0, tie_word_embeddings=False,
             max_position_embeddings=4096, rms_norm_eps=1e-5)
# A few seconds on a CPU: the same code path, small dimensions.
TINY = dict(BENCH, vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, num_local_experts=4, intermediate_size=128,
            max_position_embeddings=256)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small dimensions (smoke check)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.tiny:
        args.prompts, args.prompt_len, args.new_tokens = min(args.prompts, 4), min(args.prompt_len, 16), min(args.new_tokens, 8)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("hf_generate_bench: no GPU visible; use --device cpu --tiny for a smoke check")
    # bf16 on the GPU as the benchmark asks; f32 on the CPU, where bf16 matmuls crawl.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    # rope_theta moved into rope_parameters in transformers 5; both spellings are accepted.
    config = MixtralConfig(**(TINY if args.tiny else BENCH))
    config.pad_token_id = 0
    model = MixtralForCausalLM(config).to(device=device, dtype=dtype).eval()
    prompts = torch.randint(0, config.vocab_size, (args.prompts, args.prompt_len), device=device)
    mask = torch.ones_like(prompts)

    def generate(new_tokens):
        with torch.inference_mode():
            return model.generate(input_ids=prompts, attention_mask=mask, do_sample=True,
                                  temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  pad_token_id=0, eos_token_id=None)

    def timed(new_tokens):
        sync(device)
        start = time.perf_counter()
        out = generate(new_tokens)
        sync(device)
        return time.perf_counter() - start, out

    generate(args.new_tokens)  # warm-up: kernels, caches, allocator
    prefill_s, _ = timed(1)
    seconds, out = timed(args.new_tokens)
    new = out.shape[1] - args.prompt_len
    assert new == args.new_tokens, f"generated {new} new tokens, expected {args.new_tokens}"
    result = {
        "bench": "hf_generate", "tiny": args.tiny, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "transformers": transformers.__version__, "prompts": args.prompts,
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "seconds": round(seconds, 4), "new_tokens_per_s": round(args.prompts * new / seconds, 1),
        "prefill_s": round(prefill_s, 4),
        "prefill_tokens_per_s": round(args.prompts * args.prompt_len / prefill_s, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
