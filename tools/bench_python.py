#!/usr/bin/env python3
"""mtokcache against a hand-written py-lmdb + zstd loop and the Python streaming formats
(MosaicML Streaming, LitData): one run, the same records, the same shapes, medians.

    .venv/bin/pip install -r tools/requirements-bench.txt
    .venv/bin/python tools/bench_python.py [--records 100000] [--repeat 3] [--json out.json]
    .venv/bin/python tools/bench_python.py --records 2000 --repeat 1        # smoke run

Records: latents [256, 16] bfloat16 (held as uint16 bit patterns), indices [256] uint32,
groups [256] uint16, an id string and an int label; zstd level 3 wherever the system lets one
choose. They come from an mtok cache (`--cache PATH`), or from `mtok synth-cache DIR --records N
--u32-indices --group-dtype u16` (the Swift binary, `--mtok`), read once into .npy files in the
work directory that every measuring process maps (np.load(mmap_mode="r")).

Phases, for every system on the same records:
- write: all records into a fresh directory, finish/merge/close included, each system's default
  durability (mtokcache and plain LMDB sync their commits; MDS and LitData write plain files
  without fsync);
- random: the same min(records, 20000) indices for all (seed 0), one record at a time;
- sequential: every record in order (mtokcache in batches of 256, the others record by record);
- DataLoader: torch DataLoader with 2 workers and batches of 256 over every record.

Write-only rows put the writer's figure in context: mtokcache at compression_level=1; "mtokcache
encode only", the per-record work of the format's default encoding with nothing stored (header,
SHA-256 of the payload, byte planes, zstd-3 frame with checksum, SHA-256 of the frames), a floor
under the writer; and "plain + integrity", the plain loop with the same integrity work (frame
checksums, a SHA-256 per record and of the data file).

Every measurement runs in a fresh process (`--child`) that times only its measured section: wall
clock and CPU seconds (user + system of the process, all its threads, and of the child processes
it reaped, i.e. the DataLoader workers). Opening the dataset is inside the section, imports are
not. Each figure is the median of --repeat runs; writes go to a fresh directory every time. The
runs go phase by phase and round by round across the rows (every row once, then every row
again), and each ratio is the median of the ratios within a round, so that a change in the
machine's load between rounds (on a shared machine the same figure moved by a third between
runs) moves both sides of a ratio alike. The
files read are in the page cache (each read phase first reads every file of its store once,
untimed): these are CPU-bound figures, not storage ones.
Rates per CPU-second are the figures to compare; wall-clock rates depend on the machine's load.

At 100,000 records a run takes about 6 minutes with --repeat 1 on 2 cores (AMD EPYC), about 18
with the default --repeat 3 (most of it LitData's random reads and the processes' start-up);
--records 2000 --repeat 1 about 1.5 minutes, a smoke test: its timed sections last milliseconds.
At 100,000 records it needs about 4 GB of disk in the work directory (--workdir, a fresh directory
under /tmp by default), removed at the end unless --keep.
"""

import argparse
import gc
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))

K, C = 256, 16  # tokens per record, latent channels
BATCH = 256  # records per batch: writes' transactions, DataLoader batches, mtokcache's sequential batches
WORKERS = 2  # DataLoader workers
ZSTD_LEVEL = 3
RANDOM_MAX = 20000  # records read in the random phase (fewer when there are fewer records)
PHASES = ("write", "random", "sequential", "loader")
PHASE_TITLES = {"write": "write", "random": "random", "sequential": "sequential", "loader": "DataLoader"}
RESULT_MARK = "BENCH_RESULT "


# -- source records ----------------------------------------------------------------------------

class Source:
    """The source records, mapped from the work directory's .npy files (no copy)."""

    def __init__(self, src_dir):
        def load(name):
            return np.asarray(np.load(os.path.join(src_dir, name + ".npy"), mmap_mode="r"))
        self.latents = load("latents")  # uint16 [N, K, C], bf16 bit patterns
        self.indices = load("indices")  # uint32 [N, K]
        self.groups = load("groups")  # uint16 [N, K]
        self.labels = load("labels")  # int32 [N]
        self.random = load("random").tolist()  # the random phase's indices, as Python ints
        with open(os.path.join(src_dir, "ids.json")) as f:
            self.ids = json.load(f)
        self.label_list = self.labels.tolist()

    def __len__(self):
        return len(self.ids)

    def touch(self):
        """Faults the mapped pages in, so that no writer pays for it inside its timed section."""
        for a in (self.latents, self.indices, self.groups, self.labels):
            int(a.view(np.uint8).reshape(-1)[::4096].sum())


def default_mtok():
    static = os.path.join(ROOT, ".build", "static-prefix", "bin", "mtok")
    return static if os.path.exists(static) else os.path.join(ROOT, ".build", "release", "mtok")


def make_source(args, workdir):
    """Writes the records to WORKDIR/src as .npy files (plus ids.json and the random indices);
    returns the directory and a description of where the records came from."""
    import mtokcache

    src_dir = os.path.join(workdir, "src")
    os.makedirs(src_dir)
    cache_path = args.cache
    if cache_path is None:
        cache_path = os.path.join(workdir, "synth")
        cmd = [args.mtok, "synth-cache", cache_path, "--records", str(args.records), "--u32-indices",
               "--group-dtype", "u16"]
        log("making the source records: %s" % " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        origin = "mtok synth-cache --records %d --u32-indices --group-dtype u16" % args.records
    else:
        origin = "the first %d records of %s" % (args.records, cache_path)
    cache = mtokcache.open(cache_path, latent_format="raw")
    n = args.records
    if len(cache) < n:
        raise SystemExit("%s holds %d records, fewer than --records %d" % (cache_path, len(cache), n))
    log("reading %d source records from %s" % (n, cache_path))

    def npy(name, dtype, shape):
        return np.lib.format.open_memmap(os.path.join(src_dir, name + ".npy"), mode="w+", dtype=dtype, shape=shape)

    lat = npy("latents", np.uint16, (n, K, C))
    ind = npy("indices", np.uint32, (n, K))
    grp = npy("groups", np.uint16, (n, K))
    lab = npy("labels", np.int32, (n,))
    ids = []
    for lo in range(0, n, 4096):
        b = cache.batch(np.arange(lo, min(lo + 4096, n)))
        if b["latents"].shape[1:] != (K, C) or b["latents"].dtype != np.uint16 or b["indices"].dtype != np.uint32 \
                or b["groups"].shape[1:] != (K,) or b["groups"].dtype != np.uint16:
            raise SystemExit("%s does not hold bf16 latents [%d,%d], u32 indices and u16 groups [%d]"
                             % (cache_path, K, C, K))
        hi = lo + len(b["ids"])
        lat[lo:hi], ind[lo:hi], grp[lo:hi], lab[lo:hi] = b["latents"], b["indices"], b["groups"], b["labels"]
        ids.extend(b["ids"])
    for a in (lat, ind, grp, lab):
        a.flush()
    del lat, ind, grp, lab
    settings = cache.manifest.get("settings", {})
    cache.close()
    with open(os.path.join(src_dir, "ids.json"), "w") as f:
        json.dump(ids, f)
    with open(os.path.join(src_dir, "settings.json"), "w") as f:
        json.dump(settings, f)
    rng = np.random.default_rng(0)
    np.save(os.path.join(src_dir, "random.npy"), rng.choice(n, size=min(n, RANDOM_MAX), replace=False))
    if args.cache is None and not args.keep:
        shutil.rmtree(cache_path)
    return src_dir, origin


def latents_bits(x):
    """A record's latents as bf16 bit patterns (uint16), from what a reader returned: uint16
    numpy, float32 numpy (mtokcache's f32, exact for bf16), or a torch tensor."""
    if hasattr(x, "numpy"):  # torch
        import torch
        x = x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()
    x = np.asarray(x)
    if x.dtype == np.float32:
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x


# -- mtokcache ---------------------------------------------------------------------------------

def mtok_write(src, path, opts, **writer_options):
    import mtokcache

    n = len(src)
    w = mtokcache.Writer(path, settings=opts["settings"], latent_dtype="bf16", **writer_options)
    if hasattr(w, "append_many"):
        for lo in range(0, n, BATCH):
            hi = min(lo + BATCH, n)
            w.append_many(ids=src.ids[lo:hi], latents=src.latents[lo:hi], indices=src.indices[lo:hi],
                          groups=src.groups[lo:hi], labels=src.labels[lo:hi])
    else:
        for i in range(n):
            w.append(id=src.ids[i], latents=src.latents[i], indices=src.indices[i], groups=src.groups[i],
                     label=src.label_list[i])
    w.finish()
    return n, None


def mtok_write_level1(src, path, opts):
    return mtok_write(src, path, opts, compression_level=1)


def mtok_encode_only(src, path, opts):
    """The part of a write that the format's default encoding asks for on every record, with
    nothing stored: the record's header, the SHA-256 of its payload, byte planes and the zstd-3
    frame with its checksum (a default Writer's own checks and _encode: the C extension when it is
    built), and SHA-256 over the frames (what sealing the shard hashes, less LMDB's pages). The
    writer holds no record; only the count is written, beside it."""
    import hashlib

    import mtokcache
    from mtokcache.writer import _Headers

    n = len(src)
    w = mtokcache.Writer(os.path.join(path, "empty"), settings=opts["settings"], latent_dtype="bf16")
    tensors, _ = w._tensors(src.latents, src.indices, src.groups, None, n)
    headers = _Headers([(name, dt, arr[0]) for name, dt, arr in tensors])
    arrays = [t[2] for t in tensors]
    content, shard = hashlib.sha256(), hashlib.sha256()
    for i in range(n):
        _, frame, digest = w._encode(headers(src.ids[i], 0, int(src.labels[i]), (0, 0), (0, 0, 0, 0), ""),
                                     [a[i] for a in arrays])
        content.update(digest)
        shard.update(frame)
    w.close()
    with open(os.path.join(path, "count"), "w") as f:
        f.write(str(n))
    return n, None


def encode_only_count(path):
    with open(os.path.join(path, "count")) as f:
        return int(f.read())


def mtok_count(path):
    import mtokcache

    with mtokcache.open(path) as c:
        return len(c)


def mtok_random(path, idx, latent_format="raw"):
    import mtokcache

    c = mtokcache.open(path, latent_format=latent_format)
    r = None
    for i in idx:
        r = c[i]
    return len(idx), (idx[-1], r["latents"])


def mtok_random_f32(path, idx):
    return mtok_random(path, idx, latent_format="f32")


def mtok_sequential(path, n):
    import mtokcache

    c = mtokcache.open(path, latent_format="raw")
    count = 0
    b = None
    for lo in range(0, n, BATCH):
        b = c.batch(np.arange(lo, min(lo + BATCH, n)))
        count += len(b["ids"])
    return count, (n - 1, b["latents"][-1])


def mtok_loader(path, n):
    from torch.utils.data import DataLoader
    from mtokcache.datasets import CacheDataset

    ds = CacheDataset(path, latent_format="raw", index_dtype="int32")
    return drain(DataLoader(ds, batch_size=BATCH, num_workers=WORKERS), n, first_is=0)


def mtok_loader_iterable(path, n):
    from torch.utils.data import DataLoader
    from mtokcache.datasets import CacheIterableDataset

    ds = CacheIterableDataset(path, batch_size=BATCH, batched=True, latent_format="raw", index_dtype="int32", seed=0)
    return drain(DataLoader(ds, batch_size=None, num_workers=WORKERS), n)


# -- plain: py-lmdb + zstandard, one value per record, no checks --------------------------------

def plain_key(i):
    return struct.pack(">Q", i)


def plain_decode(raw):
    """latents [K, C] uint16, indices [K] uint32, groups [K] uint16: views of the bytes."""
    lat = np.frombuffer(raw, np.uint16, K * C).reshape(K, C)
    ind = np.frombuffer(raw, np.uint32, K, offset=2 * K * C)
    grp = np.frombuffer(raw, np.uint16, K, offset=2 * K * C + 4 * K)
    return lat, ind, grp


def plain_write(src, path, opts, integrity=False):
    """The plain loop. With `integrity`, plus the integrity work mtok's format asks of a writer:
    an XXH64 checksum in every frame, the SHA-256 of every record's bytes (stored in front of its
    frame, and hashed into a digest of the whole), and the SHA-256 of the data file once closed."""
    import hashlib

    import lmdb
    import zstandard

    n = len(src)
    env = lmdb.open(path, map_size=max(1 << 30, 2 * n * (2 * K * C + 6 * K)))
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=integrity)
    content = hashlib.sha256()
    for lo in range(0, n, BATCH):
        with env.begin(write=True) as txn:
            for i in range(lo, min(lo + BATCH, n)):
                raw = src.latents[i].tobytes() + src.indices[i].tobytes() + src.groups[i].tobytes()
                if integrity:
                    digest = hashlib.sha256(raw).digest()
                    content.update(digest)
                    txn.put(plain_key(i), digest + cctx.compress(raw))
                else:
                    txn.put(plain_key(i), cctx.compress(raw))
    env.close()
    if integrity:
        from mtokcache.writer import _file_sha256
        _file_sha256(os.path.join(path, "data.mdb"))
    return n, None


def plain_write_checked(src, path, opts):
    return plain_write(src, path, opts, integrity=True)


def plain_open(path):
    import lmdb

    return lmdb.open(path, readonly=True, lock=False)


def plain_count(path):
    env = plain_open(path)
    try:
        return env.stat()["entries"]
    finally:
        env.close()


def plain_random(path, idx):
    import zstandard

    env = plain_open(path)
    dctx = zstandard.ZstdDecompressor()
    lat = None
    with env.begin(buffers=True) as txn:
        for i in idx:
            lat, ind, grp = plain_decode(dctx.decompress(txn.get(plain_key(i))))
    return len(idx), (idx[-1], lat)


def plain_sequential(path, n):
    import zstandard

    env = plain_open(path)
    dctx = zstandard.ZstdDecompressor()
    lat = None
    with env.begin(buffers=True) as txn:
        for i in range(n):
            lat, ind, grp = plain_decode(dctx.decompress(txn.get(plain_key(i))))
    return n, (n - 1, lat)


class PlainDataset:
    """Map-style: opens the environment in the process that first reads (each DataLoader worker)
    and returns torch tensors (latents as bfloat16, indices uint32, groups uint16), no label/id."""

    def __init__(self, path, n):
        self.path, self.n = path, n
        self.txn = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch
        import zstandard

        if self.txn is None:
            self.env = plain_open(self.path)
            self.txn = self.env.begin(buffers=True)
            self.dctx = zstandard.ZstdDecompressor()
        lat, ind, grp = plain_decode(self.dctx.decompress(self.txn.get(plain_key(i))))
        return {"latents": torch.from_numpy(lat.view(np.int16)).view(torch.bfloat16),
                "indices": torch.from_numpy(ind), "groups": torch.from_numpy(grp)}


def plain_loader(path, n):
    from torch.utils.data import DataLoader

    return drain(DataLoader(PlainDataset(path, n), batch_size=BATCH, num_workers=WORKERS), n, first_is=0)


# -- MosaicML Streaming (MDS) ------------------------------------------------------------------

MDS_COLUMNS = {"latents": "ndarray:uint16:%d,%d" % (K, C), "indices": "ndarray:uint32:%d" % K,
               "groups": "ndarray:uint16:%d" % K, "id": "str", "label": "int"}


def mds_write(src, path, opts):
    import streaming

    n = len(src)
    with streaming.MDSWriter(out=path, columns=MDS_COLUMNS, compression="zstd:%d" % ZSTD_LEVEL,
                             size_limit=opts["mds_size_limit"]) as w:
        for i in range(n):
            w.write({"latents": src.latents[i], "indices": src.indices[i], "groups": src.groups[i],
                     "id": src.ids[i], "label": src.label_list[i]})
    return n, None


def mds_shards(path):
    with open(os.path.join(path, "index.json")) as f:
        return json.load(f)["shards"]


def mds_count(path):
    return sum(s["samples"] for s in mds_shards(path))


def mds_cold(path):
    """The state the writer left: only the compressed shards. StreamingDataset decompresses each
    shard it touches into a raw .mds file beside it (timed)."""
    for s in mds_shards(path):
        if s.get("zip_data"):
            raw = os.path.join(path, s["raw_data"]["basename"])
            if os.path.exists(raw):
                os.remove(raw)


def mds_warm(path):
    """Every shard already decompressed on disk, as after a first epoch (not timed)."""
    import zstandard

    for s in mds_shards(path):
        raw = os.path.join(path, s["raw_data"]["basename"])
        if s.get("zip_data") and not os.path.exists(raw):
            with open(os.path.join(path, s["zip_data"]["basename"]), "rb") as i, open(raw, "wb") as o:
                zstandard.ZstdDecompressor().copy_stream(i, o)


def mds_dataset(path):
    import streaming

    return streaming.StreamingDataset(local=path, batch_size=BATCH, shuffle=False)


def each_index(ds, idx):
    """ds[i] for every i of idx (a peer's random phase); (count, probe) as the phases return."""
    s = None
    for i in idx:
        s = ds[i]
    return len(idx), (idx[-1], s["latents"])


def each_sample(ds, n):
    """Every sample of ds in its order (a peer's sequential phase)."""
    count, s = 0, None
    for s in ds:
        count += 1
    return count, (n - 1, s["latents"])


def mds_random(path, idx):
    return each_index(mds_dataset(path), idx)


def mds_sequential(path, n):
    return each_sample(mds_dataset(path), n)


def mds_loader(path, n):
    import streaming

    return drain(streaming.StreamingDataLoader(mds_dataset(path), batch_size=BATCH, num_workers=WORKERS), n,
                 first_is=0)


# -- LitData -----------------------------------------------------------------------------------

def lit_write(src, path, opts, level):
    from litdata.streaming.writer import BinaryWriter

    n = len(src)
    w = BinaryWriter(path, chunk_bytes=opts["lit_chunk_bytes"], compression="zstd:%d" % ZSTD_LEVEL,
                     compression_level=level)
    for i in range(n):
        w.add_item(i, {"latents": src.latents[i], "indices": src.indices[i], "groups": src.groups[i],
                       "id": src.ids[i], "label": src.label_list[i]})
    w.done()
    w.merge()
    return n, None


def lit_write_batch(src, path, opts):
    return lit_write(src, path, opts, "batch")


def lit_write_sample(src, path, opts):
    return lit_write(src, path, opts, "sample")


def lit_count(path):
    with open(os.path.join(path, "index.json")) as f:
        return sum(c["chunk_size"] for c in json.load(f)["chunks"])


def lit_dataset(path, **kwargs):
    import litdata

    return litdata.StreamingDataset(input_dir=path, **kwargs)


def lit_random(path, idx):
    # batch_decode=0: deserialize the item asked for only. The default ("auto") deserializes an
    # aligned window of 256 items around it for every ds[i]: here 2x slower with 256-item frames,
    # 200x with per-item frames.
    return each_index(lit_dataset(path, batch_decode=0), idx)


def lit_sequential(path, n):
    return each_sample(lit_dataset(path), n)


def lit_loader(path, n):
    import litdata

    return drain(litdata.StreamingDataLoader(lit_dataset(path), batch_size=BATCH, num_workers=WORKERS), n,
                 first_is=0)


# -- DataLoader helper ---------------------------------------------------------------------------

def drain(loader, n, first_is=None):
    """Iterates a DataLoader to its end; the workers are joined (and so reaped, their CPU time
    counted in RUSAGE_CHILDREN) before this returns. With first_is, the first batch's first
    sample is compared with that record of the source."""
    import multiprocessing

    count, probe = 0, None
    it = iter(loader)
    for b in it:
        if probe is None and first_is is not None:
            probe = (first_is, b["latents"][0])
        count += len(b["latents"])
    del it, loader
    gc.collect()
    multiprocessing.active_children()  # joins any finished child
    return count, probe


# -- rows --------------------------------------------------------------------------------------

class Row:
    """One line of the table: a system (or a variant of one) and the functions of its phases.
    Rows with the same `store` read the same written directory; the first of them writes it."""

    def __init__(self, name, module, store, legend, write=None, count=None, random=None, sequential=None,
                 loader=None, prepare=None):
        self.name, self.module, self.store, self.legend = name, module, store, legend
        self.fns = {"write": write, "random": random, "sequential": sequential, "loader": loader}
        self.count = count
        self.prepare = prepare  # run (untimed) before each read phase, in the measuring process

    def phases(self):
        return [p for p in PHASES if self.fns[p] is not None]


ROWS = [
    Row("mtokcache", "mtokcache", "mtok",
        "ours. Writer(path, settings, latent_dtype='bf16') with its defaults (WRITER_DEFAULTS): a zstd-3 "
        "frame with content checksum per record, LMDB commits with fsync, the shard sealed (SHA-256) at finish. "
        "Reads check every frame (checksum, declared size), header and layout, group ids < K, and "
        "return ids, labels and metadata. random: open(latent_format='raw')[i], uint16 latents; sequential: "
        "batch() of 256; DataLoader: CacheDataset(latent_format='raw', index_dtype='int32'), map-style, "
        "sequential sampler, batch 256 "
        "(bf16 latents, int32 indices/groups, ids, labels)",
        write=mtok_write, count=mtok_count, random=mtok_random, sequential=mtok_sequential, loader=mtok_loader),
    Row("mtokcache f32", "mtokcache", "mtok",
        "the same cache, open() with the default latent_format='f32': latents decoded to float32",
        random=mtok_random_f32),
    Row("mtokcache iterable", "mtokcache", "mtok",
        "the same cache, CacheIterableDataset(batch_size=256, batched=True, latent_format='raw', index_dtype='int32', "
        "seed=0) in "
        "DataLoader(batch_size=None): whole batches in the shuffled stream order, no per-sample collation",
        loader=mtok_loader_iterable),
    Row("plain", "lmdb", "plain",
        "py-lmdb + zstandard by hand, no checks: one LMDB value per record (key >Q index, value zstd-3 of "
        "latents+indices+groups), a write transaction per 256 records (lmdb.open defaults: synced). Reads: "
        "one read transaction, np.frombuffer views. Stores and returns no id or label. DataLoader: a map-style "
        "Dataset returning torch tensors, default collate",
        write=plain_write, count=plain_count, random=plain_random, sequential=plain_sequential, loader=plain_loader),
    Row("mtokcache level 1", "mtokcache", "mtok1",
        "the mtokcache writer with compression_level=1 (else its defaults): what a faster default level "
        "would buy, and cost on disk", write=mtok_write_level1, count=mtok_count),
    Row("mtokcache encode only", "mtokcache", "encode",
        "no storage: per record the header, SHA-256 of the payload, byte planes and the zstd-3 frame with "
        "checksum (the writer's own functions), and SHA-256 over the frames (what sealing hashes); a floor "
        "under the writer's CPU with the format's default encoding", write=mtok_encode_only, count=encode_only_count),
    Row("plain + integrity", "lmdb", "plain-checked",
        "the plain loop doing the integrity work the format asks for: frames with XXH64 checksums "
        "(write_checksum=True), a SHA-256 of each record's bytes stored with it and hashed into a digest of "
        "the whole, the SHA-256 of the data file at the end", write=plain_write_checked, count=plain_count),
    Row("streaming (MDS)", "streaming", "mds",
        "MosaicML Streaming: MDSWriter(compression='zstd:3', size_limit=SIZE), whole shards compressed; "
        "StreamingDataset(local=dir, batch_size=256, shuffle=False), ds[i] / iteration / StreamingDataLoader. "
        "Cold: the shards as written, so each read phase includes decompressing every shard it touches to a "
        "raw .mds file on disk. No hash checks (none configured). Returns numpy arrays, id, label",
        write=mds_write, count=mds_count, random=mds_random, sequential=mds_sequential, loader=mds_loader,
        prepare=mds_cold),
    Row("streaming (MDS) warm", "streaming", "mds",
        "the same dataset with every shard already decompressed to raw .mds files beside the .zstd ones "
        "(as after a first epoch; about 1.4x the disk)",
        random=mds_random, sequential=mds_sequential, loader=mds_loader, prepare=mds_warm),
    Row("litdata", "litdata", "lit",
        "LitData: BinaryWriter(chunk_bytes=CHUNK, compression='zstd:3') add_item/done/merge, i.e. its "
        "default in-file 'batch' compression (one zstd frame per 256 items); StreamingDataset(input_dir=dir), "
        "ds[i] with batch_decode=0 (one item deserialized; its default deserializes a window of 256) / "
        "iteration / StreamingDataLoader with the defaults. No checks. Returns numpy arrays, id, label",
        write=lit_write_batch, count=lit_count, random=lit_random, sequential=lit_sequential, loader=lit_loader),
    Row("litdata per-sample", "litdata", "lit1",
        "the same with compression_level='sample': one zstd frame per item (random reads decompress one record)",
        write=lit_write_sample, count=lit_count, random=lit_random, sequential=lit_sequential, loader=lit_loader),
]
ROW_BY_NAME = {r.name: r for r in ROWS}
SYSTEMS = {"mtokcache": "mtokcache", "plain": "plain", "streaming": "streaming", "litdata": "litdata"}


def system_of(row):
    return row.name.split(" ")[0]


# -- the measuring process (--child) ---------------------------------------------------------

def cpu_seconds():
    """User + system CPU time of this process (all threads; process_time, which is exact where
    getrusage's split into user and system can be off by tens of milliseconds) and of its reaped
    children (getrusage)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def child_main(spec):
    """Runs one measurement and prints its result as JSON: wall and CPU seconds of the measured
    section only, the records it handled, and a spot check of the data."""
    warnings.filterwarnings("ignore")
    row, phase = ROW_BY_NAME[spec["row"]], spec["phase"]
    path, n = spec["path"], spec["records"]
    importlib.import_module("mtokcache")
    if row.module != "mtokcache":
        importlib.import_module(row.module)
    if row.module == "streaming":
        from streaming.base.util import clean_stale_shared_memory
        clean_stale_shared_memory()
    if phase == "loader":
        import torch.utils.data  # noqa: F401
        if row.module == "mtokcache":
            import mtokcache.datasets  # noqa: F401
    src = Source(spec["src"])
    fn = row.fns[phase]
    if phase == "write":
        src.touch()
        args = (src, path, spec["opts"])
    else:
        if row.prepare:
            row.prepare(path)
        warm_page_cache(path)
        args = (path, src.random) if phase == "random" else (path, n)
    gc.collect()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    count, probe = fn(*args)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    # Untimed checks: every record is there, and a record read back equals the source's.
    expected = len(src.random) if phase == "random" else n
    if phase == "write":
        count = row.count(path)
    problems = []
    if count != expected:
        problems.append("%d records, expected %d" % (count, expected))
    if probe is not None and not np.array_equal(latents_bits(probe[1]).reshape(K, C), src.latents[probe[0]]):
        problems.append("record %d's latents differ from the source" % probe[0])
    print(RESULT_MARK + json.dumps({"records": count, "wall_s": wall, "cpu_s": cpu, "problems": problems,
                                    "notes": implementation_notes(row, phase)}))


def warm_page_cache(path):
    """Reads every file under `path` once, untimed: each system's read phases start with its
    files in the page cache (as they are right after writing, unless the machine evicted some
    meanwhile, which made the first process to read them pay for it)."""
    for d, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def implementation_notes(row, phase):
    """Which of mtokcache's code paths this process ran (the package changes under this tool)."""
    if row.module != "mtokcache":
        return {}
    import mtokcache

    notes = {}
    if phase == "write" and row.fns["write"] is mtok_encode_only:
        from mtokcache import _accel
        notes["encode_native"] = _accel.native() is not None
    elif phase == "write":
        notes["append_many"] = hasattr(mtokcache.Writer, "append_many")
    else:
        try:
            from mtokcache import _accel
            notes["native"] = _accel.native() is not None
        except ImportError:
            notes["native"] = False
    return notes


def run_child(args, row, phase, path, src_dir, opts):
    """Runs one measurement in a fresh process; returns its figures (or an error)."""
    spec = {"row": row.name, "phase": phase, "path": path, "src": src_dir, "records": args.records, "opts": opts}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                           capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after %d s" % args.timeout}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["exit status %d" % p.returncode])[-1]
        return {"error": tail[:300]}
    r = json.loads(lines[-1][len(RESULT_MARK):])
    # The whole process as the parent sees it (imports, loading, checks included): a cross-check
    # that the measured section's CPU time took in the workers'.
    r["process_wall_s"] = time.perf_counter() - t0
    r["process_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return r


# -- the driver --------------------------------------------------------------------------------

def log(msg):
    print(msg, file=sys.stderr, flush=True)


DISTRIBUTIONS = {"numpy": "numpy", "lmdb": "lmdb", "zstandard": "zstandard", "torch": "torch",
                 "streaming": "mosaicml-streaming", "litdata": "litdata", "zstd": "zstd"}


def available(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version_of(module):
    if module == "mtokcache":
        import mtokcache
        return mtokcache.__version__
    try:
        return importlib.metadata.version(DISTRIBUTIONS[module])
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine():
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(mem, 1) if mem else None, "os": platform.platform(),
            "python": platform.python_version()}


def versions():
    v = {m: version_of(m) for m in ("mtokcache", "numpy", "lmdb", "zstandard", "torch", "streaming", "litdata", "zstd")}
    try:
        import zstandard
        v["libzstd (zstandard)"] = zstandard.ZSTD_VERSION and ".".join(map(str, zstandard.ZSTD_VERSION))
    except ImportError:
        pass
    try:
        v["mtok repo"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                                        text=True).stdout.strip()
    except OSError:
        pass
    return v


def dir_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total


def summarize(runs):
    """Median rates over the repeats (records/s and records per CPU-second)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"], "runs": runs}
    return {"rate": statistics.median(r["records"] / r["wall_s"] for r in ok),
            "rate_cpu": statistics.median(r["records"] / r["cpu_s"] for r in ok),
            "problems": sorted({p for r in ok for p in r["problems"]}), "runs": runs}


def measure_rows(args, rows, src_dir, opts, stores_dir):
    """Every phase of every row, --repeat rounds each; returns {row: {phase: summary}} and the
    bytes each store took on disk. Phase by phase, and within a phase round by round across the
    rows (A, B, C, then A, B, C again): a change in the machine's load between rounds then moves
    every row of the round alike, and ratios() compares rows within a round."""
    results = {row.name: {} if available(row.module) else "not installed" for row in rows}
    runs = {(row.name, phase): [] for row in rows for phase in row.phases()}
    written, sizes = {}, {}
    for at, phase in enumerate(PHASES):
        active = [row for row in rows if isinstance(results[row.name], dict) and phase in row.phases()]
        for r in range(args.repeat):
            for row in active:
                store_dir = os.path.join(stores_dir, row.store)
                os.makedirs(store_dir, exist_ok=True)
                path = os.path.join(store_dir, "w%d" % r) if phase == "write" else written.get(row.store)
                if path is None:
                    runs[(row.name, phase)].append({"error": "nothing written"})
                    continue
                res = run_child(args, row, phase, path, src_dir, opts)
                runs[(row.name, phase)].append(res)
                if "error" in res:
                    log("  %-22s %-10s #%d: error: %s" % (row.name, phase, r + 1, res["error"]))
                else:
                    log("  %-22s %-10s #%d: %9.0f rec/s %9.0f rec/CPU-s (%.1f s)%s"
                        % (row.name, phase, r + 1, res["records"] / res["wall_s"], res["records"] / res["cpu_s"],
                           res["wall_s"], "  PROBLEM: " + "; ".join(res["problems"]) if res["problems"] else ""))
                if phase == "write":
                    if row.store not in written and "error" not in res:
                        written[row.store] = path  # the copy every read phase reads
                        sizes[row.store] = dir_bytes(path)
                    else:
                        shutil.rmtree(path, ignore_errors=True)
        for row in active:
            results[row.name][phase] = summarize(runs[(row.name, phase)])
        # Free the disk of the stores that no later phase reads.
        if not args.keep:
            later = {row.store for row in rows for p in PHASES[at + 1:] if p in row.phases()}
            for store in {row.store for row in rows} - later:
                shutil.rmtree(os.path.join(stores_dir, store), ignore_errors=True)
    return results, sizes


def writer_defaults():
    """mtokcache.Writer's defaults that shape what it writes and how durably."""
    import mtokcache

    params = inspect.signature(mtokcache.Writer.__init__).parameters
    names = ("records_per_chunk", "compression_level", "shuffle", "commit_every", "commit_seconds", "shard_cap_bytes")
    return ", ".join("%s=%r" % (n, params[n].default) for n in names if n in params)


def used(results, row, note):
    """The values a note took in a row's measurements (e.g. whether the C extension ran)."""
    res = results.get(row)
    if not isinstance(res, dict):
        return set()
    return {r["notes"][note] for s in res.values() for r in s.get("runs", []) if note in r.get("notes", {})}


def legend(row, args, results):
    text = row.legend.replace("SIZE", str(args.mds_size_limit)).replace("CHUNK", repr(args.lit_chunk_bytes))
    if row.module == "mtokcache":
        text = text.replace("WRITER_DEFAULTS", writer_defaults())
        notes = []
        many = used(results, row.name, "append_many")
        if many:
            notes.append("write: " + " / ".join("Writer.append_many, 256 records a call" if m else
                                                "Writer.append per record (this mtokcache has no append_many)"
                                                for m in sorted(many, reverse=True)))
        encode = used(results, row.name, "encode_native")
        if encode:
            notes.append("encoding: " + " / ".join("C extension" if m else "pure Python"
                                                  for m in sorted(encode, reverse=True)))
        native = used(results, row.name, "native")
        if native:
            notes.append("reads: " + " / ".join("C extension" if m else "pure Python"
                                                for m in sorted(native, reverse=True)))
        if notes:
            text = "[%s] %s" % ("; ".join(notes), text)
    return text


def fmt(v):
    return "-" if v is None else "{:,.0f}".format(v)


def cell(results, row, phase, key):
    res = results.get(row)
    if res is None:
        return None, "-"
    if isinstance(res, str):
        return None, res
    s = res.get(phase)
    if s is None:
        return None, "-"
    if "error" in s:
        return None, "error"
    return s[key], fmt(s[key]) + ("!" if s["problems"] else "")


def print_table(results, rows):
    heads = []
    for p in PHASES:
        heads += ["%s rec/s" % PHASE_TITLES[p], "%s rec/CPU-s" % PHASE_TITLES[p]]
    width = max(len(r.name) for r in rows) + 2
    cols = [max(len(h), 13) for h in heads]
    print("%-*s" % (width, "system") + "".join("%*s" % (w + 2, h) for w, h in zip(cols, heads)))
    for row in rows:
        texts = []
        if isinstance(results.get(row.name), str):
            print("%-*s  %s" % (width, row.name, results[row.name]))
            continue
        for p in PHASES:
            texts += [cell(results, row.name, p, "rate")[1], cell(results, row.name, p, "rate_cpu")[1]]
        print("%-*s" % (width, row.name) + "".join("%*s" % (w + 2, t) for w, t in zip(cols, texts)))


def rate_of(run, key):
    return None if "error" in run else run["records"] / (run["cpu_s"] if key == "rate_cpu" else run["wall_s"])


def paired(results, a, b, phase, key):
    """The median over rounds of row a's rate / row b's in the same round (measure_rows runs the
    rows of a round one after another), or None."""
    runs = []
    for row in (a, b):
        res = results.get(row)
        s = res.get(phase) if isinstance(res, dict) else None
        if s is None or "runs" not in s:
            return None
        runs.append(s["runs"])
    pairs = [(rate_of(x, key), rate_of(y, key)) for x, y in zip(*runs)]
    pairs = [x / y for x, y in pairs if x and y]
    return statistics.median(pairs) if pairs else None


def ratios(results, rows):
    """mtokcache against plain and against the best peer (the best by its median), per phase, per
    CPU-second and wall: medians of the per-round ratios."""
    out = {}
    peers = [r.name for r in rows if system_of(r) in ("streaming", "litdata") and isinstance(results.get(r.name), dict)]
    for phase in PHASES:
        entry = {}
        # The map-style row, and for the DataLoader the iterable one too ("iterable_" figures).
        for row, prefix in (("mtokcache", ""), ("mtokcache iterable", "iterable_")):
            if prefix and phase != "loader":
                continue
            for key in ("rate_cpu", "rate"):
                v = paired(results, row, "plain", phase, key)
                if v:
                    entry[prefix + "plain_" + key] = v
                best = max(((cell(results, p, phase, key)[0], p) for p in peers if cell(results, p, phase, key)[0]),
                           default=None)
                v = best and paired(results, row, best[1], phase, key)
                if v:
                    entry[prefix + "best_peer_" + key] = v
                    if not prefix:
                        entry["best_peer_" + key + "_row"] = best[1]
        out[phase] = entry
    # The writer against the plain loop doing the same integrity work, and the floor under it.
    for key in ("rate_cpu", "rate"):
        for a, b, name in (("mtokcache", "plain + integrity", "checked_plain_"),
                           ("mtokcache", "mtokcache encode only", "encode_only_"),
                           ("mtokcache encode only", "plain", "floor_plain_")):
            v = paired(results, a, b, "write", key)
            if v:
                out["write"][name + key] = v
    return out


def print_ratios(rat):
    def x(v):
        return "-" if v is None else "%.2fx" % v

    for key, title in (("rate_cpu", "per CPU-second"), ("rate", "wall clock")):
        print("mtokcache / plain (%s):" % title)
        print("  " + ", ".join("%s %s" % (PHASE_TITLES[p], x(rat[p].get("plain_" + key))) for p in PHASES)
              + "; DataLoader iterable %s" % x(rat["loader"].get("iterable_plain_" + key)))
        print("mtokcache / best peer (%s):" % title)
        print("  " + ", ".join("%s %s (%s)" % (PHASE_TITLES[p], x(rat[p].get("best_peer_" + key)),
                                              rat[p].get("best_peer_" + key + "_row", "-")) for p in PHASES)
              + "; DataLoader iterable %s" % x(rat["loader"].get("iterable_best_peer_" + key)))
        w = rat["write"]
        print("writer (%s): mtokcache / plain + integrity %s; mtokcache encode only (no storage) / plain %s; "
              "mtokcache / its encode only %s" % (title, x(w.get("checked_plain_" + key)), x(w.get("floor_plain_" + key)),
                                                  x(w.get("encode_only_" + key))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is reported")
    ap.add_argument("--cache", help="take the records from this mtok cache (else make them with mtok synth-cache)")
    ap.add_argument("--mtok", default=default_mtok(), help="the mtok binary for synth-cache (default: %(default)s)")
    ap.add_argument("--workdir", help="where to write (default: a fresh directory under /tmp)")
    ap.add_argument("--keep", action="store_true", help="leave what was written in the work directory")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--only", help="comma-separated systems: " + ",".join(SYSTEMS))
    ap.add_argument("--mds-size-limit", type=int, default=1 << 26,
                    help="MDSWriter size_limit, uncompressed bytes a shard (default %(default)s, its own default)")
    ap.add_argument("--lit-chunk-bytes", default="64MB", help="LitData chunk_bytes (default %(default)s)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds one measurement may take")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.records < 1 or args.repeat < 1:
        raise SystemExit("--records and --repeat must be positive")
    rows = ROWS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(SYSTEMS)
        if unknown:
            raise SystemExit("unknown systems %s; choose from %s" % (sorted(unknown), ",".join(SYSTEMS)))
        rows = [r for r in ROWS if system_of(r) in wanted]

    started = time.perf_counter()
    own_workdir = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="bench_python_", dir="/tmp") if own_workdir else args.workdir
    os.makedirs(workdir, exist_ok=True)
    stores_dir = os.path.join(workdir, "stores")
    try:
        src_dir, origin = make_source(args, workdir)
        with open(os.path.join(src_dir, "settings.json")) as f:
            settings = json.load(f)
        opts = {"settings": settings, "mds_size_limit": args.mds_size_limit, "lit_chunk_bytes": args.lit_chunk_bytes}
        log("work directory %s; measuring" % workdir)
        results, sizes = measure_rows(args, rows, src_dir, opts, stores_dir)
    finally:
        if not args.keep:
            for name in ("src", "stores", "synth"):
                shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
            if own_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started

    mach, vers = machine(), versions()
    print("machine: %s, %d cores, %s GiB; %s; Python %s" % (mach["cpu"], mach["cores"], mach["memory_gib"], mach["os"],
                                                         mach["python"]))
    print("versions: " + ", ".join("%s %s" % kv for kv in vers.items()))
    print("records: %d (%s): latents [%d,%d] bf16, indices [%d] u32, groups [%d] u16, id, label; zstd level %d"
          % (args.records, origin, K, C, K, K, ZSTD_LEVEL))
    print("random: %d indices (seed 0); DataLoader: %d workers, batch %d; median of %d run(s); each in a fresh "
          "process, CPU = user + system of it and its reaped workers; ratios: medians of per-round ratios" % (min(args.records, RANDOM_MAX), WORKERS,
                                                                        BATCH, args.repeat))
    print()
    print_table(results, rows)
    print("(- not measured for that row; ! a spot check failed, see the JSON)")
    print()
    rat = ratios(results, rows)
    print_ratios(rat)
    print()
    print("on disk: " + ", ".join("%s %.0f B/record" % (store, b / args.records) for store, b in sizes.items()
                                  if store != "encode"))  # the encode-only row stores nothing
    print()
    print("legend:")
    for row in rows:
        print("  %-22s %s" % (row.name, legend(row, args, results)))
    print()
    print("total time %.0f s" % elapsed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mach, "versions": vers, "records": args.records, "origin": origin,
                       "repeat": args.repeat, "random_reads": min(args.records, RANDOM_MAX), "workers": WORKERS,
                       "batch": BATCH, "zstd_level": ZSTD_LEVEL, "mds_size_limit": args.mds_size_limit,
                       "lit_chunk_bytes": args.lit_chunk_bytes,
                       "bytes_on_disk": sizes, "results": results, "ratios": rat, "elapsed_s": elapsed,
                       "legend": {r.name: legend(r, args, results) for r in rows}}, f, indent=1)


if __name__ == "__main__":
    main()
