#!/usr/bin/env python3
"""Builds the Hugging Face fixtures that tests/unit/hf_convert_test.cc checks our import against.

For each architecture `switchyard convert` reads, a small random model made by transformers
itself, saved with save_pretrained (safetensors) under tests/data/hf/<name>/, plus
tests/data/hf/<name>/reference.safetensors: fixed token ids ("input_ids", I32 [B, T]) and the
logits transformers computes on them ("logits", F32 [B, T, V], computed in float64 from the
weights exactly as saved, so a bf16 fixture's reference is that of its bf16 weights).

Rerun from the repository root (CPU is enough; a few seconds):
    python3 tests/data/hf/make_fixtures.py
It needs torch, transformers (>= 4.51, for Qwen3) and safetensors. The outputs are small
(a few hundred KB each) and committed; rerunning rewrites them with the same seed.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 320
BATCH, SEQ = 2, 7

# name: (config class, model class, config kwargs, save dtype, max shard size or None)
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
              initializer_range=0.2)
FIXTURES = {
    # Sparse MoE, untied head, f32, one file.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                     rope_theta=1e6, tie_word_embeddings=False, sliding_window=None),
                torch.float32, None),
    # Qwen3-MoE: head_dim 32 != 64 / 4, qk-norm, renormalised top-k, sharded into several files.
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(COMMON, head_dim=32, intermediate_size=96, moe_intermediate_size=40,
                       num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                       decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1e6,
                       tie_word_embeddings=False),
                  torch.float32, "200KB"),
    # Qwen3-MoE with the top-k weights left unnormalised, in bf16.
    "qwen3_moe_bf16": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                       dict(COMMON, head_dim=32, intermediate_size=96, moe_intermediate_size=40,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                            decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1e6,
                            tie_word_embeddings=False),
                       torch.bfloat16, None),
    # Dense Llama with a tied head, bf16.
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(COMMON, intermediate_size=96, rope_theta=10000.0, tie_word_embeddings=True,
                   attention_bias=False, mlp_bias=False),
              torch.bfloat16, None),
    # Dense Qwen3: wide heads and qk-norm without experts; tied, f16 on disk.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(COMMON, head_dim=32, intermediate_size=96, rope_theta=1e6,
                   tie_word_embeddings=True, use_sliding_window=False),
              torch.float16, None),
}


def make(name, config_cls, model_cls, kwargs, dtype, shard):
    torch.manual_seed(1234)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        # Norm gains start at one; random gains check that each one lands where it belongs.
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    model = model.to(dtype)
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    save = dict(safe_serialization=True)
    if shard:
        save["max_shard_size"] = shard
    model.save_pretrained(out, **save)
    # The reference: the saved weights, exactly, run in float64.
    ref_model = getattr(transformers, model_cls).from_pretrained(
        out, dtype=torch.float64, experts_implementation="eager").eval()
    gen = torch.Generator().manual_seed(99)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    with torch.no_grad():
        logits = ref_model(input_ids=ids).logits
    save_file({"input_ids": ids.to(torch.int32).contiguous(),
               "logits": logits.to(torch.float32).contiguous()},
              os.path.join(out, "reference.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    # A tokenizer is not this fixture's concern, but import copies the tokenizer files it
    # finds: a small tokenizer_config.json checks that they travel verbatim.
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128, "fixture": name}, f, indent=2)
    files = sorted(os.listdir(out))
    size = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    print(f"{name}: {model_cls} {dtype} -> {out} ({size // 1024} KB: {', '.join(files)})")


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)
    for name, spec in FIXTURES.items():
        make(name, *spec)


if __name__ == "__main__":
    main()
