#!/usr/bin/env python3
"""bench/compare.py on made-up logs: the median leaves out the warm-up, the profiled step and
the step after it; a missing PyTorch log leaves its figure out instead of stopping."""
import io
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
sys.path.insert(0, BENCH)
import compare  # noqa: E402

MODEL = ("model: 8 layers (0 dense, 8 MoE), d_model 1024, 16 experts top-2, MTP {mtp} | "
         "1208.11M params (239.22M active) | grid: world 1 | device cuda:0 bf16 | run dir /tmp/x\n")


def step_line(step, ms):
    rate = 16384 / (ms / 1000) / 1e3
    return f"step {step}/12 | loss 10.7 (lm 10.6) | lr 1e-4 | norm 1.2 | {ms} ms | {rate:.1f}k tok/s\n"


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class ReadSwitchyardTest(unittest.TestCase):
    def test_median_leaves_out_warmup_profiled_step_and_the_one_after(self):
        times = {1: 1500, 2: 70, 3: 60, 4: 60, 5: 60, 6: 80, 7: 30, 8: 60, 9: 61, 10: 59}
        text = MODEL.format(mtp=0)
        for step, ms in times.items():
            text += step_line(step, ms)
            if step == 6:
                text += "profile of step 6 (cuda:0):\npeak memory 28.78 GiB (tensors)\n"
        with tempfile.TemporaryDirectory() as d:
            model = compare.read_switchyard(write(d, "sy.log", text), skip=2)
        self.assertEqual(model["steps"], 6)  # 3, 4, 5, 8, 9, 10
        self.assertAlmostEqual(model["tokens_per_s"] / 1e3, 16384 / 0.060 / 1e3, delta=0.1)
        self.assertEqual(model["peak_mem_gib"], 28.78)


class MainTest(unittest.TestCase):
    def test_a_missing_torch_log_leaves_its_figure_out(self):
        with tempfile.TemporaryDirectory() as d:
            sy = [write(d, f"sy{m}.log", MODEL.format(mtp=m) + step_line(3, 60) + step_line(4, 60))
                  for m in (0, 1)]
            pt = write(d, "pt0.log", '{"framework": "pytorch", "mtp": 0, "seq": 2048, '
                       '"tokens_per_s": 240000, "tflops": 390, "mfu": 0.39, '
                       '"peak_mem_gib": 24.5, "active_params": 239220000}\n')
            sys.argv = ["compare.py", "--switchyard", *sy, "--torch", pt,
                        os.path.join(d, "absent.log")]
            out = io.StringIO()
            with redirect_stdout(out):
                status = compare.main()
        self.assertEqual(status, 1)  # one figure missing
        self.assertIn("absent.log does not exist", out.getvalue())
        self.assertIn("MTP 1   only in switchyard's results", out.getvalue())
        self.assertRegex(out.getvalue(), r"MTP 0 +273\.1k +240\.0k +1\.14x")


if __name__ == "__main__":
    unittest.main()
