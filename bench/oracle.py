#!/usr/bin/env python3
"""An outside oracle for switchyard: the same model, written again in PyTorch from the C++
source (models/layers.cc, models/transformer.cc, kernels/cpu/*.cc), recomputes one training
step from a `switchyard dump-step` file and compares logits, every loss term and every
parameter's gradient with switchyard's.

    switchyard dump-step --config configs/tiny.textproto --out /tmp/step.safetensors
    python3 bench/oracle.py /tmp/step.safetensors                  # float64 on the CPU
    python3 bench/oracle.py /tmp/step.safetensors --device cuda --dtype float32

or let it run switchyard first (what the ctest does):

    python3 bench/oracle.py --switchyard build/switchyard --config CFG [--set TEXT]...
                            [--train_steps N]   # dump from a checkpoint after N steps

The file alone is enough: weights, batch and the model's shape (metadata spec.*) are in it.
Errors are relative L2 norms, ||switchyard - oracle|| / ||oracle||, against tolerances for
the dump's compute dtype (metadata compute_dtype: f32 or bf16) and the oracle's own dtype.
Exits 1 when any quantity fails, 77 when torch is not importable (ctest: skipped).
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("oracle: torch is not importable; skipped (pip install torch)")
    sys.exit(77)

# Relative L2 error bounds by the precision of the numbers compared: the dump's compute
# dtype, or the oracle's own dtype when that is coarser. f32: rounding of ~1e-7 grows by
# sums over a few hundred terms and a dozen layers (measured: <= 1e-6 everywhere). bf16
# (8-bit mantissa) rounds each GEMM operand at ~4e-3; single gradients whose entries are
# sums with cancellation (norm gains) or that follow routing decisions (router, experts: a
# near tie may go the other way) move most, so each tensor gets a loose bound and all
# gradients together ("grad (all)") a tight one.
TOLERANCES = {
    "f32": {"loss": 1e-6, "logits": 1e-5, "grad": 1e-4, "grads": 1e-5},
    "bf16": {"loss": 2e-2, "logits": 5e-2, "grad": 2.5e-1, "grads": 5e-2},
}
# Routing choices closer than this (score units) may legitimately go the other way between
# float32 and float64; the oracle says so when it finds one.
NEAR_TIE = 1e-5

SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "I32": torch.int32,
                      "I64": torch.int64, "F64": torch.float64}


def load_safetensors(path):
    """(tensors by name, metadata) from a safetensors file, without the safetensors package."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    metadata = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + header_len:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        if end == begin:
            tensors[name] = torch.zeros(entry["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype)
        tensors[name] = flat.reshape(entry["shape"])
    return tensors, metadata


class Spec:
    """models/model_spec.h, from the dump's spec.* metadata."""

    def __init__(self, meta):
        def get(key, kind=int):
            value = meta["spec." + key]
            return value if kind is str else kind(float(value))
        self.vocab_size, self.d_model = get("vocab_size"), get("d_model")
        self.n_layers, self.n_heads, self.n_kv_heads = get("n_layers"), get("n_heads"), get("n_kv_heads")
        self.seq_len, self.rope_theta, self.norm_eps = get("seq_len"), get("rope_theta", float), get("norm_eps", float)
        self.first_k_dense, self.tie_embeddings = get("first_k_dense"), bool(get("tie_embeddings"))
        self.mtp_modules, self.mtp_loss_weight = get("mtp_modules"), get("mtp_loss_weight", float)
        self.num_experts, self.top_k = get("moe.num_experts"), get("moe.top_k")
        self.score_function = get("moe.score_function", str)
        self.normalize_topk, self.route_scale = bool(get("moe.normalize_topk")), get("moe.route_scale", float)
        self.capacity_factor = get("moe.capacity_factor", float)
        self.aux_coef, self.seq_aux_coef = get("moe.aux_loss_coef", float), get("moe.seq_aux_loss_coef", float)
        self.z_coef = get("moe.z_loss_coef", float)
        self.n_groups, self.topk_groups = get("moe.n_groups"), get("moe.topk_groups")

    @property
    def head_dim(self):
        return self.d_model // self.n_heads


# --- the model ---------------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    # kernels/cpu/rmsnorm.cc: y = x / sqrt(mean(x^2) + eps) * w.
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, positions, theta):
    # kernels/cpu/rope.cc: pairs (i, i + hd/2) ("half" pairing, not interleaved), rotated by
    # position * theta^(-2i/hd). x [B, T, H, hd], positions [B, T].
    hd = x.shape[-1]
    half = hd // 2
    inv_freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64, device=x.device) / hd)
    angle = positions.to(torch.float64)[..., None] * inv_freq
    cos = angle.cos().to(x.dtype)[:, :, None, :]
    sin = angle.sin().to(x.dtype)[:, :, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)


def swiglu(h):
    # kernels/cpu/swiglu.cc: h = [gate | up] along the last dim (w13 = [W1 rows; W3 rows]).
    f = h.shape[-1] // 2
    return F.silu(h[..., :f]) * h[..., f:]


def expert_capacity(factor, tokens, k, experts):
    # kernels/permute.cc: ceil(factor * N * k / E), a near-integer product kept as is.
    if factor <= 0:
        return -1
    exact = factor * tokens * k / experts
    nearest = round(exact)
    if abs(exact - nearest) <= 1e-9 * max(1.0, exact):
        return int(nearest)
    return int(math.ceil(exact))


class Oracle:
    def __init__(self, spec, weights, acc_dtype):
        self.s = spec
        self.w = weights
        self.acc = acc_dtype  # softmax / cross-entropy / routing precision
        self.balance = {}     # "aux[layers.1]" -> value
        self.margins = {}     # MoE layer -> smallest gap of a routing decision
        self.dropped = {}     # MoE layer -> (dropped slots, slots)

    def attention(self, prefix, x, layout):
        s, w = self.s, self.w
        b, t = layout
        hd, h, kv = s.head_dim, s.n_heads, s.n_kv_heads
        n = rmsnorm(x, w[prefix + "attn_norm.weight"], s.norm_eps)
        q = (n @ w[prefix + "attn.wq"].T).view(b, t, h, hd)
        k = (n @ w[prefix + "attn.wk"].T).view(b, t, kv, hd)
        v = (n @ w[prefix + "attn.wv"].T).view(b, t, kv, hd)
        positions = torch.arange(t, device=x.device).expand(b, t)
        q, k = rope(q, positions, s.rope_theta), rope(k, positions, s.rope_theta)
        # GQA: query head j reads KV head j // (H / Hkv).
        k = k.repeat_interleave(h // kv, dim=2)
        v = v.repeat_interleave(h // kv, dim=2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, H, T, hd]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        p = torch.softmax(scores.to(self.acc), dim=-1).to(x.dtype)
        o = (p @ v).transpose(1, 2).reshape(b * t, h * hd)
        return o @ w[prefix + "attn.wo"].T

    def mlp(self, prefix, n):
        return swiglu(n @ self.w[prefix + "w13"].T) @ self.w[prefix + "w2"].T

    def route(self, name, scores, bias):
        """kernels/cpu/router.cc topk_forward: indices [N, k] by descending key = score + bias,
        within the best topk_groups groups (a group's key: the sum of its best two keys)."""
        s = self.s
        key = scores.detach().to(torch.float64) + (bias.to(torch.float64) if bias is not None else 0)
        n_tokens, e = key.shape
        gaps = []
        if s.n_groups > 1:
            grouped = key.view(n_tokens, s.n_groups, e // s.n_groups)
            best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
            ranked = best.sort(dim=-1, descending=True).values
            if s.topk_groups < s.n_groups:
                gaps.append(ranked[:, s.topk_groups - 1] - ranked[:, s.topk_groups])
            chosen = best.topk(s.topk_groups, dim=-1).indices
            allowed = torch.zeros_like(best, dtype=torch.bool).scatter_(1, chosen, True)
            key = key.masked_fill(~allowed.repeat_interleave(e // s.n_groups, dim=1), float("-inf"))
        ranked = key.sort(dim=-1, descending=True).values
        if s.top_k < e:
            gap = ranked[:, s.top_k - 1] - ranked[:, s.top_k]
            gaps.append(gap[torch.isfinite(gap)])
        self.margins[name] = min((g.min().item() for g in gaps if g.numel()), default=float("inf"))
        return key.topk(s.top_k, dim=-1).indices

    def moe(self, prefix, x, layout):
        s, w = self.s, self.w
        b, t = layout
        name = prefix.rstrip(".")
        n = rmsnorm(x, w[prefix + "ffn_norm.weight"], s.norm_eps)
        logits = (n @ w[prefix + "moe.router.weight"].T).to(self.acc)
        scores = torch.sigmoid(logits) if s.score_function == "sigmoid" else torch.softmax(logits, -1)
        idx = self.route(name, scores, w.get(prefix + "moe.router.bias"))
        gate = scores.gather(1, idx)  # the unbiased scores of the chosen experts
        if s.normalize_topk:
            gate = gate / gate.sum(-1, keepdim=True)
        gate = gate * s.route_scale
        n_tokens, k, e = idx.shape[0], s.top_k, s.num_experts

        # Capacity: each expert keeps its earliest slots in slot order (token-major, then the
        # token's choices by descending key); dropped slots contribute nothing.
        flat = idx.reshape(-1)
        keep = torch.ones_like(flat, dtype=torch.bool)
        cap = expert_capacity(s.capacity_factor, n_tokens, k, e)
        if cap >= 0:
            one_hot = F.one_hot(flat, e)
            rank = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # slot's rank within its expert
            keep = rank < cap
        self.dropped[name] = ((~keep).sum().item(), keep.numel())
        out = torch.zeros_like(n)
        w13, w2 = w[prefix + "moe.experts.w13"], w[prefix + "moe.experts.w2"]
        token = torch.arange(n_tokens, device=x.device).repeat_interleave(k)
        gate_flat = gate.reshape(-1).to(n.dtype)
        for expert in range(e):
            slots = ((flat == expert) & keep).nonzero().squeeze(-1)
            if slots.numel() == 0:
                continue
            rows = token[slots]
            y = swiglu(n[rows] @ w13[expert].T) @ w2[expert].T
            out = out.index_add(0, rows, y * gate_flat[slots, None])
        if prefix + "moe.shared.w13" in w:
            out = out + self.mlp(prefix + "moe.shared.", n)

        # Balancing terms (models/layers.cc): f counts routed slots before dropping and carries
        # no gradient; P normalises each token's scores to sum 1.
        counts = torch.bincount(flat, minlength=e).to(self.acc)
        f = e * counts / (k * n_tokens)
        p = scores / scores.sum(-1, keepdim=True)
        aux = (f * p.sum(0)).sum() / n_tokens
        seq_counts = F.one_hot(idx.view(b, t * k), e).sum(1).to(self.acc)  # [B, E]
        f_seq = e * seq_counts / (k * t)
        seq_aux = (f_seq * p.view(b, t, e).sum(1) / t).sum() / b
        z = torch.logsumexp(logits, -1).pow(2).sum() / n_tokens
        for term, coef, value in (("aux", s.aux_coef, aux), ("seq_aux", s.seq_aux_coef, seq_aux),
                                  ("z", s.z_coef, z)):
            self.balance[f"{term}[{name}]"] = coef * value
        return out

    def block(self, prefix, x, layout, moe):
        h = x + self.attention(prefix, x, layout)
        if moe:
            return h + self.moe(prefix, h, layout)
        n = rmsnorm(h, self.w[prefix + "ffn_norm.weight"], self.s.norm_eps)
        return h + self.mlp(prefix + "mlp.", n)

    def head(self, hn):
        w = self.w["embed.weight"] if self.s.tie_embeddings else self.w["lm_head.weight"]
        return hn @ w.T

    def ce_sum(self, logits, targets):
        return F.cross_entropy(logits.to(self.acc), targets.long(), ignore_index=-1, reduction="sum")

    def step(self, inputs, targets):
        """The loss terms of models/transformer.cc forward_backward, and the main logits."""
        s, w = self.s, self.w
        b, t = inputs.shape
        layout = (b, t)
        embed = w["embed.weight"]
        h = embed[inputs.reshape(-1).long()]
        for layer in range(s.n_layers):
            h = self.block(f"layers.{layer}.", h, layout, layer >= s.first_k_dense)
        logits = self.head(rmsnorm(h, w["final_norm.weight"], s.norm_eps))
        flat_targets = targets.reshape(-1)
        terms = {"count.lm": (flat_targets != -1).sum().item()}
        terms["eval.lm_sum"] = self.ce_sum(logits, flat_targets)
        terms["loss.lm"] = terms["eval.lm_sum"] / max(terms["count.lm"], 1)
        mtp_total = torch.zeros((), dtype=self.acc, device=h.device)
        prev = h
        for k in range(1, s.mtp_modules + 1):
            # Position i sees token t_{i+k} and predicts target i+k; past the end: padding.
            ids = torch.zeros_like(inputs)
            tgt = torch.full_like(targets, -1)
            ids[:, :t - k], tgt[:, :t - k] = inputs[:, k:], targets[:, k:]
            p = f"mtp.{k - 1}."
            a = rmsnorm(prev, w[p + "hnorm.weight"], s.norm_eps)
            c = rmsnorm(embed[ids.reshape(-1).long()], w[p + "enorm.weight"], s.norm_eps)
            z = torch.cat([a, c], dim=-1) @ w[p + "proj"].T
            hk = self.block(p + "block.", z, layout, s.first_k_dense < s.n_layers)
            count = (tgt != -1).sum().item()
            ce = self.ce_sum(self.head(rmsnorm(hk, w[p + "out_norm.weight"], s.norm_eps)),
                             tgt.reshape(-1)) / max(count, 1)
            terms[f"count.mtp.{k - 1}"] = count
            terms[f"loss.mtp.{k - 1}"] = ce
            mtp_total = mtp_total + s.mtp_loss_weight / s.mtp_modules * ce
            prev = hk
        terms["loss.mtp"] = mtp_total
        for term in ("aux", "seq_aux", "z"):
            parts = [v for key, v in self.balance.items() if key.startswith(term + "[")]
            terms[f"loss.balance.{term}"] = sum(parts) if parts else torch.zeros((), dtype=self.acc)
            for key, v in self.balance.items():
                if key.startswith(term + "["):
                    terms[f"loss.{key}"] = v
        terms["loss.balance"] = sum(terms[f"loss.balance.{x}"] for x in ("aux", "seq_aux", "z"))
        terms["loss.total"] = terms["loss.lm"] + terms["loss.mtp"] + terms["loss.balance"]
        return logits, terms


# --- comparison --------------------------------------------------------------------------------

def rel_error(got, want):
    got, want = got.double().cpu(), want.double().cpu()
    diff = (got - want).norm().item()
    scale = want.norm().item()
    max_abs = (got - want).abs().max().item() if got.numel() else 0.0
    if scale == 0:
        return max_abs, 0.0 if diff == 0 else math.inf
    return max_abs, diff / scale


def compare(dump, meta, args):
    device = torch.device(args.device)
    dtype = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    spec = Spec(meta)
    weights = {}
    for name, tensor in dump.items():
        if not name.startswith("weight."):
            continue
        pname = name[len("weight."):]
        trainable = "grad." + pname in dump
        weights[pname] = tensor.to(device=device, dtype=dtype if trainable else acc)
        weights[pname].requires_grad_(trainable)
    oracle = Oracle(spec, weights, acc)
    inputs = dump["batch.inputs"].to(device)
    targets = dump["batch.targets"].to(device)
    logits, terms = oracle.step(inputs, targets)
    terms["loss.total"].backward()

    compute = meta.get("compute_dtype", "f32")
    if compute not in TOLERANCES:
        raise SystemExit(f"oracle: the dump's compute_dtype '{compute}' has no tolerances here")
    own = "f32" if dtype != torch.bfloat16 else "bf16"
    tol = {kind: max(TOLERANCES[compute][kind], TOLERANCES[own][kind] if dtype != torch.float64 else 0)
           for kind in TOLERANCES[compute]}

    rows = []  # (quantity, shape, max |oracle|, max abs diff, rel, tol)
    for key in ("count.lm",) + tuple(f"count.mtp.{k}" for k in range(spec.mtp_modules)):
        if int(float(meta[key])) != terms[key]:
            raise SystemExit(f"oracle: {key} is {meta[key]} in the dump, {terms[key]} in the batch")
    loss_keys = [k for k in terms if k.startswith("loss.") or k == "eval.lm_sum"]
    for key in sorted(loss_keys, key=lambda k: (k.count("["), k)):
        if key not in meta:
            raise SystemExit(f"oracle: the dump has no {key}")
        want = terms[key].detach().reshape(1)
        got = torch.tensor([float(meta[key])], dtype=torch.float64)
        max_abs, rel = rel_error(got, want)
        if want.abs().item() < 1e-12:  # a term switched off: both must be zero
            rel = 0.0 if max_abs < 1e-12 else math.inf
        rows.append((key, "", want.abs().max().item(), max_abs, rel, tol["loss"]))
    n_rows = dump["logits"].shape[0]
    want = logits.detach()[:n_rows]
    rows.append(("logits", list(dump["logits"].shape), want.abs().max().item(),
                 *rel_error(dump["logits"], want), tol["logits"]))
    all_got, all_want = [], []
    for name, param in weights.items():
        if not param.requires_grad:
            continue
        want = param.grad if param.grad is not None else torch.zeros_like(param)
        got = dump["grad." + name]
        all_got.append(got.double().flatten())
        all_want.append(want.double().cpu().flatten())
        rows.append(("grad." + name, list(got.shape), want.abs().max().item(),
                     *rel_error(got, want), tol["grad"]))
    want = torch.cat(all_want)
    rows.append(("grad (all)", [want.numel()], want.abs().max().item(),
                 *rel_error(torch.cat(all_got), want), tol["grads"]))

    print(f"oracle: {args.path} | switchyard compute {compute} on {meta.get('device', '?')} | "
          f"oracle {args.dtype} on {args.device} | error = ||switchyard - oracle|| / ||oracle||")
    width = max(len(r[0]) for r in rows)
    print(f"{'quantity':<{width}}  {'shape':<14} {'max|oracle|':>11} {'max abs diff':>12} "
          f"{'rel error':>10} {'tol':>7}  result")
    failed = 0
    for name, shape, scale, max_abs, rel, limit in rows:
        ok = rel <= limit
        failed += not ok
        shape_text = "x".join(map(str, shape)) if shape else "scalar"
        print(f"{name:<{width}}  {shape_text:<14} {scale:11.4e} {max_abs:12.3e} {rel:10.2e} "
              f"{limit:7.0e}  {'PASS' if ok else 'FAIL'}")
    for layer, margin in oracle.margins.items():
        note = "  <- near tie: a flipped choice would explain differences here" if margin < NEAR_TIE else ""
        dropped, slots = oracle.dropped[layer]
        print(f"routing {layer}: {dropped}/{slots} slots dropped, smallest top-k / group "
              f"margin {margin:.2e}{note}")
    print(f"oracle: {len(rows) - failed}/{len(rows)} PASS" + (f", {failed} FAIL" if failed else ""))
    return 1 if failed else 0


def run_switchyard(args, workdir):
    """Writes a dump with the given switchyard binary (after --train_steps steps if asked)."""
    overrides = [a for s in args.set for a in ("--set", s)]
    dump = os.path.join(workdir, "step.safetensors")
    command = [args.switchyard, "dump-step", "--config", args.config, *overrides, "--out", dump]
    if args.train_steps > 0:
        run_dir = os.path.join(workdir, "run")
        subprocess.run([args.switchyard, "train", "--config", args.config, *overrides,
                        "--set", f"train {{ steps: {args.train_steps} eval_interval: 0 }}",
                        "--set", "data { arithmetic { eval_examples: 8 } }",
                        "--run_dir", run_dir], check=True, stdout=subprocess.DEVNULL)
        command += ["--checkpoint", run_dir]
    subprocess.run(command, check=True)
    return dump


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="a switchyard dump-step file")
    parser.add_argument("--device", default="cpu", help="where the oracle runs (cpu, cuda)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32", "bfloat16"],
                        help="the oracle's dtype for weights and activations")
    parser.add_argument("--switchyard", help="run this switchyard binary's dump-step first")
    parser.add_argument("--config", help="with --switchyard: the experiment config")
    parser.add_argument("--set", action="append", default=[], help="with --switchyard: override")
    parser.add_argument("--train_steps", type=int, default=0,
                        help="with --switchyard: train this many steps, dump from the checkpoint")
    args = parser.parse_args()
    if (args.path is None) == (args.switchyard is None):
        parser.error("give a dump file, or --switchyard BIN --config CFG")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="switchyard_oracle_") as workdir:
        if args.switchyard:
            if not args.config:
                parser.error("--switchyard needs --config")
            args.path = run_switchyard(args, workdir)
        dump, meta = load_safetensors(args.path)
        return compare(dump, meta, args)


if __name__ == "__main__":
    sys.exit(main())
