#!/usr/bin/env python3
"""Switchyard against PyTorch on the benchmark config: reads switchyard's training logs (the
"model: ..." line and the "step N/M | ... | X ms | Y tok/s" lines of trainer/train.cc) and
bench/torch_bench.py's JSON lines, pairs them by MTP modules, and prints tokens/s, TFLOP/s,
MFU, peak memory and the switchyard / PyTorch ratio.

    python3 bench/compare.py --switchyard sy_mtp0.log sy_mtp1.log --torch pt_mtp0.log pt_mtp1.log

Switchyard's tokens/s is the median over its step lines after the first --skip steps (the
warm-up), leaving out a step that was profiled ("profile of step N") and the step after it:
the profiled step ends with the GPU drained, so the next step's clock, which stops when its
losses reach the host, leaves out that step's optimizer (it reads ~50 ms where a steady step
takes ~60 on the 1B benchmark). Both sides' FLOPs per
token use torch_bench.py's formula with their own active-parameter counts, so a mismatch in
the models shows up as a difference in the "active" column.
"""
import argparse
import json
import os
import re
import statistics
import sys

PEAK_TFLOPS = 990.0
MODEL_LINE = re.compile(r"^model: (\d+) layers .*d_model (\d+),.* MTP (\d+) \| ([\d.]+)M params "
                        r"\(([\d.]+)M active\)")
STEP_LINE = re.compile(r"^step (\d+)/\d+ \|.*\| ([\d.]+) ms \| ([\d.]+)([kM]?) tok/s")
PROFILED = re.compile(r"^profile of step (\d+)")
PEAK_MEMORY = re.compile(r"peak(?: memory)? ([\d.]+) GiB")


def read_switchyard(path, skip):
    model, rates, profiled, peak = None, {}, set(), None
    with open(path) as f:
        for line in f:
            if match := MODEL_LINE.match(line):
                layers, d_model, mtp, total, active = match.groups()
                model = {"layers": int(layers), "d_model": int(d_model), "mtp": int(mtp),
                         "total_params": float(total) * 1e6, "active_params": float(active) * 1e6}
            elif match := STEP_LINE.match(line):
                step, _, rate, unit = match.groups()
                rates[int(step)] = float(rate) * {"": 1, "k": 1e3, "M": 1e6}[unit]
            elif match := PROFILED.match(line):
                profiled.add(int(match.group(1)))
            elif match := PEAK_MEMORY.search(line):
                peak = float(match.group(1))
    if model is None:
        raise SystemExit(f"compare: {path} has no 'model: ...' line; is it a switchyard train log?")
    left_out = profiled | {step + 1 for step in profiled}
    kept = [rate for step, rate in rates.items() if step > skip and step not in left_out]
    if not kept:
        raise SystemExit(f"compare: {path} has no step lines after step {skip}")
    model.update(tokens_per_s=statistics.median(kept), steps=len(kept), peak_mem_gib=peak)
    return model


def read_torch(path):
    if not os.path.exists(path):  # e.g. TORCH_MTP=0: that figure was not run
        print(f"compare: {path} does not exist; its figure is left out")
        return []
    results = []
    with open(path) as f:
        for line in f:
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("framework") == "pytorch":
                    results.append(record)
    if not results:
        raise SystemExit(f"compare: {path} has no JSON line from bench/torch_bench.py")
    return results


def fmt_rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def fmt_mem(x):
    return "n/a" if x is None else f"{x:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switchyard", nargs="+", required=True, help="switchyard train logs")
    parser.add_argument("--torch", nargs="+", required=True, help="torch_bench.py outputs")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps of switchyard to leave out")
    args = parser.parse_args()

    ours = {m["mtp"]: m for m in (read_switchyard(p, args.skip) for p in args.switchyard)}
    theirs = {r["mtp"]: r for p in args.torch for r in read_torch(p)}
    header = (f"{'figure':<7} {'switchyard':>10} {'pytorch':>9} {'ratio':>6} | {'TFLOP/s sy':>10} "
              f"{'pt':>6} | {'MFU sy':>6} {'pt':>6} | {'peak GiB sy':>11} {'pt':>5} | "
              f"{'active sy':>9} {'pt':>8}")
    print(f"tokens/s, model TFLOP/s (6 * active + 12 * layers * d_model * seq per token), MFU of "
          f"{PEAK_TFLOPS:.0f} TFLOP/s")
    print(header)
    missing, records = 0, []
    for mtp in sorted(set(ours) | set(theirs)):
        if mtp not in ours or mtp not in theirs:
            print(f"MTP {mtp:<3} only in {'switchyard' if mtp in ours else 'pytorch'}'s results")
            missing += 1
            continue
        sy, pt = ours[mtp], theirs[mtp]
        layers = sy["layers"] + mtp
        sy_flops = 6 * sy["active_params"] + 12 * layers * sy["d_model"] * pt["seq"]
        sy_tflops = sy["tokens_per_s"] * sy_flops / 1e12
        ratio = sy["tokens_per_s"] / pt["tokens_per_s"]
        print(f"MTP {mtp:<3} {fmt_rate(sy['tokens_per_s']):>10} {fmt_rate(pt['tokens_per_s']):>9} "
              f"{ratio:5.2f}x | {sy_tflops:10.1f} {pt['tflops']:6.1f} | "
              f"{100 * sy_tflops / PEAK_TFLOPS:5.1f}% {100 * pt['mfu']:5.1f}% | "
              f"{fmt_mem(sy['peak_mem_gib']):>11} {fmt_mem(pt['peak_mem_gib']):>5} | "
              f"{sy['active_params'] / 1e6:8.2f}M {pt['active_params'] / 1e6:7.2f}M")
        records.append(json.dumps({
            "mtp": mtp, "switchyard_tokens_per_s": sy["tokens_per_s"],
            "pytorch_tokens_per_s": pt["tokens_per_s"], "ratio": ratio,
            "switchyard_tflops": sy_tflops, "pytorch_tflops": pt["tflops"],
            "switchyard_steps_used": sy["steps"]}))
        if abs(sy["active_params"] / pt["active_params"] - 1) > 0.01:
            print(f"warning: MTP {mtp}: the models differ ({sy['active_params'] / 1e6:.2f}M vs "
                  f"{pt['active_params'] / 1e6:.2f}M active parameters)")
    print("\n".join(records))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
