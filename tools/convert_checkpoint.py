#!/usr/bin/env python3
"""Converts a MergeVQ/MergeTok PyTorch checkpoint into the project's encoder .safetensors.

    python tools/convert_checkpoint.py CKPT --preset mergevq-gr-d64-k144 --out model.safetensors
    python tools/convert_checkpoint.py CKPT --config config.json --out model.safetensors --no-ema

Reads a Lightning `.ckpt` (top-level `state_dict`) or a bare state dict, keeps the encoder tensors
(`encoder.*`, minus the optional `encoder.dist_head.*`) and, when present, the codebook
`quantize.embedding.weight`, and writes them as float32 under the same names, with the config JSON
under the metadata key `mtok.config` (spec ENCODER.md §5).

EMA rule (§5.1, A3): by default each tensor is taken from its EMA copy
`model_ema.<dotted name with every dot removed>` when that buffer exists, else from the plain
tensor; `--no-ema` takes the plain tensors (what the stage-2 AR configs load). The choice is
recorded in the metadata (`mtok.weights = ema | raw`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_reference import PRESETS, config_json, tensor_shapes  # noqa: E402


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: no state dict found")
    return obj


def convert(sd: dict[str, torch.Tensor], cfg: dict, use_ema: bool) -> tuple[dict[str, torch.Tensor], dict]:
    # Which head the checkpoint has is read from its tensors (spec §4.3), not from double_z.
    conv_out = sd.get("encoder.conv_out.weight")
    if conv_out is not None:
        cfg = dict(cfg, vae=conv_out.shape[0] == 2 * cfg["z_channels"])
    codebook = sd.get("quantize.embedding.weight")
    if codebook is not None:
        cfg = dict(cfg, quantizer="vq", codebook_size=int(codebook.shape[0]))
    out, problems, from_ema = {}, [], 0
    for name, shape, _, _ in tensor_shapes(cfg):
        ema_name = "model_ema." + name.replace(".", "")
        if use_ema and ema_name in sd:
            t, from_ema = sd[ema_name], from_ema + 1
        elif name in sd:
            t = sd[name]
        else:
            problems.append(f"missing {name}")
            continue
        if list(t.shape) != shape:
            problems.append(f"{name} has shape {list(t.shape)}, expected {shape}")
            continue
        out[name] = t.detach().to(torch.float32).contiguous()
    if problems:
        raise SystemExit("checkpoint does not match the config:\n  " + "\n  ".join(problems))
    return out, dict(cfg=cfg, from_ema=from_ema)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="one of the presets in encoder_reference.PRESETS")
    g.add_argument("--config", help="JSON file with the spec's hyperparameter names")
    ap.add_argument("--no-ema", action="store_true", help="use the plain encoder.* tensors, not model_ema.*")
    args = ap.parse_args()
    if args.preset:
        if args.preset not in PRESETS:
            raise SystemExit(f"unknown preset {args.preset}; use --config (mtok model presets lists more)")
        cfg = PRESETS[args.preset]
    else:
        with open(args.config) as f:
            cfg = json.load(f)
    tensors, info = convert(load_state_dict(args.checkpoint), cfg, not args.no_ema)
    meta = {"mtok.config": config_json(info["cfg"]), "mtok.weights": "raw" if args.no_ema else "ema",
            "mtok.source": os.path.basename(args.checkpoint)}
    save_file(tensors, args.out, meta)
    print(f"wrote {args.out}: {len(tensors)} tensors ({info['from_ema']} from EMA), "
          f"{sum(t.numel() for t in tensors.values())} parameters")


if __name__ == "__main__":
    main()
