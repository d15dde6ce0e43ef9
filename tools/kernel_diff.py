#!/usr/bin/env python3
"""How far records made on machines of different kinds are apart: the same photographs and model
tokenized under several OpenBLAS kernel sets (OPENBLAS_CORETYPE), compared record by record.

    .venv/bin/python tools/kernel_diff.py [--mtok .build/release/mtok] [--preset mergetok-r-vitb-k144]
        [--images tools/demo/images] [--cores SkylakeX,Haswell,Sandybridge,Nehalem] [--threads 1,2]

Each kernel set tokenizes with float32 latents (every bit visible) under each thread count; the
script checks that the thread counts give one content digest per kernel set, then compares every
kernel set's records with the first one's: latents (largest and median |difference|, relative to
the latents' spread), VQ/LFQ indices (share of tokens whose index changed) and merge-group maps
(share of images whose map changed). Needs numpy and the mtokcache package (tools/python); the
kernel sets must be ones the CPU executes (an AVX-512 set on an AVX2 CPU dies with SIGILL).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
from mtokcache import Cache  # noqa: E402


def tokenize(mtok, images, model, out, core, threads):
    env = dict(os.environ, OPENBLAS_CORETYPE=core)
    subprocess.run([mtok, "tokenize", images, "--model", model, "--out", out, "--views", "center,hflip",
                    "--latent-dtype", "f32", "--threads", str(threads)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c = Cache(out)
    made_by = [s["made_by"]["kernel"] for s in c.manifest.get("arithmetic", [])]
    if made_by != [core]:
        raise SystemExit("%s: the cache says it was made by %s, not %s" % (out, made_by, core))
    return c


def records(cache):
    return [cache[i] for i in range(len(cache))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", default=os.path.join(ROOT, ".build", "release", "mtok"))
    ap.add_argument("--preset", default="mergetok-r-vitb-k144")
    ap.add_argument("--images", default=os.path.join(ROOT, "tools", "demo", "images"))
    ap.add_argument("--cores", default="SkylakeX,Haswell,Sandybridge,Nehalem")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    cores = args.cores.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model.safetensors")
        subprocess.run([args.mtok, "model", "init", "--preset", args.preset, "--seed", "0", "--out", model],
                       check=True, stdout=subprocess.DEVNULL)
        made = {}
        for core in cores:
            digests = set()
            for t in threads:
                c = tokenize(args.mtok, args.images, model, os.path.join(tmp, "%s-%d" % (core, t)), core, t)
                digests.add(c.manifest["content_digest"])
            print("%-12s %d thread counts -> %d content digest(s) %s" %
                  (core, len(threads), len(digests), " ".join(d[7:19] for d in sorted(digests))))
            made[core] = records(c)
        base = made[cores[0]]
        spread = float(np.std(np.concatenate([r["latents"].ravel() for r in base])))
        print("\n%d records (%s, untrained weights, seed 0), compared with %s; latent std %.4g"
              % (len(base), args.preset, cores[0], spread))
        print("%-12s %14s %14s %12s %12s %14s" % ("kernel set", "max |dlatent|", "median |d|", "max / std",
                                                   "indices chg", "group maps chg"))
        for core in cores[1:]:
            d = np.concatenate([np.abs(a["latents"].astype(np.float64) - b["latents"].astype(np.float64)).ravel()
                                for a, b in zip(base, made[core])])
            idx = sum(int(np.count_nonzero(a["indices"] != b["indices"])) for a, b in zip(base, made[core]))
            tokens = sum(a["indices"].size for a in base)
            groups = sum(int(not np.array_equal(a["groups"], b["groups"])) for a, b in zip(base, made[core]))
            print("%-12s %14.3g %14.3g %12.3g %6d/%-5d %8d/%-5d" % (core, d.max(), np.median(d), d.max() / spread,
                                                                    idx, tokens, groups, len(base)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
