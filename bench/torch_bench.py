#!/usr/bin/env python3
"""The PyTorch side of the training-step benchmark: switchyard's MoE transformer written the
way a PyTorch user would (bf16 autocast over fp32 master weights, fused AdamW, grouped expert
GEMMs through torch._grouped_mm, scaled_dot_product_attention, torch.compile), trained on
random tokens of the config's shape.

    python3 bench/torch_bench.py                                  # configs/bench_moe_1b.textproto
    python3 bench/torch_bench.py --mtp 1                          # the second figure, D = 1
    python3 bench/torch_bench.py --device cpu --tiny --steps 3    # smoke check without a GPU

Prints one JSON line (for bench/compare.py) and one line for people. FLOPs per token are
6 * active parameters + 12 * attention layers * d_model * seq, with active parameters counted
as switchyard's "model: ... active" line does (every non-expert parameter, embeddings and
head included, plus top_k / num_experts of the routed experts); attention layers are the
trunk's plus one per MTP module. MFU is against 990 TFLOP/s (H200 dense bf16).
"""
import argparse
import json
import math
import re
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_TFLOPS = 990.0

# Defaults of configs/switchyard.proto for the fields the model reads.
DEFAULTS = {
    "model": {"rope_theta": 10000.0, "norm_eps": 1e-5, "first_k_dense": 0, "tie_embeddings": False,
              "dense_ffn_hidden": 0},
    "moe": {"num_shared_experts": 0, "score_function": "SCORE_SOFTMAX", "normalize_topk": False,
            "route_scale": 1.0, "aux_loss_coef": 0.01, "z_loss_coef": 0.0, "seq_aux_loss_coef": 0.0},
    "mtp": {"num_modules": 0, "loss_weight": 0.3},
    "optimizer": {"lr": 3e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
                  "grad_clip": 1.0},
    "train": {"grad_accum": 1},
}
TINY = {"model": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                  "seq_len": 64},
        "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 96},
        "train": {"micro_batch": 2}}


def parse_textproto(text):
    """Nested dicts from Protobuf text format: `name { ... }` blocks and `key: value` fields
    (numbers, true/false, enum names, quoted strings); comments dropped. Enough for configs."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"#]+|#[^\n]*', text)
    stack = [{}]
    key = None
    for tok in tokens:
        if tok.startswith("#") or tok == ":":
            continue
        if tok == "{":
            stack[-1][key] = stack[-1].get(key, {})
            stack.append(stack[-1][key])
            key = None
        elif tok == "}":
            stack.pop()
        elif key is None:
            key = tok
        else:
            if tok.startswith('"'):
                value = tok[1:-1]
            elif tok in ("true", "false"):
                value = tok == "true"
            else:
                try:
                    value = int(tok)
                except ValueError:
                    try:
                        value = float(tok)
                    except ValueError:
                        value = tok  # an enum name
            stack[-1][key] = value
            key = None
    return stack[0]


def load_config(path, tiny, mtp):
    with open(path) as f:
        parsed = parse_textproto(f.read())
    config = {section: dict(DEFAULTS.get(section, {})) for section in
              set(DEFAULTS) | set(k for k, v in parsed.items() if isinstance(v, dict))}
    for section, fields in parsed.items():
        if isinstance(fields, dict):
            config[section].update(fields)
    if tiny:
        for section, fields in TINY.items():
            config[section].update(fields)
    if mtp is not None:
        config["mtp"]["num_modules"] = mtp
    config["name"] = parsed.get("name", path)
    return config


# --- the model (models/layers.cc, models/transformer.cc) ---------------------------------------

def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w


class Rotary(nn.Module):
    """Pairs (i, i + hd/2) rotated by position * theta^(-2i/hd), as kernels/cpu/rope.cc."""

    def __init__(self, head_dim, seq, theta):
        super().__init__()
        half = head_dim // 2
        inv_freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / head_dim)
        angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq
        self.register_buffer("cos", angle.cos().float()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angle.sin().float()[None, :, None, :], persistent=False)

    def forward(self, x):  # [B, T, H, hd]
        half = x.shape[-1] // 2
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        x0, x1 = x[..., :half], x[..., half:]
        return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)


def normal(*shape, std):
    return nn.Parameter(torch.randn(*shape) * std)


class Attention(nn.Module):
    def __init__(self, c, rotary, out_std):
        super().__init__()
        m = c["model"]
        d, self.h, self.kv = m["d_model"], m["n_heads"], m["n_kv_heads"]
        self.hd, self.eps, self.rotary = d // self.h, m["norm_eps"], rotary
        std = m.get("init_std", 0.02)
        self.norm = nn.Parameter(torch.ones(d))
        self.wq = normal(self.h * self.hd, d, std=std)
        self.wk = normal(self.kv * self.hd, d, std=std)
        self.wv = normal(self.kv * self.hd, d, std=std)
        self.wo = normal(d, self.h * self.hd, std=out_std)

    def forward(self, x):
        b, t, _ = x.shape
        n = rmsnorm(x, self.norm, self.eps)
        q = self.rotary(F.linear(n, self.wq).view(b, t, self.h, self.hd)).transpose(1, 2)
        k = self.rotary(F.linear(n, self.wk).view(b, t, self.kv, self.hd)).transpose(1, 2)
        v = F.linear(n, self.wv).view(b, t, self.kv, self.hd).transpose(1, 2)
        if self.kv != self.h:
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.linear(o.transpose(1, 2).reshape(b, t, self.h * self.hd), self.wo)


def swiglu(h):
    f = h.shape[-1] // 2
    return F.silu(h[..., :f]) * h[..., f:]


class GroupedExperts:
    """y_e = W2_e swiglu(W13_e x) over rows sorted by expert: torch._grouped_mm when this
    PyTorch has it, else one GEMM pair per expert (and a warning)."""

    checked = None

    @classmethod
    def available(cls, device):
        if cls.checked is None:
            cls.checked = hasattr(torch, "_grouped_mm")
            if cls.checked:
                try:
                    x = torch.randn(32, 16, dtype=torch.bfloat16, device=device)
                    w = torch.randn(2, 16, 16, dtype=torch.bfloat16, device=device)
                    torch._grouped_mm(x, w.transpose(-2, -1),
                                      offs=torch.tensor([16, 32], dtype=torch.int32, device=device))
                except (RuntimeError, NotImplementedError) as error:
                    print(f"warning: torch._grouped_mm fails here ({str(error).splitlines()[0]}); "
                          "expert GEMMs run one expert at a time", file=sys.stderr)
                    cls.checked = False
            else:
                print(f"warning: torch {torch.__version__} has no torch._grouped_mm; expert GEMMs "
                      "run one expert at a time", file=sys.stderr)
        return cls.checked

    @staticmethod
    def run(xs, w13, w2, counts, grouped):
        dtype = torch.bfloat16
        xs = xs.to(dtype)
        if grouped:
            offs = counts.cumsum(0).to(torch.int32)
            h = torch._grouped_mm(xs, w13.to(dtype).transpose(-2, -1), offs=offs)
            return torch._grouped_mm(swiglu(h), w2.to(dtype).transpose(-2, -1), offs=offs)
        out, start = [], 0
        for e, count in enumerate(counts.tolist()):
            rows = xs[start:start + count]
            out.append(F.linear(swiglu(F.linear(rows, w13[e].to(dtype))), w2[e].to(dtype)))
            start += count
        return torch.cat(out)


class Moe(nn.Module):
    def __init__(self, c, out_std, grouped):
        super().__init__()
        m, e = c["model"], c["moe"]
        d, f, self.n_exp, self.k = m["d_model"], e["expert_hidden"], e["num_experts"], e["top_k"]
        std = m.get("init_std", 0.02)
        self.c, self.eps, self.grouped = e, m["norm_eps"], grouped
        self.norm = nn.Parameter(torch.ones(d))
        self.router = normal(self.n_exp, d, std=std)
        self.w13 = normal(self.n_exp, 2 * f, d, std=std)
        self.w2 = normal(self.n_exp, d, f, std=out_std)
        shared = e["num_shared_experts"] * f
        self.shared = (nn.ParameterList([normal(2 * shared, d, std=std), normal(d, shared, std=out_std)])
                       if shared else None)

    def forward(self, x):
        b, t, d = x.shape
        n = rmsnorm(x, self.norm, self.eps).view(b * t, d)
        logits = F.linear(n, self.router).float()
        sigmoid = self.c["score_function"] == "SCORE_SIGMOID"
        scores = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, -1)
        gate, idx = scores.topk(self.k, dim=-1)
        if self.c["normalize_topk"]:
            gate = gate / gate.sum(-1, keepdim=True)
        gate = gate * self.c["route_scale"]
        flat = idx.view(-1)
        order = flat.argsort(stable=True)
        counts = torch.zeros(self.n_exp, dtype=torch.int64, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat))
        ys = GroupedExperts.run(n[order // self.k], self.w13, self.w2, counts, self.grouped)
        y = torch.empty_like(ys).index_copy_(0, order, ys).view(b * t, self.k, d)
        out = (y * gate.to(y.dtype)[..., None]).sum(1)
        if self.shared is not None:
            out = out + F.linear(swiglu(F.linear(n, self.shared[0])), self.shared[1])
        # Balancing terms as models/layers.cc: f counts routed slots, P the normalised scores.
        p = scores / scores.sum(-1, keepdim=True)
        f_e = counts.float() * self.n_exp / (self.k * b * t)
        balance = self.c["aux_loss_coef"] * (f_e * p.mean(0)).sum()
        if self.c["seq_aux_loss_coef"]:
            seq_counts = F.one_hot(idx.view(b, t * self.k), self.n_exp).sum(1).float()
            f_seq = seq_counts * self.n_exp / (self.k * t)
            balance = balance + self.c["seq_aux_loss_coef"] * (f_seq * p.view(b, t, -1).mean(1)).sum(-1).mean()
        if self.c["z_loss_coef"]:
            balance = balance + self.c["z_loss_coef"] * torch.logsumexp(logits, -1).pow(2).mean()
        return out.view(b, t, d).to(x.dtype), balance


class Block(nn.Module):
    def __init__(self, c, rotary, moe, grouped):
        super().__init__()
        m = c["model"]
        out_std = m.get("init_std", 0.02) / math.sqrt(2 * m["n_layers"])
        self.attn = Attention(c, rotary, out_std)
        self.moe = Moe(c, out_std, grouped) if moe else None
        if not moe:
            d, f = m["d_model"], m["dense_ffn_hidden"]
            self.norm = nn.Parameter(torch.ones(d))
            self.w13 = normal(2 * f, d, std=m.get("init_std", 0.02))
            self.w2 = normal(d, f, std=out_std)
        self.eps = m["norm_eps"]

    def forward(self, x):
        h = x + self.attn(x)
        if self.moe is None:
            n = rmsnorm(h, self.norm, self.eps)
            return h + F.linear(swiglu(F.linear(n, self.w13)), self.w2), 0.0
        y, balance = self.moe(h)
        return h + y, balance


class Transformer(nn.Module):
    def __init__(self, c, grouped):
        super().__init__()
        m = c["model"]
        d, v, std = m["d_model"], m["vocab_size"], m.get("init_std", 0.02)
        self.eps, self.tied = m["norm_eps"], m["tie_embeddings"]
        rotary = Rotary(d // m["n_heads"], m["seq_len"], m["rope_theta"])
        self.embed = normal(v, d, std=std)
        self.blocks = nn.ModuleList(Block(c, rotary, layer >= m["first_k_dense"], grouped)
                                    for layer in range(m["n_layers"]))
        self.final_norm = nn.Parameter(torch.ones(d))
        self.lm_head = None if self.tied else normal(v, d, std=std)
        self.mtp_weight = c["mtp"]["loss_weight"]
        moe = m["first_k_dense"] < m["n_layers"]
        self.mtp = nn.ModuleList()
        for _ in range(c["mtp"]["num_modules"]):
            module = nn.Module()
            module.hnorm, module.enorm, module.out_norm = (nn.Parameter(torch.ones(d)) for _ in range(3))
            module.proj = normal(d, 2 * d, std=std)
            module.block = Block(c, rotary, moe, grouped)
            self.mtp.append(module)

    def head_loss(self, h, norm, targets):
        logits = F.linear(rmsnorm(h, norm, self.eps), self.embed if self.tied else self.lm_head)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    def forward(self, inputs, targets):
        h = F.embedding(inputs, self.embed)
        balance = 0.0
        for block in self.blocks:
            h, extra = block(h)
            balance = balance + extra
        loss = self.head_loss(h, self.final_norm, targets)
        prev, t = h, inputs.shape[1]
        for k, module in enumerate(self.mtp, start=1):
            ids = F.pad(inputs[:, k:], (0, k), value=0)
            tgt = F.pad(targets[:, k:], (0, k), value=-1)
            cat = torch.cat([rmsnorm(prev, module.hnorm, self.eps),
                             rmsnorm(F.embedding(ids, self.embed), module.enorm, self.eps)], -1)
            prev, extra = module.block(F.linear(cat, module.proj))
            balance = balance + extra
            loss = loss + self.mtp_weight / len(self.mtp) * self.head_loss(prev, module.out_norm, tgt)
        return loss + balance


def count_params(model, c):
    """(total, active) as trainer/train.cc's model line counts them."""
    total = active = 0
    e = c["moe"]
    for name, p in model.named_parameters():
        total += p.numel()
        routed = name.endswith("moe.w13") or name.endswith("moe.w2")
        active += p.numel() * e["top_k"] / e["num_experts"] if routed else p.numel()
    return total, active


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench_moe_1b.textproto")
    parser.add_argument("--mtp", type=int, default=None, help="MTP modules (default: the config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model of the same structure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    c = load_config(args.config, args.tiny, args.mtp)
    m, tc, opt = c["model"], c["train"], c["optimizer"]
    unsupported = [f"moe.{key}" for key, off in (("n_groups", 1), ("capacity_factor", 0),
                                                 ("bias_update_rate", 0))
                   if c["moe"].get(key, off) != off]
    if unsupported:
        print(f"warning: {', '.join(unsupported)} not modelled here: the PyTorch model routes "
              "plain dropless top-k", file=sys.stderr)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # f32 GEMMs stay f32, as switchyard's
    grouped = GroupedExperts.available(device)
    model = Transformer(c, grouped).to(device)
    total, active = count_params(model, c)
    layers = m["n_layers"] + c["mtp"]["num_modules"]
    batch, seq = tc["micro_batch"] * tc["grad_accum"], m["seq_len"]
    flops_per_token = 6 * active + 12 * layers * m["d_model"] * seq

    optimizer = torch.optim.AdamW(model.parameters(), lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]),
                                  eps=opt["eps"], weight_decay=opt["weight_decay"],
                                  fused=device.type == "cuda")
    step_fn = model if args.no_compile else torch.compile(model)
    tokens = torch.randint(0, m["vocab_size"], (batch, seq + 1), device=device)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_fn(inputs, targets)
        loss.backward()
        if opt["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip"], foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        loss = step()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(args.steps):
            loss = step()
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1e3
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        seconds = time.perf_counter() - t0
        peak_gib = None
    tokens_per_s = args.steps * batch * seq / seconds
    tflops = tokens_per_s * flops_per_token / 1e12
    result = {
        "framework": "pytorch", "config": c["name"], "tiny": args.tiny, "mtp": c["mtp"]["num_modules"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "compile": not args.no_compile, "grouped_mm": grouped,
        "batch": batch, "seq": seq, "steps": args.steps, "step_ms": 1e3 * seconds / args.steps,
        "tokens_per_s": tokens_per_s, "tflops": tflops, "mfu": tflops / PEAK_TFLOPS,
        "peak_mem_gib": peak_gib, "total_params": total, "active_params": active,
        "flops_per_token": flops_per_token, "final_loss": loss.item(),
    }
    print(json.dumps(result))
    mem = f"{peak_gib:.1f} GiB" if peak_gib is not None else "n/a on cpu"
    print(f"pytorch {c['name']}{' (tiny)' if args.tiny else ''} MTP {result['mtp']} | "
          f"{tokens_per_s / 1e3:.1f}k tok/s | {tflops:.1f} TFLOP/s | MFU {100 * result['mfu']:.1f}% | "
          f"peak {mem} | {result['step_ms']:.1f} ms/step | {active / 1e6:.2f}M active of "
          f"{total / 1e6:.2f}M | loss {result['final_loss']:.3f}")


if __name__ == "__main__":
    main()
