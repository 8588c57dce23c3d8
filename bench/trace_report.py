#!/usr/bin/env python3
"""Summarises a GPU timeline from bench/cupti_trace.cc for the training steps in it.

    python3 bench/trace_report.py trace.csv [--skip 2] [--gaps 25] [--kernels 30]

Steps are cut at the end of each AdamW launch (adamw_many_kernel: one per step; --step-kernel
names another, e.g. advance_rollout_rows_kernel for the rollout engine's decode steps). For every
step after the first `skip`: its span, the time some GPU work ran (the union of kernels,
copies and memsets over all streams), and the idle rest. Idle time is split by cause, from
the call that launched the work right after the gap:
  host wait   the host was blocked in a synchronising call (a copy to the host, a stream or
              event sync) that ended inside the gap: the queue had drained, then the host
              issued the next work;
  host issue  the next work was launched after the GPU went idle, with no wait before it:
              the host was slower to issue than the GPU to run;
  device      the next work had been launched before the gap began (stream waits, launch
              latency).
Then, for the median step: its largest gaps with the work on either side, kernel time by
kernel name, and the host's time per CUDA runtime call.
"""
import argparse
import bisect
import collections
import csv
import statistics
import sys

GPU_KINDS = ("kernel", "memcpy", "memset")
SYNC_WORDS = ("Synchronize", "cudaMemcpy_", "cudaMemcpy_v", "cuMemcpyDtoH", "cuMemcpyHtoD",
              "cuMemcpy_", "cuCtxSynchronize", "cuStreamSynchronize", "cuEventSynchronize")
STEP_KERNEL = "adamw_many_kernel"


def short(name, width=70):
    for prefix in ("void ", "sy::cuda::", "(anonymous namespace)::"):
        name = name.replace(prefix, "")
    return name if len(name) <= width else name[: width - 3] + "..."


def is_sync(name):
    # Synchronous copies block the host; their Async variants do not.
    return "Async" not in name and any(w in name for w in SYNC_WORDS)


def load(path):
    gpu, api = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rec = (int(row["start_ns"]), int(row["end_ns"]), int(row["stream_or_thread"]),
                   int(row["correlation"]), row["name"], row["kind"])
            (gpu if row["kind"] in GPU_KINDS else api).append(rec)
    gpu.sort()
    api.sort()
    return gpu, api


def merge(ops):
    """Union of [start, end) intervals of ops sorted by start: list of [start, end]."""
    out = []
    for s, e, *_ in ops:
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def summarise(gpu, api, skip, step_kernel=STEP_KERNEL):
    """Per-step summaries (dicts: span, busy, gaps, kernels, calls) of the steps after the
    first `skip`, from load()'s records. Raises ValueError with too few steps."""
    ends = [e for s, e, _, _, n, k in gpu if k == "kernel" and step_kernel in n]
    if len(ends) < skip + 2:
        raise ValueError(f"{len(ends)} launches of {step_kernel}; need at least {skip + 2} "
                         f"(run more steps or lower --skip)")
    launch = {}  # correlation -> earliest start of an API record with it
    for s, e, _, c, _, _ in api:
        if c and (c not in launch or s < launch[c]):
            launch[c] = s
    syncs = sorted((e, s, n) for s, e, _, _, n, _ in api if is_sync(n))
    sync_ends = [x[0] for x in syncs]

    steps = []
    for i in range(skip + 1, len(ends)):
        lo, hi = ends[i - 1], ends[i]
        ops = [op for op in gpu if op[0] < hi and op[1] > lo]
        clipped = [(max(s, lo), min(e, hi), st, c, n, k) for s, e, st, c, n, k in ops]
        busy = merge(sorted(clipped))
        by_start, by_end = {}, {}
        for op in clipped:
            by_start.setdefault(op[0], op)
            if op[1] not in by_end or op[0] > by_end[op[1]][0]:
                by_end[op[1]] = op
        # The step starts where the last AdamW ended: idle time before its first work counts.
        if busy and busy[0][0] > lo:
            busy.insert(0, [lo, lo])
            by_end[lo] = (lo, lo, 0, 0, f"end of the last step's {step_kernel}", "kernel")
        gaps = []
        for (s0, e0), (s1, e1) in zip(busy, busy[1:]):
            g0, g1 = e0, s1
            nxt, prev = by_start[s1], by_end[e0]
            started = launch.get(nxt[3])
            j = bisect.bisect_left(sync_ends, g0)
            waited = [syncs[j2] for j2 in range(j, len(syncs)) if syncs[j2][0] <= g1]
            if started is not None and started < g0:
                cause = "device"
            elif waited:
                cause = "host wait"
            else:
                cause = "host issue"
            gaps.append((g1 - g0, cause, prev[4], nxt[4], waited[-1][2] if waited else ""))
        kernels = collections.defaultdict(lambda: [0, 0])
        for s, e, _, _, n, k in clipped:
            kernels[n][0] += e - s
            kernels[n][1] += 1
        calls = collections.defaultdict(lambda: [0, 0])
        for s, e, _, _, n, k in api:
            if k == "runtime" and lo <= s < hi:
                calls[n][0] += e - s
                calls[n][1] += 1
        steps.append({
            "span": hi - lo, "busy": sum(e - s for s, e in busy), "gaps": gaps,
            "kernels": kernels, "calls": calls,
        })
    return steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--skip", type=int, default=2, help="steps left out at the start")
    ap.add_argument("--gaps", type=int, default=25)
    ap.add_argument("--kernels", type=int, default=30)
    ap.add_argument("--step-kernel", default=STEP_KERNEL,
                    help="a kernel launched once per step: steps end where it ends")
    args = ap.parse_args()
    gpu, api = load(args.trace)
    try:
        steps = summarise(gpu, api, args.skip, args.step_kernel)
    except ValueError as e:
        sys.exit(f"trace_report: {args.trace}: {e}")

    ms = lambda ns: ns / 1e6
    print(f"{len(steps)} steps (the first {args.skip} left out); times in ms")
    print(f"{'step':>4} {'span':>8} {'busy':>8} {'idle':>7}  host wait  host issue  device")
    for i, st in enumerate(steps):
        by = collections.Counter()
        for d, cause, *_ in st["gaps"]:
            by[cause] += d
        print(f"{i + args.skip + 1:>4} {ms(st['span']):8.2f} {ms(st['busy']):8.2f} "
              f"{ms(st['span'] - st['busy']):7.2f}  {ms(by['host wait']):9.2f} "
              f"{ms(by['host issue']):10.2f} {ms(by['device']):7.2f}")
    spans = [st["span"] for st in steps]
    med = steps[spans.index(sorted(spans)[len(spans) // 2])]
    print(f"\nmedian step: span {ms(med['span']):.2f}, GPU busy {ms(med['busy']):.2f} "
          f"({100 * med['busy'] / med['span']:.1f}%)")

    print(f"\nlargest gaps of the median step ({len(med['gaps'])} gaps, "
          f"{ms(sum(g[0] for g in med['gaps'])):.2f} ms):")
    for d, cause, before, after, wait in sorted(med["gaps"], reverse=True)[: args.gaps]:
        print(f"  {d / 1e3:8.1f} us  {cause:<10} after {short(before, 45)} | before "
              f"{short(after, 45)}{' | ' + wait if wait else ''}")

    total = sum(v[0] for v in med["kernels"].values())
    print(f"\nGPU time by kernel, median step (sum {ms(total):.2f} ms; streams may overlap):")
    for n, (t, c) in sorted(med["kernels"].items(), key=lambda kv: -kv[1][0])[: args.kernels]:
        print(f"  {ms(t):8.3f} {100 * t / total:5.1f}% {c:5d}x  {short(n, 90)}")

    print("\nhost time by CUDA runtime call, median step:")
    for n, (t, c) in sorted(med["calls"].items(), key=lambda kv: -kv[1][0])[:15]:
        print(f"  {ms(t):8.3f} {c:6d}x  {n}")


if __name__ == "__main__":
    main()
