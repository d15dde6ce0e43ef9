#!/usr/bin/env python3
"""The encoder's configuration arithmetic, without PyTorch: presets for the tiny test configs,
derived sizes, the merge schedule and every tensor's name and shape (ENCODER.md §1, §3, §5.2).
encoder_reference.py (the PyTorch reference) and convert_checkpoint.py build on it; the second
must run where only the checkpoint's own dependencies are installed."""
from __future__ import annotations

import json
import math
from typing import Optional

# ----------------------------------------------------------------------------------------------
# Config (§1)

PRESETS = {
    "tiny": dict(resolution=64, ch=32, ch_mult=[1, 1, 2], num_res_blocks=[1, 1, 2], num_att_blocks=2,
                 num_heads=2, z_channels=8, merge_num=87, isotropic=0),
}
PRESETS["tiny-iso"] = dict(PRESETS["tiny"], isotropic=64, num_res_blocks=[1])
PRESETS["tiny-nomerge"] = dict(PRESETS["tiny"], merge_num=0)
PRESETS["tiny-vae-vq"] = dict(PRESETS["tiny"], vae=True, quantizer="vq", codebook_size=64)
PRESETS["mergevq-gr-d64-k144"] = dict(resolution=256, ch=64, ch_mult=[1, 1, 2, 4, 8], num_res_blocks=[4],
                                      num_att_blocks=12, num_heads=8, z_channels=18, merge_num=112,
                                      isotropic=0)


def derived(cfg: dict) -> dict:
    levels = len(cfg["ch_mult"])
    er = cfg["resolution"] // 2 ** (levels - 1)
    iso = cfg.get("isotropic", 0)
    iso = int(iso) if not isinstance(iso, bool) else (1 if iso else 0)
    c = iso if iso > 1 else cfg["ch"] * cfg["ch_mult"][-1]
    heads = cfg["num_heads"]
    if cfg.get("head_dim"):
        heads = max(c // cfg["head_dim"], heads)
    nrb = cfg["num_res_blocks"]
    nrb = [nrb] * levels if isinstance(nrb, int) else (nrb * levels if len(nrb) == 1 else nrb)
    z = cfg["z_channels"]
    return dict(levels=levels, er=er, N=er * er, C=c, H=heads, D=c // heads, iso=iso,
                p=cfg["resolution"] // er, nrb=nrb, z=z, z_out=2 * z if cfg.get("vae") else z)


# ----------------------------------------------------------------------------------------------
# Schedule (§3.1)

def sched(L: int, r: int) -> list[int]:
    lo = int(r * 1.5)
    hi = 2 * r - lo
    delta = (hi - lo) / (L - 1)
    return [int(lo + delta * l) for l in range(L)]


def merge_schedule(N: int, M: int, L: int, merge_ratio: Optional[int] = None) -> list[int]:
    if merge_ratio is None:
        best, gap = 0, math.inf
        for i in range(M):
            g = abs(sum(sched(L, i)) - M)
            if g < gap:
                best, gap = i, g
            elif g > gap:
                break
    else:
        best = merge_ratio
    r = sched(L, best)
    r[0] += M - sum(r)
    return r


# ----------------------------------------------------------------------------------------------
# Random test weights (§7)

def tensor_shapes(cfg: dict) -> list[tuple[str, list[int], str, int]]:
    """(name, shape, role, fan_in) for every encoder tensor (§5.2), plus the codebook."""
    d = derived(cfg)
    out = []

    def conv(n, o, i, k, bias):
        out.append((n + ".weight", [o, i, k, k], "w", i * k * k))
        if bias:
            out.append((n + ".bias", [o], "b", 1))

    def norm(n, c):
        out.append((n + ".weight", [c], "g", 1))
        out.append((n + ".bias", [c], "b", 1))

    def linear(n, o, i):
        out.append((n + ".weight", [o, i], "w", i))
        out.append((n + ".bias", [o], "b", 1))

    C, ch, cm = d["C"], cfg["ch"], cfg["ch_mult"]
    if d["iso"]:
        conv("encoder.conv_in.0", C, 3, d["p"], True)
        norm("encoder.conv_in.1", C)
    else:
        conv("encoder.conv_in", ch, 3, 3, False)
        for i in range(d["levels"]):
            cout = ch * cm[i]
            for j in range(d["nrb"][i]):
                cin = (ch if i == 0 else ch * cm[i - 1]) if j == 0 else cout
                p = f"encoder.down.{i}.block.{j}"
                norm(p + ".norm1", cin)
                conv(p + ".conv1", cout, cin, 3, False)
                norm(p + ".norm2", cout)
                conv(p + ".conv2", cout, cout, 3, False)
                if cin != cout:
                    conv(p + ".nin_shortcut", cout, cin, 1, False)
            if i < d["levels"] - 1:
                conv(f"encoder.down.{i}.downsample", cout, cout, 3, True)
    out.append(("encoder.attn.cls_token", [1, 1, C], "b", 1))
    for l in range(cfg["num_att_blocks"]):
        p = f"encoder.attn.blocks.{l}"
        norm(p + ".norm1", C)
        linear(p + ".attn.qkv", 3 * C, C)
        linear(p + ".attn.proj", C, C)
        out.append((p + ".ls1.gamma", [C], "g", 1))
        norm(p + ".norm2", C)
        linear(p + ".mlp.fc1", 4 * C, C)
        linear(p + ".mlp.fc2", C, 4 * C)
        out.append((p + ".ls2.gamma", [C], "g", 1))
    norm("encoder.norm_out", C)
    conv("encoder.conv_out", d["z_out"], C, 1, True)
    if cfg.get("quantizer") == "vq":
        out.append(("quantize.embedding.weight", [cfg["codebook_size"], d["z"]], "e", 1))
    return out


def config_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))
