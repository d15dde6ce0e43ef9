#!/usr/bin/env python3
"""Benchmark: mtok's preprocessing against Pillow's on the same real photographs.

Both sides read each JPEG file, decode it and make the ADM centre crop (DiT/LlamaGen/MAR
`center_crop_arr`) at the same output size, on one thread. Prints images/s for each, the ratio,
whether the outputs agree, and how far the optional DCT-scaling fast path is from the exact path.

Photos (20 distinct, all shipped inside PyPI wheels):
  scikit-image data: astronaut, brick, camera, cell, chelsea, coffee, coins, grass, gravel,
    hubble_deep_field, ihc, microaneurysms, moon, motorcycle_left, motorcycle_right, retina, rocket
  scikit-learn datasets/images: china, flower
  matplotlib sample_data: grace_hopper
Each is used at its own size (300 to 1411 pixels a side) and again scaled so its long side is
500 (typical of ImageNet), as JPEG (quality 90, 4:2:0; the JPEG originals are used as they are):
40 files of mixed sizes.

Run from the repository root, after a release build:
    swift build -c release --product mtok
    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-bench.txt
    .venv/bin/python tools/bench_preprocess.py [--mtok .build/release/mtok] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The reference crop the fixtures are made with (guided-diffusion's center_crop_arr).
from image_fixtures import adm_crop as center_crop_arr  # noqa: E402

SKIMAGE = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
           "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
           "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg"]


def photo_sources() -> list[str]:
    import matplotlib
    import sklearn
    import skimage
    sk = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = [os.path.join(sk, n) for n in SKIMAGE]
    out += [os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", n) for n in ("china.jpg", "flower.jpg")]
    out.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"))
    return out


def make_photo_set(folder: str) -> list[str]:
    files = []
    for src in photo_sources():
        stem = os.path.splitext(os.path.basename(src))[0]
        img = Image.open(src)
        native = os.path.join(folder, f"{stem}.jpg")
        if src.endswith(".jpg"):
            shutil.copyfile(src, native)
        else:
            img.convert("RGB").save(native, quality=90, subsampling=2)
        files.append(native)
        w, h = img.size
        s = 500 / max(w, h)
        small = img.convert("RGB").resize((round(w * s), round(h * s)), Image.LANCZOS)
        path = os.path.join(folder, f"{stem}_500.jpg")
        small.save(path, quality=90, subsampling=2)
        files.append(path)
    return files


def pillow_round(files: list[str], size: int) -> float:
    start = time.perf_counter()
    for f in files:
        with open(f, "rb") as fp:
            center_crop_arr(Image.open(fp).convert("RGB"), size)
    return time.perf_counter() - start


def mtok(binary: str, files: list[str], *args: str) -> dict:
    out = subprocess.run([binary, "bench-preprocess", *args, *files], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtok", default=".build/release/mtok")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--trials", type=int, default=5, help="alternating Pillow/mtok trials (medians reported)")
    ap.add_argument("--rounds", type=int, default=3, help="passes over all files per mtok trial")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    tmp = tempfile.mkdtemp()
    try:
        files = make_photo_set(tmp)
        sizes = sorted({Image.open(f).size for f in files})
        print(f"{len(files)} JPEG files, sizes {sizes[0]} .. {sizes[-1]}, output {args.size}x{args.size}, one thread")

        # Same output? Compare every mtok crop with Pillow's.
        dump = os.path.join(tmp, "dump")
        mtok(args.mtok, files, "--rounds", "1", "--dump", dump, "--resolution", str(args.size))
        worst = 0
        for f in files:
            ref = center_crop_arr(Image.open(f).convert("RGB"), args.size)
            got = np.fromfile(os.path.join(dump, os.path.basename(f) + ".rgb"), np.uint8).reshape(ref.shape)
            worst = max(worst, int(np.abs(ref.astype(int) - got.astype(int)).max()))
        print(f"exact path vs Pillow: max abs difference {worst} (of 255) over all pixels")

        pillow_rate, exact_rate, fast_rate, region_off_rate = [], [], [], []
        pillow_round(files, args.size)  # warm the file cache and Pillow's imports
        for _ in range(args.trials):
            pillow_rate.append(len(files) / pillow_round(files, args.size))
            r = ["--rounds", str(args.rounds), "--resolution", str(args.size)]
            exact_rate.append(mtok(args.mtok, files, *r)["images_per_second"])
            region_off_rate.append(mtok(args.mtok, files, *r, "--no-region")["images_per_second"])
            fast_rate.append(mtok(args.mtok, files, *r, "--fast")["images_per_second"])
        dist = mtok(args.mtok, files, "--rounds", "1", "--compare-fast", "--resolution", str(args.size))

        p, e, f, n = (statistics.median(x) for x in (pillow_rate, exact_rate, fast_rate, region_off_rate))
        print(f"Pillow {Image.__version__} (center_crop_arr):   {p:8.1f} images/s")
        print(f"mtok exact (region decode):        {e:8.1f} images/s   ratio {e / p:.2f}x")
        print(f"mtok exact (whole-image decode):   {n:8.1f} images/s   ratio {n / p:.2f}x")
        print(f"mtok fast path (DCT scaling):      {f:8.1f} images/s   ratio {f / p:.2f}x")
        print(f"fast path vs exact: max abs difference {dist['fast_max_abs_diff']}, "
              f"mean {dist['fast_mean_abs_diff']:.3f} (of 255) over all {len(files)} images; "
              f"{dist['fast_changed_images']} images changed, mean {dist['fast_mean_abs_diff_changed']:.3f} over those")
        print(f"medians of {args.trials} trials; per trial images/s: Pillow {[round(x) for x in pillow_rate]}, "
              f"mtok {[round(x) for x in exact_rate]}")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
