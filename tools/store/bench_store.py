#!/usr/bin/env python3
"""Store benchmark: Swift writer and reader against a plain Python baseline on the same cache.

    swift build -c release --product mtok
    .venv/bin/python tools/store/bench_store.py [--records 100000] [--workdir /tmp/mtok-bench]

Makes a cache of N records shaped like ImageNet-256 MergeTok output (K=256, C=16 bf16 latents,
u32 indices, u16 groups) with `mtok synth-cache`, then prints side by side, from this one run:
write records/s (Swift, `mtok bench-store --write`: CacheWriter alone on records generated
beforehand; the Python baseline does not write) next to the writer's ceiling on this machine (the
cores divided by the CPU time per record, measured in the same process, of serializing and
hashing the payload, compressing it and hashing its frame at sealing: work any writer of this
format does at these settings); random reads by index per second; sequential
scan MB/s of payload; deep verify GB/s with one checking thread, per wall second and per CPU
second, next to the raw zstd decompression rate of the same frames on one thread; and bytes on
disk against the sum of compressed records and against per-record .npy files of the same arrays.

The Python baseline is what a user would write with py-lmdb + zstandard + numpy from
Schemas/FORMAT.md: open each shard read-only without locking, find the chunk, decompress the
frame, undo the byte shuffle, parse the safetensors header, view the tensors with numpy.
Needs numpy, lmdb, zstandard (tools/requirements-test.txt). Figures are medians of --repeats runs.
"""
import argparse, json, os, random, resource, shutil, statistics, struct, subprocess, sys, time
import lmdb, numpy as np, zstandard as zstd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "U16": 2, "U32": 4}


class BaselineReader:
    def __init__(self, path):
        self.m = json.load(open(os.path.join(path, "manifest.json")))
        self.rpc = self.m["records_per_chunk"]
        self.shuffled = self.m["compression"]["shuffle"] == "byte-planes"
        self.first, n, self.envs = [], 0, []
        for s in self.m["shards"]:
            env = lmdb.open(os.path.join(path, s["file"]), subdir=False, readonly=True, lock=False,
                            readahead=False, max_dbs=4)
            self.envs.append((env, env.open_db(b"records", create=False)))
            self.first.append(n)
            n += s["records"]
        self.count = n
        self.d = zstd.ZstdDecompressor()

    def frame(self, i):
        s = next(k for k in range(len(self.first) - 1, -1, -1) if self.first[k] <= i)
        local = i - self.first[s]
        env, db = self.envs[s]
        with env.begin(db=db) as txn:
            chunk = txn.get(struct.pack(">Q", local // self.rpc))
        slot = local % self.rpc
        n = struct.unpack_from("<I", chunk, 0)[0]
        a, b = struct.unpack_from("<II", chunk, 4 + 4 * slot)
        base = 4 * (n + 2)
        return chunk[base + a: base + b]

    def record(self, i):
        raw = self.d.decompress(self.frame(i))
        hlen = struct.unpack_from("<Q", raw, 0)[0]
        header = json.loads(raw[8:8 + hlen])
        data = memoryview(raw)[8 + hlen:]
        out = {"meta": header.pop("__metadata__")}
        for name, t in header.items():
            a, b = t["data_offsets"]
            s = SIZES[t["dtype"]]
            buf = np.frombuffer(data[a:b], dtype=np.uint8)
            if self.shuffled and s > 1:
                buf = buf.reshape(s, -1).T.copy()
            dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1", "U16": "<u2", "U32": "<u4"}[t["dtype"]]
            arr = buf.view(dt).reshape(t["shape"])
            if t["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[name] = arr
        return out, len(raw)


def median_of(repeats, fn):
    return statistics.median(fn() for _ in range(repeats))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100000)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/mtok-bench-store")
    ap.add_argument("--mtok", default=os.path.join(ROOT, ".build/release/mtok"))
    args = ap.parse_args()
    cache = os.path.join(args.workdir, "cache")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    subprocess.run([args.mtok, "synth-cache", cache, "--records", str(args.records), "--u32-indices",
                    "--group-dtype", "u16", "--batch-size", "2048"], check=True, capture_output=True, text=True)

    def write_once():
        target = os.path.join(args.workdir, "write-cache")
        shutil.rmtree(target, ignore_errors=True)
        w = json.loads(subprocess.run([args.mtok, "bench-store", target, "--write", str(args.records)], check=True,
                                      capture_output=True, text=True).stdout)
        shutil.rmtree(target, ignore_errors=True)
        return w
    writes = [write_once() for _ in range(args.repeats)]
    write_rate = statistics.median(w["write_records_per_s"] for w in writes)
    write_cpu_rate = statistics.median(w["records_per_cpu_second"] for w in writes)
    ceiling = statistics.median(w["ceiling_records_per_s"] for w in writes)
    floor = {k: statistics.median(w["floor_us_per_record"][k] for w in writes) for k in writes[0]["floor_us_per_record"]}

    swift = json.loads(subprocess.run([args.mtok, "bench-store", cache, "--reads", str(args.reads), "--repeats",
                                       str(args.repeats)], check=True, capture_output=True, text=True).stdout)

    def child_cpu():
        u = resource.getrusage(resource.RUSAGE_CHILDREN)
        return u.ru_utime + u.ru_stime

    def verify_once():
        cpu = child_cpu()
        v = json.loads(subprocess.run([args.mtok, "verify", cache, "--deep", "--json", "--threads", "1"], check=True,
                                      capture_output=True, text=True).stdout)
        assert v["clean"], v["faults"][:3]
        return v["payload_bytes_checked"] / v["seconds"] / 1e9, v["payload_bytes_checked"] / (child_cpu() - cpu) / 1e9
    verifies = [verify_once() for _ in range(args.repeats)]
    verify_gbs = statistics.median(v[0] for v in verifies)
    verify_cpu_gbs = statistics.median(v[1] for v in verifies)

    def decompress_once():
        return json.loads(subprocess.run([args.mtok, "stream", cache, "--decompress-only", "--no-shuffle", "--json"],
                                         check=True, capture_output=True, text=True).stdout)["payload_gb_per_s"]
    raw_zstd = statistics.median(decompress_once() for _ in range(args.repeats))

    r = BaselineReader(cache)
    rng = random.Random(1)
    idx = [rng.randrange(r.count) for _ in range(args.reads)]

    def random_reads():
        t = time.perf_counter()
        for i in idx:
            r.record(i)
        return len(idx) / (time.perf_counter() - t)

    def scan():
        t = time.perf_counter()
        total = 0
        for i in range(r.count):
            total += r.record(i)[1]
        return total / (time.perf_counter() - t) / 1e6

    py_random = median_of(args.repeats, random_reads)
    py_scan = median_of(args.repeats, scan)

    m = json.load(open(os.path.join(cache, "manifest.json")))
    tot = m["totals"]
    # Per-record .npy files of the same arrays (bf16 kept as 2-byte words), on a sample, scaled up.
    sample = min(2000, r.count)
    npy_dir = os.path.join(args.workdir, "npy")
    os.makedirs(npy_dir)
    for i in range(sample):
        rec, _ = r.record(i)
        lat = rec["latents"].astype(np.float32)
        lat16 = (lat.view(np.uint32) >> 16).astype(np.uint16)
        np.save(os.path.join(npy_dir, f"{i:08d}_latents.npy"), lat16)
        np.save(os.path.join(npy_dir, f"{i:08d}_indices.npy"), rec["indices"])
        np.save(os.path.join(npy_dir, f"{i:08d}_groups.npy"), rec["groups"])
    du = int(subprocess.run(["du", "-sb", "--apparent-size", npy_dir], capture_output=True, text=True).stdout.split()[0])
    du_blocks = int(subprocess.run(["du", "-sk", npy_dir], capture_output=True, text=True).stdout.split()[0]) * 1024
    npy_bytes = du * r.count / sample
    npy_disk = du_blocks * r.count / sample

    print(f"store benchmark: {r.count} records, K=256 C=16 bf16, u32 indices, u16 groups; medians of {args.repeats}")
    print(f"{'':34}{'Swift':>14}{'Python baseline':>18}{'ratio':>9}")
    print(f"{'write records/s':34}{write_rate:>14,.0f}{'-':>18}{'':>9}   target >= 50,000")
    print(f"{'write records per CPU-second':34}{write_cpu_rate:>14,.0f}{'-':>18}")
    print(f"{'write ceiling records/s':34}{ceiling:>14,.0f}{'':>18}{'':>9}   "
          f"{writes[0]['threads']} cores / CPU-us per record no writer skips: "
          + ", ".join(f"{k} {v:.1f}" for k, v in floor.items()))
    print(f"{'random reads by index /s':34}{swift['random_reads_per_s']:>14,.0f}{py_random:>18,.0f}{swift['random_reads_per_s'] / py_random:>8.2f}x   target >= 3x")
    print(f"{'sequential scan MB/s (payload)':34}{swift['scan_payload_mb_per_s']:>14,.0f}{py_scan:>18,.0f}{swift['scan_payload_mb_per_s'] / py_scan:>8.2f}x")
    print(f"{'deep verify GB/s, 1 thread':34}{verify_gbs:>14.2f}{'':>18}{'':>9}   target >= 1.0")
    print(f"{'deep verify GB per CPU-second':34}{verify_cpu_gbs:>14.2f}")
    print(f"{'raw zstd decode GB/s, 1 thread':34}{raw_zstd:>14.2f}{'':>18}{'':>9}   (mtok stream --decompress-only)")
    print(f"payload {tot['payload_bytes']:,} B; compressed {tot['compressed_bytes']:,} B (ratio {tot['payload_bytes'] / tot['compressed_bytes']:.3f})")
    print(f"on disk {tot['bytes_on_disk']:,} B = {tot['bytes_on_disk'] / tot['compressed_bytes']:.3f}x compressed (target <= 1.10)")
    print(f".npy files of the same arrays: {npy_bytes:,.0f} B of content, {npy_disk:,.0f} B in file-system blocks "
          f"= {npy_disk / tot['bytes_on_disk']:.2f}x the cache on disk")


if __name__ == "__main__":
    main()
