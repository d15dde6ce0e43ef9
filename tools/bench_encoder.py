#!/usr/bin/env python3
"""Swift encoder vs the PyTorch reference, in one run, same machine, same thread count.

    python tools/bench_encoder.py [--mtok PATH] [--threads N] [--repeats N] [--preset NAME]

Steps: `mtok model init` writes seeded random weights for the preset (default
mergevq-gr-d64-k144, 256×256); the PyTorch reference (tools/encoder_reference.py: CPU, eager,
float32, the CNN stem batched over the images) loads the same file; both encode batch 1 and batch 8
of the same input. The Swift side runs as `mtok bench-encoder` in its own process per batch size,
which also measures OpenBLAS sgemm GFLOP/s (2048³) and reports its peak RSS (VmHWM). Prints
medians: images/s for both and their ratio, Swift GFLOP/s against sgemm GFLOP/s, peak RSS, and a
parity check (latent max |Δ|, indices and groups equal) on one image.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_reference import Reference  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


class SwiftBench:
    """`mtok bench-encoder` as a line-oriented server: one command in, one JSON object out."""

    def __init__(self, mtok, model, batch, threads, npy):
        self.proc = subprocess.Popen([mtok, "bench-encoder", "--model", model, "--batch", str(batch),
                                      "--threads", str(threads), "--input", npy],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.proc.stdout.readline())     # after load and a warm-up batch

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def torch_time(ref, xb):
    t0 = time.perf_counter()
    ref.encode(xb)
    return time.perf_counter() - t0


def median(values):
    return sorted(values)[len(values) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", default=os.path.join(ROOT, ".build", "release", "mtok"))
    ap.add_argument("--preset", default="mergevq-gr-d64-k144")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model.safetensors")
        subprocess.run([args.mtok, "model", "init", "--preset", args.preset, "--seed", "0", "--out", model],
                       check=True, capture_output=True)
        from safetensors import safe_open
        with safe_open(model, "np") as f:
            cfg = json.loads(f.metadata()["mtok.config"])
        ref = Reference(cfg, load_file(model), torch.float32)
        r = cfg["resolution"]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(3, r, r, generator=g) * 2 - 1
        npy = os.path.join(tmp, "input.npy")
        np.save(npy, x.numpy())

        # Parity on the benchmark input.
        enc = os.path.join(tmp, "enc.safetensors")
        subprocess.run([args.mtok, "encode", npy, "--model", model, "--out", enc, "--threads", str(args.threads)],
                       check=True)
        got = load_file(enc)
        want = ref.encode(x[None])[0]
        dl = (got["latents"] - want["latents"]).abs().max().item()
        same_idx = torch.equal(got["indices"].long(), want["indices"].long())
        same_grp = torch.equal(got["groups"].long(), want["groups"].long())

        print(f"preset {args.preset}, {r}x{r}, threads {args.threads}, repeats {args.repeats} (medians)")
        print(f"parity vs PyTorch float32: latent max|d| {dl:.2e}, indices equal {same_idx}, groups equal {same_grp}")
        for b in [int(v) for v in args.batches.split(",")]:
            # Interleave Swift, PyTorch and sgemm runs round by round: the figures then share the
            # machine's load, which matters on a small shared machine.
            swift = SwiftBench(args.mtok, model, b, args.threads, npy)
            xb = x[None].expand(b, -1, -1, -1).contiguous()
            ref.encode(xb)                                          # PyTorch warm-up
            sw, pt, gemm = [], [], []
            for _ in range(args.repeats):
                sw.append(swift.ask("encode")["seconds"])
                pt.append(torch_time(ref, xb))
                gemm.append(swift.ask("sgemm")["sgemm_gflops"])
            rss = swift.ask("rss")["peak_rss_bytes"]
            swift.close()
            flops = swift.ready["flops_per_image"] * b
            s_ips, p_ips = b / median(sw), b / median(pt)
            s_gf, g_gf = flops / median(sw) / 1e9, median(gemm)
            print(f"batch {b}: swift {s_ips:.3f} img/s, pytorch {p_ips:.3f} img/s, ratio {s_ips / p_ips:.2f}x | "
                  f"swift {s_gf:.1f} GFLOP/s = {100 * s_gf / g_gf:.0f}% of sgemm {g_gf:.1f} GFLOP/s | "
                  f"swift peak RSS {rss / 2**20:.0f} MiB")
            print(f"  raw seconds: swift {[round(v, 3) for v in sw]}, pytorch {[round(v, 3) for v in pt]}, "
                  f"sgemm GFLOP/s {[round(v, 1) for v in gemm]}")


if __name__ == "__main__":
    main()
