#!/usr/bin/env python3
"""Reader benchmark (issue 6): one run, one 100k-record cache, every reader, medians.

    swift build -c release --scratch-path .build-rd
    .venv/bin/python tools/bench_readers.py --mtok .build-rd/release/mtok

Makes the cache with `mtok synth-cache CACHE --records 100000 --u32-indices --group-dtype u16`
(K = 256, C = 16, bf16 latents) unless it exists, then measures, in the stream order of
(seed 0, epoch 0, rank 0 of 1):

- raw zstd: `mtok stream --decompress-only` (frames decompressed on one thread, bytes discarded)
  and python-zstandard over the same frames held in memory: the limit for any reader;
- the Swift stream (`mtok stream`, decoded into float32 batches) with 1 thread and with all cores;
- mtokcache (Python): records via cache[i], and batches of 256 via cache.stream;
- a naive loop: py-lmdb + zstandard + numpy, written the obvious way from Schemas/FORMAT.md;
- PyTorch DataLoader with 0 and 2 workers, if torch imports: over CacheIterableDataset (samples
  collated by DataLoader, and whole batches with batched=True) and over the map-style
  CacheDataset with the same indices as its sampler; and batches with latent_format="raw", index_dtype="int32" (latents as
  stored, int32 indices and groups: half the bytes through the workers' shared memory).

With --cold (root only: it empties the page cache through /proc/sys/vm/drop_caches before every
run) it measures instead the Swift stream reading a cache from storage, with and without its
read-ahead (`--no-read-ahead`), over the first --cold-records samples: wall-clock records/s,
as storage, not the CPU, bounds them.

Python figures use the first --py-records samples of the same order (default all 100,000: with
fewer, the start-up of DataLoader worker processes is a large share of the run and understates
them, as it would not in an epoch). Each figure is the median of --repeat runs. Wall-clock figures are
for tuning, never for tests.
"""

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
import mtokcache  # noqa: E402


def median_of(fn, repeat):
    runs = [fn() for _ in range(repeat)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def swift_stream(mtok, cache, extra, repeat):
    """Wall-clock rate and the rate per CPU-second (user + system time of the process, all its
    threads): the per-core figure, which other load on the machine does not distort."""
    def once():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([mtok, "stream", cache, "--json"] + extra, check=True, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        r = json.loads(out.stdout)
        return {"records_per_s": r["records_per_s"], "gb_per_s": r["payload_gb_per_s"],
                "records_per_cpu_s": r["records"] / max(cpu, 1e-9)}
    return median_of(once, repeat)


def timed(loop, n_records, payload_per_record):
    t = time.perf_counter()
    loop()
    dt = time.perf_counter() - t
    return {"records_per_s": n_records / dt, "gb_per_s": n_records * payload_per_record / dt / 1e9}


def naive_loop(path, indices):
    """What someone writes from FORMAT.md without tuning: per record, a read transaction, the
    chunk's offsets, one zstd frame, the JSON header, NumPy views and the byte-plane inverse."""
    import lmdb
    import zstandard
    m = json.load(open(os.path.join(path, "manifest.json")))
    R = m["records_per_chunk"]
    shuffled = m["compression"]["shuffle"] == "byte-planes"
    envs, dbs, firsts, first = [], [], [], 0
    for s in m["shards"]:
        env = lmdb.open(os.path.join(path, s["file"]), subdir=False, readonly=True, lock=False, readahead=False,
                        max_dbs=4)
        envs.append(env)
        dbs.append(env.open_db(b"records", create=False))
        firsts.append(first)
        first += s["records"]
    firsts = np.array(firsts)
    dctx = zstandard.ZstdDecompressor()
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "U16": 2, "U8": 1}
    np_types = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U32": "<u4", "U16": "<u2", "U8": "u1"}
    out = []
    for i in indices:
        s = int(np.searchsorted(firsts, i, side="right")) - 1
        local = int(i) - int(firsts[s])
        c, slot = divmod(local, R)
        with envs[s].begin() as txn:
            chunk = txn.get(struct.pack(">Q", c), db=dbs[s])
        n = struct.unpack_from("<I", chunk)[0]
        a, b = struct.unpack_from("<II", chunk, 4 + 4 * slot)
        base = 4 * (n + 2)
        data = dctx.decompress(chunk[base + a:base + b])
        hlen = struct.unpack_from("<Q", data)[0]
        header = json.loads(data[8:8 + hlen])
        header.pop("__metadata__")
        rec = {}
        for name, t in header.items():
            lo, hi = t["data_offsets"]
            size = sizes[t["dtype"]]
            raw = np.frombuffer(data, np.uint8, count=hi - lo, offset=8 + hlen + lo)
            if shuffled and size > 1:
                raw = raw.reshape(size, -1).T.copy()
            arr = raw.view(np_types[t["dtype"]]).reshape(t["shape"])
            if t["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            rec[name] = arr
        out.append(rec["latents"].shape[0])
    for env in envs:
        env.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtok", default=os.path.join(ROOT, ".build", "release", "mtok"))
    ap.add_argument("--cache", default=os.path.join(ROOT, ".build-bench", "readers-100k"))
    ap.add_argument("--records", type=int, default=100000)
    ap.add_argument("--py-records", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--swift-only", action="store_true", help="skip the Python readers")
    ap.add_argument("--cold", action="store_true", help="only the Swift stream from a cold page cache (root)")
    ap.add_argument("--cold-records", type=int, default=20000)
    a = ap.parse_args()

    if not os.path.exists(os.path.join(a.cache, "manifest.json")):
        os.makedirs(os.path.dirname(a.cache), exist_ok=True)
        subprocess.run([a.mtok, "synth-cache", a.cache, "--records", str(a.records), "--u32-indices",
                        "--group-dtype", "u16"], check=True)
    cache = mtokcache.open(a.cache)
    m = cache.manifest
    n = len(cache)
    payload_per_record = m["totals"]["payload_bytes"] / n
    print("cache: %d records, %d shard(s), %.0f payload bytes/record, compressed %.0f, zstd level %d, %s"
          % (n, len(m["shards"]), payload_per_record, m["totals"]["compressed_bytes"] / n,
             m["compression"]["level"], m["compression"]["shuffle"]))
    res = {}

    if a.cold:
        cold(a)
        return
    # Warm the page cache, then interleave the Swift runs (raw, stream, ...) so drifts in machine
    # load hit every configuration alike; medians per configuration.
    for sh in m["shards"]:
        with open(os.path.join(a.cache, sh["file"]), "rb") as f:
            while f.read(1 << 24):
                pass
    configs = {"raw zstd, Swift (1 core)": ["--decompress-only"],
               "Swift stream, 1 thread": ["--threads", "1"],
               "Swift stream, 1 thread, no read-ahead": ["--threads", "1", "--no-read-ahead"],
               "Swift stream, 1 thread, bf16 latents out": ["--threads", "1", "--latent-dtype", "bf16"],
               "Swift stream, 1 thread, full random order": ["--threads", "1", "--block-records", "1",
                                                             "--window-blocks", str(n)]}
    if a.threads > 1:
        configs["Swift stream, %d threads" % a.threads] = ["--threads", str(a.threads)]
    runs = {name: [] for name in configs}
    for _ in range(a.repeat):
        for name, extra in configs.items():
            runs[name].append(swift_stream(a.mtok, a.cache, extra, 1))
    for name, rs in runs.items():
        res[name] = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
    # Stream against raw zstd round by round (the two ran back to back): drifts in machine load
    # between rounds cancel in each ratio.
    paired = sorted(s["records_per_cpu_s"] / r["records_per_cpu_s"]
                    for s, r in zip(runs["Swift stream, 1 thread"], runs["raw zstd, Swift (1 core)"]))
    if a.swift_only:
        report(res, a, paired)
        return

    order = cache.stream_indices(0, 1, 0, 0)
    sub = order[:a.py_records]
    k = len(sub)

    # python-zstandard on the same frames, already in memory: Python's decompression limit.
    frames = []
    for i in sub:
        s, local = cache.locate(int(i))
        sh = cache._open()[s]
        chunk = sh.txn.get(struct.pack(">Q", local // cache.records_per_chunk), db=sh.records)
        nn = struct.unpack_from("<I", chunk)[0]
        lo, hi = struct.unpack_from("<II", chunk, 4 + 4 * (local % cache.records_per_chunk))
        frames.append(bytes(chunk[4 * (nn + 2) + lo:4 * (nn + 2) + hi]))
    import zstandard
    d = zstandard.ZstdDecompressor()
    cache.close()  # one process may not open an LMDB file twice: the naive loop opens its own

    def closing(fn, *caches):
        """Runs fn, then closes the caches' environments so the naive loop can open its own."""
        def run():
            try:
                return fn()
            finally:
                for c in caches:
                    c.close()
        return run

    # Python readers, interleaved across repeats like the Swift runs.
    pyruns = [("raw zstd, python-zstandard (1 core)", lambda: [d.decompress(f) for f in frames]),
              ("naive py-lmdb + zstandard + numpy", lambda: naive_loop(a.cache, sub)),
              ("mtokcache cache[i]", closing(lambda: [cache[int(i)] for i in sub], cache)),
              ("mtokcache stream, batches of 256",
               closing(lambda: list(cache.stream(0, 1, 0, 0, batch_size=256, limit=k)), cache))]
    try:
        import torch
        from torch.utils.data import DataLoader
        from mtokcache.datasets import CacheDataset, CacheIterableDataset
        torch.set_num_threads(1)

        class Limited(CacheIterableDataset):
            def indices(self):
                return super().indices()[:k]

        order_list = [int(i) for i in sub]
        for workers in (0, 2):
            ds = Limited(a.cache, seed=0, batch_size=256)
            pyruns.append(("torch DataLoader, %d workers" % workers, closing(
                lambda ds=ds, w=workers: [b for b in DataLoader(ds, batch_size=256, num_workers=w)], ds._cache)))
            mds = CacheDataset(a.cache)
            pyruns.append(("torch DataLoader, map-style, %d workers" % workers, closing(
                lambda mds=mds, w=workers: [b for b in DataLoader(mds, batch_size=256, sampler=order_list,
                                                                  num_workers=w)], mds._cache)))
            bds = Limited(a.cache, seed=0, batch_size=256, batched=True)
            pyruns.append(("torch DataLoader, batched, %d workers" % workers, closing(
                lambda bds=bds, w=workers: [b for b in DataLoader(bds, batch_size=None, num_workers=w)], bds._cache)))
            cds = Limited(a.cache, seed=0, batch_size=256, batched=True, latent_format="raw", index_dtype="int32")
            pyruns.append(("torch DataLoader, batched, compact, %d workers" % workers, closing(
                lambda cds=cds, w=workers: [b for b in DataLoader(cds, batch_size=None, num_workers=w)], cds._cache)))
    except ImportError:
        print("torch not importable: DataLoader figures skipped")
    pyres = {name: [] for name, _ in pyruns}
    for _ in range(a.repeat):
        for name, fn in pyruns:
            pyres[name].append(timed(fn, k, payload_per_record))
    for name, rs in pyres.items():
        res[name] = {key: statistics.median(r[key] for r in rs) for key in rs[0]}

    report(res, a, paired)


def cold(a):
    """The stream from storage: the page cache is emptied before each run, configurations
    interleaved round by round."""
    configs = {}
    for label, extra in (("1 thread", ["--threads", "1"]), ("2 threads", ["--threads", "2"]),
                         ("rank 0 of 4, 1 thread", ["--threads", "1", "--world-size", "4"])):
        configs[label + ", page by page (--no-read-ahead)"] = extra + ["--no-read-ahead"]
        configs[label + ", read-ahead (default)"] = extra
    runs = {name: [] for name in configs}
    for _ in range(a.repeat):
        for name, extra in configs.items():
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            out = subprocess.run([a.mtok, "stream", a.cache, "--json", "--limit", str(a.cold_records)] + extra,
                                 check=True, capture_output=True, text=True)
            runs[name].append(json.loads(out.stdout)["records_per_s"])
    width = max(map(len, configs))
    print("\ncold page cache, first %d samples of rank 0's order, median of %d (records/s, wall-clock)"
          % (a.cold_records, a.repeat))
    for name, rs in runs.items():
        print("%-*s  %10.0f   (%s)" % (width, name, statistics.median(rs), ", ".join("%.0f" % r for r in rs)))


def report(res, a, paired):
    width = max(len(x) for x in res)
    print("\n%-*s  %12s  %8s  %14s   (median of %d)" % (width, "reader", "records/s", "GB/s", "records/CPU-s",
                                                       a.repeat))
    for name, r in res.items():
        cpu = "%14.0f" % r["records_per_cpu_s"] if "records_per_cpu_s" in r else "%14s" % "-"
        print("%-*s  %12.0f  %8.3f  %s" % (width, name, r["records_per_s"], r["gb_per_s"], cpu))
    raw = res["raw zstd, Swift (1 core)"]
    one = res["Swift stream, 1 thread"]
    print("\nSwift stream (1 thread) / raw zstd (1 core): %.0f%% per CPU-second, %.0f%% wall-clock (target >= 80%%)"
          % (100 * one["records_per_cpu_s"] / raw["records_per_cpu_s"], 100 * one["records_per_s"] / raw["records_per_s"]))
    print("  per CPU-second, round by round: median %.0f%%, range %.0f-%.0f%% (%d rounds)"
          % (100 * statistics.median(paired), 100 * paired[0], 100 * paired[-1], len(paired)))
    if "naive py-lmdb + zstandard + numpy" not in res:
        return
    naive = res["naive py-lmdb + zstandard + numpy"]["records_per_s"]
    for name in res:
        if name.startswith("mtokcache") or name.startswith("torch"):
            print("%s / naive loop: %.2fx (target >= 1)" % (name, res[name]["records_per_s"] / naive))
    if a.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
