#!/usr/bin/env python3
"""Checks mtok's crops against Pillow's on the benchmark photos at several sizes and both crops.

A wider sweep than the committed fixtures (which CI checks): full-size real photos, output sizes
from 64 to 512, region decode on (the default). Prints the largest difference per setting.

    .venv/bin/python tools/check_parity.py [--mtok .build/release/mtok]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_preprocess import center_crop_arr, make_photo_set  # noqa: E402
from image_fixtures import resize_center  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", default=".build/release/mtok")
    ap.add_argument("--sizes", default="64,128,224,256,384,512")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    worst_all = 0
    try:
        files = make_photo_set(tmp)
        for crop in ("adm", "resize-center"):
            for size in map(int, args.sizes.split(",")):
                dump = os.path.join(tmp, f"{crop}{size}")
                subprocess.run([args.mtok, "bench-preprocess", "--rounds", "1", "--crop", crop, "--resolution",
                                str(size), "--dump", dump, *files], check=True, capture_output=True)
                worst = 0
                for f in files:
                    img = Image.open(f).convert("RGB")
                    ref = center_crop_arr(img, size) if crop == "adm" else resize_center(img, size)
                    got = np.fromfile(os.path.join(dump, os.path.basename(f) + ".rgb"), np.uint8).reshape(ref.shape)
                    worst = max(worst, int(np.abs(ref.astype(int) - got.astype(int)).max()))
                print(f"{crop:13s} {size:4d}: max abs difference {worst} over {len(files)} photos")
                worst_all = max(worst_all, worst)
    finally:
        shutil.rmtree(tmp)
    return 0 if worst_all <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
