"""Reward commands that break the protocol in one way each, for reward_command_test.cc.

Usage: misbehave.py MODE, MODE one of
  crash      answer the first request, then print a message to stderr and exit 3
  garbage    answer "hello" instead of a number
  nan        answer NaN (what json.dumps writes for float("nan"); not JSON)
  too_few    answer only every other request (and keep waiting for more)
  too_many   answer each request with two lines (in one write)
  late_extra answer each request, then one more line a moment later
  chatty     write 1 MiB to stderr before reading anything, then answer each request with a
             long line (switchyard must read while it writes, or both sides block)
"""
import json
import sys
import time

mode = sys.argv[1]
if mode == "chatty":
    for _ in range(1024):
        sys.stderr.write("x" * 1023 + "\n")
    sys.stderr.flush()

for i, raw in enumerate(sys.stdin.buffer):
    req = json.loads(raw.decode("utf-8"))
    if mode == "crash":
        if i == 1:
            print("reward: cannot score request 1: the judge fell over", file=sys.stderr, flush=True)
            sys.exit(3)
        print(1, flush=True)
    elif mode == "garbage":
        print("hello", flush=True)
    elif mode == "nan":
        print(json.dumps(float("nan")), flush=True)
    elif mode == "too_few":
        if i % 2 == 0:
            print(1, flush=True)
    elif mode == "too_many":
        sys.stdout.write("1\n2\n")
        sys.stdout.flush()
    elif mode == "late_extra":
        print(1, flush=True)
        time.sleep(0.1)
        print(7, flush=True)
    elif mode == "chatty":
        print(json.dumps({"reward": len(req["completion"]), "note": "y" * 1000}), flush=True)
    else:
        sys.exit(f"misbehave.py: unknown mode {mode}")
