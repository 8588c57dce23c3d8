#!/usr/bin/env python3
"""`switchyard convert` round trip checked by transformers itself: each fixture of
tests/data/hf is imported, exported again (f32 and bf16), and the export loaded with
from_pretrained, which must not report missing or unexpected weights, and must give the
fixture's reference logits (within 1e-4 for f32; for bf16, the logits of the bf16-rounded
fixture weights, which transformers computes too).

Usage: hf_export_test.py SWITCHYARD_BINARY   (run from the repository root; needs torch and
transformers: CMakeLists.txt registers it only where they import).
"""
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file

FIXTURES = ["mixtral", "qwen3_moe", "qwen3_moe_bf16", "llama", "qwen3"]


def convert(binary, src, dst, *extra):
    subprocess.run([binary, "convert", "--input", src, "--output", dst, *extra], check=True,
                   stdout=subprocess.DEVNULL)


def load(path, dtype):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, output_loading_info=True, experts_implementation="eager")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(key):
            raise AssertionError(f"{path}: {key} {info[key]}")
    return model.eval()


def main():
    binary = os.path.abspath(sys.argv[1])
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in FIXTURES:
            src = os.path.join("tests/data/hf", name)
            ref = load_file(os.path.join(src, "reference.safetensors"))
            ids = ref["input_ids"].long()
            run = os.path.join(tmp, name + "_run")
            convert(binary, src, run)
            for dtype_flag, limit in (("f32", 1e-4), ("bf16", 1e-4)):
                out = os.path.join(tmp, f"{name}_{dtype_flag}")
                convert(binary, run, out, "--dtype", dtype_flag, "--max_shard_size", "100KB")
                with torch.no_grad():
                    got = load(out, torch.float64)(input_ids=ids).logits.float()
                    # bf16: the fixture's own weights rounded to bf16, run by transformers.
                    want = ref["logits"]
                    if dtype_flag == "bf16":
                        rounded = load(src, torch.bfloat16).to(torch.float64)
                        want = rounded(input_ids=ids).logits.float()
                err = (got - want).abs().max().item()
                ok = torch.allclose(got, want, rtol=limit, atol=limit)
                print(f"{name} export {dtype_flag}: max |logit diff| {err:.2e} "
                      f"{'ok' if ok else 'FAILED'}")
                failures += not ok
    if failures:
        sys.exit(f"{failures} export(s) disagree with transformers")


if __name__ == "__main__":
    main()
