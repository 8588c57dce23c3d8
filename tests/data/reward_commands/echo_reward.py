"""A well-behaved reward command for tests/unit/reward_command_test.cc.

Reward of a request = number of characters in the completion, plus 100 when the completion
(stripped) equals the request's "answer" field. It alternates between the two answer forms
the protocol allows (a bare number, an object with "reward"), logs to stderr, and flushes
every line because switchyard waits for each answer.
"""
import json
import sys

for i, raw in enumerate(sys.stdin.buffer):
    req = json.loads(raw.decode("utf-8"))
    reward = len(req["completion"])
    if req.get("answer") is not None and req["answer"] == req["completion"].strip():
        reward += 100
    print(f"scored request {i}", file=sys.stderr, flush=True)
    out = reward if i % 2 == 0 else {"reward": reward, "request": i}
    print(json.dumps(out), flush=True)
