#!/usr/bin/env python3
"""Every number of metrics.jsonl is in the run's TensorBoard events, read back with
TensorBoard's own reader (EventAccumulator): a short `switchyard train` run of the tiny model
on the CPU, then a short GRPO run from it, each with logging { tensorboard: true }. For every
step line of metrics.jsonl, each numeric key but "step" must be a scalar tag with a value at
that step equal to the JSONL value rounded to float32 (the events' simple_value).

Usage: tensorboard_events_test.py SWITCHYARD_BINARY. Exits 77 (ctest: skipped) where the
tensorboard package does not import, unless SY_TENSORBOARD_REQUIRED=1 (CI), where that fails.
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import unittest

SKIP = 77
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

try:
    from tensorboard.backend.event_processing import event_accumulator
except ImportError as error:  # pragma: no cover - depends on the machine
    if os.environ.get("SY_TENSORBOARD_REQUIRED") == "1":
        print(f"FAIL (SY_TENSORBOARD_REQUIRED=1): cannot import tensorboard: {error}")
        sys.exit(1)
    print(f"skipped: cannot import tensorboard ({error}); pip install tensorboard")
    sys.exit(SKIP)

SWITCHYARD = None  # set from argv in main


def float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def run(args):
    done = subprocess.run([SWITCHYARD, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    if done.returncode != 0:
        raise AssertionError(f"switchyard {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done.stdout


def jsonl_steps(run_dir):
    """(step, key, value) of every numeric field but "step" of metrics.jsonl's step lines."""
    out = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "step" not in record:
                continue
            for key, value in record.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                out.append((record["step"], key, value))
    return out


def event_scalars(run_dir):
    """{tag: {step: value}} of the run's event files, every event kept."""
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        scalars[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    return scalars


class EventsMatchJsonl(unittest.TestCase):
    def check_run(self, run_dir, must_have):
        expected = jsonl_steps(run_dir)
        self.assertTrue(expected, "metrics.jsonl has no step lines")
        keys = {k for _, k, _ in expected}
        for key in must_have:
            self.assertIn(key, keys, "the run did not log what this test expects to compare")
        scalars = event_scalars(run_dir)
        missing = sorted({k for _, k, _ in expected if k not in scalars})
        self.assertEqual(missing, [], f"metrics.jsonl keys with no TensorBoard scalar: {missing}")
        for step, key, value in expected:
            with self.subTest(key=key, step=step):
                self.assertIn(step, scalars[key], f"{key}: no event at step {step}")
                got = scalars[key][step]
                want = float32(float(value))
                if math.isnan(want):
                    self.assertTrue(math.isnan(got))
                else:
                    self.assertEqual(got, want, f"{key} at step {step}: {got} != {value}")

    def test_train_then_grpo(self):
        with tempfile.TemporaryDirectory() as tmp:
            train_dir = os.path.join(tmp, "train")
            run(["train", "--config", "configs/tiny.textproto", "--run_dir", train_dir,
                 "--set", "device: DEVICE_CPU",
                 "--set", "train { steps: 6 micro_batch: 8 log_interval: 2 eval_interval: 3 "
                          "cpu_threads: 1 }",
                 "--set", "data { arithmetic { eval_examples: 8 } }",
                 "--set", "checkpoint { interval: 0 } schedule { warmup_steps: 2 }",
                 "--set", "logging { tensorboard: true }"])
            self.check_run(train_dir, ["loss", "lr", "grad_norm", "tokens_per_s", "eval_loss"])

            rl_dir = os.path.join(tmp, "grpo")
            run(["rl", "--config", "configs/grpo_arith.textproto", "--run_dir", rl_dir,
                 "--set", f'device: DEVICE_CPU rl {{ init_checkpoint: "{train_dir}" steps: 2 '
                          "prompts_per_step: 4 group_size: 2 eval_interval: 2 "
                          "eval_examples: 4 log_interval: 1 }",
                 "--set", "logging { tensorboard: true }"])
            self.check_run(rl_dir, ["reward_mean", "kl", "entropy", "eval_accuracy"])


def main():
    global SWITCHYARD
    if len(sys.argv) < 2:
        print("usage: tensorboard_events_test.py SWITCHYARD_BINARY")
        return 2
    SWITCHYARD = os.path.abspath(sys.argv.pop(1))
    return 0 if unittest.main(exit=False).result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
