#!/usr/bin/env python3
"""PyTorch reference of the MergeTok/MergeVQ encoder, written from shared/spec/ENCODER.md.

A functional re-implementation (no MergeVQ or timm import): it takes a state dict with the spec's
tensor names (`encoder.*`, `quantize.embedding.weight`) and a config dict with the spec's
hyperparameter names, and returns latents, logvar, indices, groups and sizes per image. It runs in
float32 (what the benchmark compares against) or float64 (what the golden fixtures use, so the
fixtures hold the exact maths and the Swift float32 error is what the tolerance measures).

Section numbers (§) refer to ENCODER.md.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_config import PRESETS, config_json, derived, merge_schedule, sched, tensor_shapes  # noqa: E402,F401

Trace = Optional[Callable[[str, torch.Tensor], None]]


def random_state_dict(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """weights N(0,1)/sqrt(fan_in); biases, norm biases, cls N(0,0.2^2); norm weights, gammas 1+N(0,0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape, role, fan_in in tensor_shapes(cfg):
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        if role == "w":
            t = t / math.sqrt(fan_in)
        elif role == "b":
            t = t * 0.2
        elif role == "g":
            t = 1 + 0.3 * t
        sd[name] = t.to(torch.float32)
    return sd


# ----------------------------------------------------------------------------------------------
# Forward (§2)

def _gn(x, groups, w, b):
    return F.group_norm(x, groups, w, b, eps=1e-6)


class Reference:
    def __init__(self, cfg: dict, state: dict[str, torch.Tensor], dtype=torch.float32):
        self.cfg, self.d, self.dtype = cfg, derived(cfg), dtype
        self.w = {k: v.to(dtype) for k, v in state.items() if k.startswith("encoder.") or k.startswith("quantize.")}
        self.r = merge_schedule(self.d["N"], cfg.get("merge_num", 0), cfg["num_att_blocks"], cfg.get("merge_ratio"))
        T, total = self.d["N"] + 1, 0
        for rl in self.r:
            e = min(rl, (T - 1) // 2)
            if e > 0:
                T -= e
                total += e
        K = self.d["N"] - total
        if math.isqrt(K) ** 2 != K:
            raise ValueError(f"K = {K} is not a perfect square")

    def p(self, name):
        return self.w["encoder." + name]

    def resblock(self, x, pre, cin, cout):
        h = F.silu(_gn(x, 32, self.p(pre + "norm1.weight"), self.p(pre + "norm1.bias")))
        h = F.conv2d(h, self.p(pre + "conv1.weight"), None, 1, 1)
        h = F.silu(_gn(h, 32, self.p(pre + "norm2.weight"), self.p(pre + "norm2.bias")))
        h = F.conv2d(h, self.p(pre + "conv2.weight"), None, 1, 1)
        if cin != cout:
            x = F.conv2d(x, self.p(pre + "nin_shortcut.weight"), None)
        return x + h

    def stem(self, x, trace: Trace):
        d, cfg = self.d, self.cfg
        if d["iso"]:
            x = F.conv2d(x, self.p("conv_in.0.weight"), self.p("conv_in.0.bias"), stride=d["p"])
            trace and trace("conv_in", x)
            x = _gn(x, d["C"], self.p("conv_in.1.weight"), self.p("conv_in.1.bias"))
            trace and trace("stem", x)
            return x
        x = F.conv2d(x, self.p("conv_in.weight"), None, 1, 1)
        trace and trace("conv_in", x)
        ch, cm = cfg["ch"], cfg["ch_mult"]
        width = ch
        for i in range(d["levels"]):
            cout = ch * cm[i]
            for j in range(d["nrb"][i]):
                x = self.resblock(x, f"down.{i}.block.{j}.", width, cout)
                width = cout
            if i < d["levels"] - 1:
                x = F.conv2d(x, self.p(f"down.{i}.downsample.weight"), self.p(f"down.{i}.downsample.bias"), 2, 1)
            trace and trace(f"down.{i}", x)
        return x

    def encode_one(self, features: torch.Tensor, trace: Trace = None) -> dict:
        """Everything after the stem, for one image's C × er × er features."""
        d = self.d
        C, H, D, N = d["C"], d["H"], d["D"], d["N"]
        x = features
        x = x.reshape(C, N).t()                                       # N × C, raster order (§2.3)
        x = torch.cat([self.p("attn.cls_token").reshape(1, C), x], 0)
        trace and trace("tokens", x)
        size = torch.ones(N + 1, dtype=self.dtype)
        pos = torch.arange(N + 1)
        for l in range(self.cfg["num_att_blocks"]):
            pre = f"attn.blocks.{l}."
            T = x.shape[0]
            u = F.layer_norm(x, (C,), self.p(pre + "norm1.weight"), self.p(pre + "norm1.bias"), eps=1e-5)
            qkv = F.linear(u, self.p(pre + "attn.qkv.weight"), self.p(pre + "attn.qkv.bias"))
            q, k, v = qkv.reshape(T, 3, H, D).permute(1, 2, 0, 3)      # each H × T × D
            logits = (q @ k.transpose(1, 2)) * D ** -0.5 + size.log()[None, None, :]
            a = logits.softmax(-1)
            o = (a @ v).permute(1, 0, 2).reshape(T, C)
            y = F.linear(o, self.p(pre + "attn.proj.weight"), self.p(pre + "attn.proj.bias"))
            x = x + y * self.p(pre + "ls1.gamma")
            r = min(self.r[l], (T - 1) // 2)
            if r > 0:
                metric = k.mean(0)                                    # T × D: mean of keys over heads
                x, size, mapping = self.merge(x, size, metric, r)
                pos = mapping[pos]
            z = F.layer_norm(x, (C,), self.p(pre + "norm2.weight"), self.p(pre + "norm2.bias"), eps=1e-5)
            z = F.gelu(F.linear(z, self.p(pre + "mlp.fc1.weight"), self.p(pre + "mlp.fc1.bias")))
            z = F.linear(z, self.p(pre + "mlp.fc2.weight"), self.p(pre + "mlp.fc2.bias"))
            x = x + z * self.p(pre + "ls2.gamma")
            trace and trace(f"blocks.{l}", x)
        K = x.shape[0] - 1
        m = math.isqrt(K)
        h = x[1:].t().reshape(1, C, m, m)                             # token i at (i div m, i mod m)
        h = F.silu(_gn(h, 32, self.p("norm_out.weight"), self.p("norm_out.bias")))
        h = F.conv2d(h, self.p("conv_out.weight"), self.p("conv_out.bias"))
        head = h.reshape(d["z_out"], K).t()                           # K × z_out
        trace and trace("head", head)
        z = d["z"]
        latents = head[:, :z]
        logvar = head[:, z:].clamp(-30.0, 20.0) if self.cfg.get("vae") else None
        if self.cfg.get("quantizer") == "vq":
            e = self.w["quantize.embedding.weight"]
            dist = (latents ** 2).sum(1, keepdim=True) + (e ** 2).sum(1)[None, :] - 2 * latents @ e.t()
            indices = dist.argmin(1)                                  # first minimum
        else:
            bits = (latents > 0).long()
            indices = (bits << torch.arange(z)).sum(1)                # channel 0 = LSB (§4.1)
        groups = pos[1:] - 1
        return dict(latents=latents, logvar=logvar, indices=indices, groups=groups, sizes=size[1:])

    @staticmethod
    def merge(x, size, metric, r):
        """Bipartite soft matching with the §3.5 tie rules and the size-weighted merge (§3.2-3.3)."""
        T = x.shape[0]
        n = metric / metric.norm(dim=-1, keepdim=True)
        if torch.isnan(n).any():
            raise ValueError("zero-norm metric")
        na = (T + 1) // 2
        A, B = n[0::2], n[1::2]
        s = A @ B.t()
        s[0, :] = -math.inf
        val, best = s.max(dim=-1)                                     # documented: first maximal index
        first = (s == val[:, None]).int().argmax(dim=-1)              # make the lowest-b rule explicit
        best = torch.where(torch.arange(na) == 0, best, first)
        order = torch.argsort(-val, stable=True)                      # (−val, a ascending)
        src, unm = order[:r], order[r:].sort().values
        n_unm = na - r
        mapping = torch.empty(T, dtype=torch.long)
        mapping[2 * unm] = torch.arange(n_unm)
        mapping[1::2] = n_unm + torch.arange(T // 2)
        mapping[2 * src] = n_unm + best[src]
        xs = x * size[:, None]
        new_x = torch.cat([xs[2 * unm], xs[1::2]], 0)
        new_s = torch.cat([size[2 * unm], size[1::2]], 0)
        for a in src.tolist():                                        # src order: descending score
            new_x[n_unm + best[a]] += xs[2 * a]
            new_s[n_unm + best[a]] += size[2 * a]
        return new_x / new_s[:, None], new_s, mapping

    def encode(self, images: torch.Tensor, trace: Trace = None) -> list[dict]:
        """B × 3 × R × R → one dict per image. The stem runs batched (PyTorch's natural mode);
        the transformer runs per image because merging is per image. `trace` sees image 0."""
        with torch.no_grad():
            first = (lambda name, t: trace(name, t[0])) if trace else None
            features = self.stem(images.to(self.dtype), first)
            return [self.encode_one(features[b], trace if b == 0 else None) for b in range(images.shape[0])]
