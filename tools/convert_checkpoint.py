#!/usr/bin/env python3
"""Converts a MergeVQ/MergeTok PyTorch checkpoint into the encoder .safetensors that mtok reads.

    python tools/convert_checkpoint.py CKPT --preset mergevq-gr-d32-k144 --out model.safetensors
    python tools/convert_checkpoint.py CKPT --config config.json --out model.safetensors --no-ema
    mtok model info model.safetensors          # check what came out

Layouts read (found by looking, no option needed):
  - a Lightning checkpoint: {"state_dict": {...}, "epoch": ..., ...}
  - a bare state dict: {"encoder.conv_in.weight": tensor, ...}
  - a state dict under "model" / "module" / "ema" / "model_state_dict", or with every key behind a
    "module." (DistributedDataParallel) or "model." prefix
and in each, the EMA copies the MergeVQ training code keeps beside the weights: for a tensor
`encoder.a.b`, the buffer `model_ema.encoderab` (the dotted name with every dot removed). By default
each tensor is taken from its EMA copy when there is one (what the reference evaluation and
reconstruction use), else the plain tensor; `--no-ema` takes the plain tensors (what the stage-2
AR configs load). The file records which (`mtok.weights = ema | raw`) and the checkpoint's name.

Kept: the encoder tensors (`encoder.*`, minus the optional `encoder.dist_head.*`) and, when present,
the codebook `quantize.embedding.weight`, as float32 under the same names; the configuration goes
under the metadata key `mtok.config`. Whether the head is a VAE head (2z outputs) and whether there is
a codebook are read from the tensors' shapes; everything else comes from --preset (any name that
`mtok model presets` lists; mtok is looked up as --mtok, $MTOK, on PATH, then in .build/) or --config.
Every tensor's shape is checked against the configuration before anything is written.

Needs PyTorch only to unpickle the checkpoint (`torch.load`): the project's .venv has it after
tools/test.sh, or `pip install -r tools/requirements-torch.txt`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from encoder_config import config_json, tensor_shapes  # noqa: E402

STATE_KEYS = ("state_dict", "model", "module", "ema", "model_state_dict")
PREFIXES = ("module.", "model.", "_orig_mod.")


def find_mtok(explicit: str | None) -> str:
    for candidate in (explicit, os.environ.get("MTOK"), shutil.which("mtok"),
                      os.path.join(HERE, "..", ".build", "release", "mtok"),
                      os.path.join(HERE, "..", ".build", "debug", "mtok")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("convert_checkpoint: --preset needs mtok (for its preset list): pass --mtok PATH, set MTOK, "
                     "put it on PATH, or build it (swift build); or give --config FILE instead")


def preset_config(name: str, mtok: str) -> dict:
    out = subprocess.run([mtok, "model", "presets", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"convert_checkpoint: {mtok} model presets --json failed: {out.stderr.strip()}")
    presets = json.loads(out.stdout)
    if name not in presets:
        close = [p for p in sorted(presets) if name.split("-")[0] in p][:8]
        raise SystemExit(f"convert_checkpoint: unknown preset {name!r}; `mtok model presets` lists "
                         f"{len(presets)}{' (e.g. ' + ', '.join(close) + ')' if close else ''}")
    return presets[name]["config"]


def load_checkpoint(path: str):
    try:
        import torch
    except ImportError:
        raise SystemExit("convert_checkpoint: reading a PyTorch checkpoint needs torch: run it with the project's "
                         ".venv/bin/python (tools/test.sh installs torch there) or pip install -r "
                         "tools/requirements-torch.txt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a torch.load failure names neither the file nor what it is
        raise SystemExit(f"convert_checkpoint: {path} is not a PyTorch checkpoint torch.load can read: {e}")


def state_dict(obj, path: str) -> tuple[dict, str]:
    """The tensors of a checkpoint, with how they were found."""
    layout = "bare state dict"
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict) and not any(k.startswith("encoder.") for k in obj):
                obj, layout = obj[key], f'"{key}" of the checkpoint' + (" (Lightning)" if key == "state_dict" else "")
                break
    if not isinstance(obj, dict) or not obj:
        raise SystemExit(f"convert_checkpoint: {path}: no state dict found (looked at the top level and under "
                         f"{', '.join(STATE_KEYS)})")
    for prefix in PREFIXES:
        if not any(k.startswith("encoder.") for k in obj) and any(k.startswith(prefix + "encoder.") for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
            layout += f", keys behind {prefix!r}"
    if not any(k.startswith("encoder.") for k in obj):
        sample = ", ".join(sorted(obj)[:5])
        raise SystemExit(f"convert_checkpoint: {path}: no encoder.* tensors (keys begin: {sample})")
    return obj, layout


def convert(sd: dict, cfg: dict, use_ema: bool) -> tuple[dict, dict]:
    """{name: float32 numpy array} for the encoder (and codebook), and the configuration used."""
    conv_out = sd.get("encoder.conv_out.weight")
    if conv_out is not None:  # the head's kind, from its rows (2z: VAE mean + logvar)
        cfg = dict(cfg, vae=int(conv_out.shape[0]) == 2 * cfg["z_channels"])
    codebook = sd.get("quantize.embedding.weight")
    if codebook is not None:
        cfg = dict(cfg, quantizer="vq", codebook_size=int(codebook.shape[0]))
    else:
        cfg = {k: v for k, v in cfg.items() if k != "codebook_size"}
        cfg["quantizer"] = "lfq"
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
            problems.append(f"{name} has shape {list(t.shape)}, the configuration says {shape}")
            continue
        out[name] = t.detach().float().contiguous().numpy()
    if problems:
        more = f"\n  … {len(problems) - 12} more" if len(problems) > 12 else ""
        raise SystemExit("convert_checkpoint: the checkpoint does not match the configuration (another preset?):\n  "
                         + "\n  ".join(problems[:12]) + more)
    return out, dict(cfg=cfg, from_ema=from_ema)


def write_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    """The safetensors layout (8-byte little-endian header length, JSON header, data), written here
    so that converting needs no package beyond torch."""
    header, offset = {"__metadata__": metadata}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data aligned to 8 bytes, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for a in tensors.values():
            f.write(a.astype("<f4", copy=False).tobytes())
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True, help="the .safetensors file to write")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a name from `mtok model presets`")
    g.add_argument("--config", help="a JSON file with the configuration (the spec's hyperparameter names)")
    ap.add_argument("--no-ema", action="store_true", help="take the plain encoder.* tensors, not their EMA copies")
    ap.add_argument("--mtok", help="the mtok binary (for --preset)")
    args = ap.parse_args()
    if args.preset:
        cfg = preset_config(args.preset, find_mtok(args.mtok))
    else:
        with open(args.config) as f:
            cfg = json.load(f)
    sd, layout = state_dict(load_checkpoint(args.checkpoint), args.checkpoint)
    tensors, info = convert(sd, cfg, not args.no_ema)
    use = "ema" if info["from_ema"] > 0 else "raw"
    meta = {"mtok.config": config_json(info["cfg"]), "mtok.weights": use,
            "mtok.source": os.path.basename(args.checkpoint)}
    if args.preset:
        meta["mtok.preset"] = args.preset
    write_safetensors(tensors, args.out, meta)
    ema = f"{info['from_ema']} from EMA copies" if not args.no_ema else "plain weights (--no-ema)"
    if not args.no_ema and info["from_ema"] == 0:
        ema = "plain weights (the checkpoint has no EMA copies)"
    print(f"wrote {args.out}: {len(tensors)} tensors, {sum(a.size for a in tensors.values())} parameters, "
          f"{ema}; read from the {layout}")


if __name__ == "__main__":
    main()
