#!/usr/bin/env python3
"""How well the stream order of Schemas/STREAM.md mixes a batch, against a full random permutation.

For an ImageNet-like layout (records sorted by class, as a tokenize of an ImageFolder writes
them; shards of equal size), prints per batch of 256 the mean and minimum number of distinct
labels, distinct shards and distinct blocks (LMDB values touched: fewer means more locality),
for several window sizes and for a uniformly random permutation. Needs only NumPy and the
mtokcache package beside this script; reads no cache.

    python3 tools/shuffle_quality.py [--records 1281167 --classes 1000 --shard-records 131072]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
from mtokcache import order  # noqa: E402


def distinct_per_row(a):
    s = np.sort(a, axis=1)
    return (np.diff(s, axis=1) != 0).sum(axis=1) + 1


def measure(perm, n, classes, shard_records, block, batch):
    nb = len(perm) // batch
    p = perm[:nb * batch].reshape(nb, batch)
    labels = distinct_per_row(p * classes // n)
    shards = distinct_per_row(p // shard_records)
    # blocks as STREAM.md cuts them (shards are equal here, so a block is (index within shard) // L).
    blocks = distinct_per_row((p // shard_records) * (shard_records // block + 1) + (p % shard_records) // block)
    return labels, shards, blocks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1281167)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shard-records", type=int, default=131072, help="about 1 GiB of 8 KB records")
    ap.add_argument("--block", type=int, default=16, help="records per block (the cache's records per chunk)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--windows", default="16,64,256,1024")
    a = ap.parse_args()
    n = a.records
    counts = [a.shard_records] * (n // a.shard_records) + ([n % a.shard_records] if n % a.shard_records else [])
    print("%d records, %d classes sorted by index, %d shards of %d, blocks of %d, batches of %d"
          % (n, a.classes, len(counts), a.shard_records, a.block, a.batch))
    print("%-34s %16s %16s %16s" % ("order", "labels mean/min", "shards mean/min", "blocks mean/min"))
    rows = [("block-window, W_b = %s" % w, order.permutation(counts, 1, 0, a.block, int(w)))
            for w in a.windows.split(",")]
    rows.append(("full random permutation", np.random.default_rng(1).permutation(n)))
    for name, perm in rows:
        labels, shards, blocks = measure(perm, n, a.classes, a.shard_records, a.block, a.batch)
        print("%-34s %10.1f / %3d %10.1f / %3d %10.1f / %3d" % (name, labels.mean(), labels.min(), shards.mean(),
                                                                shards.min(), blocks.mean(), blocks.min()))


if __name__ == "__main__":
    main()
