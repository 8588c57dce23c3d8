#!/usr/bin/env python3
"""bench/trace_report.py on small made-up timelines: step cutting at the AdamW launch, GPU busy
time as the union over streams, and each idle gap's cause."""
import os
import subprocess
import sys
import tempfile
import unittest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
sys.path.insert(0, BENCH)
import trace_report  # noqa: E402

US = 1000  # ns


class Timeline:
    """Records in load()'s form: (start, end, stream or thread, correlation, name, kind)."""

    def __init__(self):
        self.gpu, self.api, self.corr = [], [], 0

    def launch(self, call_at, start, end, name, stream=7, call_us=3):
        self.corr += 1
        self.api.append((call_at * US, (call_at + call_us) * US, 1, self.corr,
                         "cudaLaunchKernel_v7000", "runtime"))
        self.gpu.append((start * US, end * US, stream, self.corr, name, "kernel"))

    def sync(self, begin, end, name="cudaStreamSynchronize_v3020"):
        self.corr += 1
        self.api.append((begin * US, end * US, 1, self.corr, name, "runtime"))

    def adamw(self, call_at, start, end):
        self.launch(call_at, start, end, "void sy::cuda::adamw_many_kernel(int)")

    def summarise(self, skip=0):
        return trace_report.summarise(sorted(self.gpu), sorted(self.api), skip)


def causes(step):
    out = {}
    for d, cause, *_ in step["gaps"]:
        out[cause] = out.get(cause, 0) + d
    return out


class SummariseTest(unittest.TestCase):
    def test_steps_busy_time_and_the_three_causes(self):
        t = Timeline()
        t.adamw(0, 10, 100)  # ends step 0
        # Step 1 (100 .. 400): issued late (host issue 20 us), two streams overlapping, a
        # host wait, then a kernel queued early that starts 5 us after the last one ends.
        t.launch(118, 120, 200, "k1", stream=7)
        t.launch(125, 150, 250, "k2", stream=8)  # overlaps k1: busy is their union
        t.sync(126, 260)                          # the host waits for the GPU ...
        t.launch(270, 275, 300, "k3")             # ... then issues: a 25 us host wait gap
        t.launch(280, 305, 330, "k4")             # queued before k3 ended: 5 us device gap
        t.adamw(290, 340, 400)                    # 10 us device gap
        steps = t.summarise()
        self.assertEqual(len(steps), 1)
        s = steps[0]
        self.assertEqual(s["span"], 300 * US)
        # Busy: 120..250, 275..300, 305..330, 340..400.
        self.assertEqual(s["busy"], (130 + 25 + 25 + 60) * US)
        self.assertEqual(causes(s), {"host issue": 20 * US, "host wait": 25 * US,
                                     "device": 15 * US})
        self.assertEqual(s["kernels"]["k2"], [100 * US, 1])
        self.assertEqual(s["calls"]["cudaStreamSynchronize_v3020"], [134 * US, 1])

    def test_skip_leaves_out_the_first_steps(self):
        t = Timeline()
        for i in range(5):
            t.adamw(i * 100, i * 100 + 10, i * 100 + 50)
        self.assertEqual(len(t.summarise(skip=0)), 4)
        self.assertEqual(len(t.summarise(skip=2)), 2)
        with self.assertRaisesRegex(ValueError, "need at least 6"):
            t.summarise(skip=4)

    def test_command_line_says_what_is_missing(self):
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            f.write("kind,start_ns,end_ns,stream_or_thread,correlation,name\n")
            f.write("kernel,0,10,7,1,void k()\n")
        try:
            r = subprocess.run([sys.executable, os.path.join(BENCH, "trace_report.py"), f.name],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("0 launches of adamw_many_kernel", r.stderr)


if __name__ == "__main__":
    unittest.main()
