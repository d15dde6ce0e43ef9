#!/usr/bin/env python3
"""Measures the compression choices of the record format on a real cache's payloads.

For every record: plain zstd (the format's choice), zstd after byte-shuffling the float tensors
(high bytes of all values, then low bytes), and zstd with a per-shard dictionary trained on the
first records. Prints total compressed bytes and ratios for each, at the given level.

    .venv/bin/python tools/store/measure_compression.py CACHE [--level 3] [--limit 5000]

Needs numpy, lmdb, zstandard (tools/requirements-test.txt). Reads the cache with py-lmdb
directly, per Schemas/FORMAT.md.
"""
import argparse, json, os, struct, sys, time
import lmdb, numpy as np, zstandard as zstd


def payloads(cache, limit):
    manifest = json.load(open(os.path.join(cache, "manifest.json")))
    d = zstd.ZstdDecompressor()
    n = 0
    for shard in manifest["shards"]:
        env = lmdb.open(os.path.join(cache, shard["file"]), subdir=False, readonly=True, lock=False, max_dbs=4)
        records = env.open_db(b"records", create=False)
        with env.begin(db=records, buffers=False) as txn:
            for _, chunk in txn.cursor():
                count = struct.unpack_from("<I", chunk, 0)[0]
                offs = struct.unpack_from("<%dI" % (count + 1), chunk, 4)
                base = 4 * (count + 2)
                for s in range(count):
                    yield d.decompress(chunk[base + offs[s]: base + offs[s + 1]])
                    n += 1
                    if n >= limit:
                        return
        env.close()


def shuffled(payload):
    hlen = struct.unpack_from("<Q", payload, 0)[0]
    header = json.loads(payload[8:8 + hlen])
    out = bytearray(payload[:8 + hlen])
    data = payload[8 + hlen:]
    for name, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        size = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "U16": 2, "U32": 4}[t["dtype"]]
        arr = np.frombuffer(data[a:b], dtype=np.uint8).reshape(-1, size)
        out += arr.T.tobytes()  # byte planes
    return bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--limit", type=int, default=5000)
    args = ap.parse_args()
    ps = list(payloads(args.cache, args.limit))
    raw = sum(len(p) for p in ps)
    c = zstd.ZstdCompressor(level=args.level, write_checksum=True)
    t = time.perf_counter(); plain = sum(len(c.compress(p)) for p in ps); tp = time.perf_counter() - t
    sh = [shuffled(p) for p in ps]
    t = time.perf_counter(); shuf = sum(len(c.compress(p)) for p in sh); ts = time.perf_counter() - t
    train = ps[: min(1000, len(ps) // 2)]
    dic = zstd.train_dictionary(16384, train)
    cd = zstd.ZstdCompressor(level=args.level, write_checksum=True, dict_data=dic)
    rest = ps[len(train):]
    dict_total = sum(len(cd.compress(p)) for p in rest) + len(dic.as_bytes())
    plain_rest = sum(len(c.compress(p)) for p in rest)
    print(f"records {len(ps)}, payload {raw} bytes, zstd level {args.level}")
    print(f"plain          {plain:>12} bytes  ratio {raw / plain:.3f}  ({raw / tp / 1e6:.0f} MB/s)")
    print(f"byte-shuffled  {shuf:>12} bytes  ratio {raw / shuf:.3f}  ({raw / ts / 1e6:.0f} MB/s)  {100 * (plain - shuf) / plain:+.1f}% vs plain")
    print(f"dictionary     {dict_total:>12} bytes for the {len(rest)} records after training (16 KiB dict included) vs plain {plain_rest}: {100 * (plain_rest - dict_total) / plain_rest:+.1f}%")


if __name__ == "__main__":
    main()
