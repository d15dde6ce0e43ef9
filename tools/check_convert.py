#!/usr/bin/env python3
"""Checks tools/convert_checkpoint.py end to end on checkpoints built by the PyTorch reference in
the layouts the MergeVQ training code saves (run by Tests/CLITests/ConvertCheckpointTests):

  - Lightning (`state_dict` with `model_ema.*` copies beside the weights, decoder and loss tensors,
    optimizer state), converted with EMA (the default) and with --no-ema;
  - a bare state dict of the encoder and codebook;
  - a DistributedDataParallel state dict under "model" with every key behind "module.".

Each converted file must hold exactly the tensors the layout should give (EMA or plain, bit for bit),
and `mtok encode` with it must match the PyTorch reference (float64) on a real photograph: the same
merge groups and VQ indices, latents and logvar within 1e-4. Wrong presets, unknown presets and files
that are not checkpoints must be refused with a message naming the cause.

    .venv/bin/python tools/check_convert.py [--mtok .build/debug/mtok]

Prints one line per check; exit 0 when all pass, 77 when PyTorch is not installed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    import numpy as np
    import torch
except ImportError as e:
    print(f"check_convert: skipped: {e.name} is not installed (tools/requirements-torch.txt)")
    sys.exit(77)
sys.path.insert(0, HERE)
from convert_checkpoint import find_mtok, preset_config  # noqa: E402
from encoder_reference import Reference, random_state_dict  # noqa: E402

PRESET = "tiny-vae-vq"  # VAE head and a codebook: every kind of tensor a MergeTok checkpoint has
TOLERANCE = 1e-4
failures = []


def check(ok: bool, what: str) -> None:
    print(("ok     " if ok else "FAILED ") + what)
    if not ok:
        failures.append(what)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_safetensors(path: str) -> tuple[dict, dict]:
    """Float32 tensors and metadata of a safetensors file (no package needed)."""
    import json
    import struct
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    out = {}
    for name, e in header.items():
        assert e["dtype"] == "F32", e
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(e["shape"])
    return out, meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok")
    mtok = find_mtok(ap.parse_args().mtok)
    cfg = preset_config(PRESET, mtok)
    raw, ema = random_state_dict(cfg, 11), random_state_dict(cfg, 12)
    squash = {"model_ema." + k.replace(".", ""): v for k, v in ema.items()}
    with tempfile.TemporaryDirectory() as d:
        lightning = dict(raw, **squash, **{"decoder.conv_in.weight": torch.zeros(4, 4), "loss.logvar": torch.zeros(1)})
        torch.save({"state_dict": lightning, "epoch": 3, "global_step": 1200, "optimizer_states": [{"step": 1}]},
                   f"{d}/lightning.ckpt")
        torch.save(dict(raw), f"{d}/bare.pth")
        torch.save({"model": {"module." + k: v for k, v in raw.items()}, "epoch": 3}, f"{d}/ddp.pt")
        cases = {  # output → (checkpoint, extra options, the tensors it must hold)
            "lightning-ema": ("lightning.ckpt", [], ema),
            "lightning-raw": ("lightning.ckpt", ["--no-ema"], raw),
            "bare": ("bare.pth", [], raw),
            "ddp": ("ddp.pt", [], raw),
        }
        photo = f"{ROOT}/tools/demo/images/animals/chelsea.jpg"
        r = run(mtok, "preprocess", photo, "--resolution", str(cfg["resolution"]), "--out", f"{d}/x.npy")
        check(r.returncode == 0, f"mtok preprocess {os.path.basename(photo)}: {r.stderr.strip()}")
        x = torch.from_numpy(np.load(f"{d}/x.npy")).to(torch.float64)[None]
        references = {id(w): Reference(cfg, w, torch.float64).encode(x)[0] for w in (raw, ema)}
        outputs = {}
        for name, (ckpt, extra, truth) in cases.items():
            model = f"{d}/{name}.safetensors"
            r = run(sys.executable, f"{HERE}/convert_checkpoint.py", f"{d}/{ckpt}", "--preset", PRESET, "--mtok", mtok,
                    "--out", model, *extra)
            check(r.returncode == 0, f"convert {ckpt} {' '.join(extra)}: {(r.stdout + r.stderr).strip()}")
            if r.returncode != 0:
                continue
            tensors, meta = read_safetensors(model)
            same = set(tensors) == set(truth) and all(np.array_equal(tensors[k], truth[k].numpy()) for k in truth)
            check(same, f"{name}: {len(tensors)} tensors, bit-identical to the {'EMA' if truth is ema else 'plain'} weights")
            check(meta.get("mtok.weights") == ("ema" if truth is ema else "raw") and meta.get("mtok.source") == ckpt,
                  f"{name}: metadata records mtok.weights={meta.get('mtok.weights')}, mtok.source={meta.get('mtok.source')}")
            info = run(mtok, "model", "info", model)
            check(info.returncode == 0 and "UNTRAINED" not in info.stdout and "codebook 64×8" in info.stdout,
                  f"{name}: mtok model info reads it (trained, VQ codebook 64×8)")
            r = run(mtok, "encode", f"{d}/x.npy", "--model", model, "--out", f"{d}/{name}.npz")
            check(r.returncode == 0, f"{name}: mtok encode: {r.stderr.strip()}")
            if r.returncode != 0:
                continue
            out = dict(np.load(f"{d}/{name}.npz"))
            outputs[name] = out
            ref = references[id(truth)]
            groups = np.array_equal(out["groups"], ref["groups"].numpy())
            indices = np.array_equal(out["indices"], ref["indices"].numpy())
            lat = float(np.abs(out["latents"] - ref["latents"].numpy()).max())
            logvar = float(np.abs(out["logvar"] - ref["logvar"].numpy()).max())
            check(groups and indices and lat <= TOLERANCE and logvar <= TOLERANCE,
                  f"{name}: encodes as the PyTorch reference: groups {'equal' if groups else 'DIFFER'}, indices "
                  f"{'equal' if indices else 'DIFFER'}, max |Δ latent| {lat:.2e}, max |Δ logvar| {logvar:.2e}")
        if len(outputs) == len(cases):
            plain = [outputs[n] for n in ("lightning-raw", "bare", "ddp")]
            check(all(np.array_equal(p[k], plain[0][k]) for p in plain[1:] for k in plain[0]),
                  "the three layouts of the plain weights encode bit-identically")
            check(not np.array_equal(outputs["lightning-ema"]["latents"], plain[0]["latents"]),
                  "the EMA weights encode differently from the plain ones (the switch matters)")

        # Refusals that name the cause.
        r = run(sys.executable, f"{HERE}/convert_checkpoint.py", f"{d}/bare.pth", "--preset", "tiny-iso", "--mtok", mtok,
                "--out", f"{d}/wrong.safetensors")
        check(r.returncode != 0 and "does not match the configuration" in r.stderr and not os.path.exists(f"{d}/wrong.safetensors"),
              f"a wrong preset is refused, nothing written: {r.stderr.strip().splitlines()[0] if r.stderr else ''}")
        r = run(sys.executable, f"{HERE}/convert_checkpoint.py", f"{d}/bare.pth", "--preset", "mergetok-nope", "--mtok", mtok,
                "--out", f"{d}/wrong.safetensors")
        check(r.returncode != 0 and "unknown preset 'mergetok-nope'" in r.stderr, f"an unknown preset is refused: {r.stderr.strip()}")
        r = run(sys.executable, f"{HERE}/convert_checkpoint.py", photo, "--preset", PRESET, "--mtok", mtok,
                "--out", f"{d}/wrong.safetensors")
        check(r.returncode != 0 and "is not a PyTorch checkpoint" in r.stderr, "a JPEG is refused as a checkpoint")
        r = run(mtok, "tokenize", f"{ROOT}/tools/demo/images", "--model", f"{d}/bare.pth", "--out", f"{d}/cache")
        check(r.returncode != 0 and "PyTorch checkpoint" in r.stderr and "convert_checkpoint.py" in r.stderr,
              f"mtok given an unconverted checkpoint says to convert it: {r.stderr.strip()}")
    print(f"check_convert: {'FAILED ' + str(len(failures)) if failures else 'passed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
