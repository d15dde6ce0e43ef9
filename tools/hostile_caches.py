#!/usr/bin/env python3
"""Hostile and damaged caches against every reader and writer, in Swift and in Python.

    .venv/bin/python tools/hostile_caches.py [--mtok .build/debug/mtok] [--flips 200] [--seed 1]

Builds a small real cache with `mtok synth-cache`, then, each in a fresh copy: caches crafted
as an attacker or a careless producer would make them (a leaf node claiming 2 GiB, swapped id
index entries, a frame without checksum, a manifest that names the other shuffle, a manifest
that is a FIFO or a link to /dev/zero, a shard link to a device, a truncated shard, nesting past
the parsers' bound, links planted where a writer writes), and random single-byte flips of the
shard file, sealed and unsealed. Each case runs `mtok info`, `verify`, `verify --deep`, `get`
(by index and by id, every record), `stream`, `synth-cache` continuing the cache where a writer
is the target, and the Python package (open, every record, get by id, stream), each under a
timeout and an address-space limit, with its peak memory measured (GNU time). A flip that
changes a record must be refused by the reads of that record; a read that returns bytes other
than the ones written is a silent wrong read.

Exits 1 if any run died by a signal, hung, passed the memory bound, changed a file outside the
cache, or read wrong data silently. Prints, per case, what every reader answered, and for the
flips the share caught by fast verify, by deep verify and by reads. Needs numpy, lmdb and
zstandard (tools/requirements-test.txt) and GNU time (/usr/bin/time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TIMEOUT = 60
ADDRESS_SPACE = 8 << 30  # per run; a reader that allocated without bound would die here
RECORDS = 24
SHAPE = ["--tokens", "64", "--channels", "16", "--records-per-chunk", "4", "--seed", "3"]

PY_READER = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[2])
import mtokcache
out = {"open": None, "records": {}, "ids": {}, "stream": None}
try:
    c = mtokcache.open(sys.argv[1])
    out["open"] = "ok"
except mtokcache.CacheError as e:
    out["open"] = "refused: " + e.kind
    print(json.dumps(out)); sys.exit(0)
for i in range(len(c)):
    try:
        out["records"][i] = hashlib.sha256(c.payload(i)).hexdigest()
    except mtokcache.CacheError as e:
        out["records"][i] = "refused: " + e.kind
for id in json.loads(sys.argv[3]):
    try:
        out["ids"][id] = c.get(id)["id"]
    except KeyError:
        out["ids"][id] = "absent"
    except mtokcache.CacheError as e:
        out["ids"][id] = "refused: " + e.kind
try:
    out["stream"] = sum(len(b["ids"]) for b in c.stream(0, 1, 0, 0, batch_size=8))
except mtokcache.CacheError as e:
    out["stream"] = "refused: " + e.kind


def digest(r):
    h = hashlib.sha256()
    for k in sorted(r):
        v = r[k]
        h.update(k.encode() + (v.dtype.str.encode() + repr(v.shape).encode() + v.tobytes() if hasattr(v, "tobytes")
                               else repr(v).encode()))
    return h.hexdigest()


# Decoded records and batches, compared between the C extension and the pure-Python code.
out["decoded"], out["batches"] = {}, []
for i in range(len(c)):
    try:
        out["decoded"][i] = digest(c[i])
    except mtokcache.CacheError as e:
        out["decoded"][i] = "refused: " + e.kind
for lo in range(0, len(c), 8):
    try:
        out["batches"].append(digest(c.batch(range(lo, min(lo + 8, len(c))))))
    except mtokcache.CacheError as e:
        out["batches"].append("refused: " + e.kind)
print(json.dumps(out))
"""


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(argv, env=None):
    """Runs argv under GNU time (with `env` added to the environment); returns (status, stdout,
    stderr, peak KB). status: an exit code, "signal N" or "hung"."""
    try:
        p = subprocess.run(["/usr/bin/time", "-f", "MTOK-MAXRSS %M"] + argv, capture_output=True, text=True,
                           timeout=TIMEOUT, preexec_fn=limit_memory, stdin=subprocess.DEVNULL,
                           env=None if env is None else dict(os.environ, **env))
    except subprocess.TimeoutExpired:
        return "hung", "", "", 0
    lines = p.stderr.splitlines()
    peak = next((int(x.split()[1]) for x in lines if x.startswith("MTOK-MAXRSS")), 0)
    signalled = next((x for x in lines if x.startswith("Command terminated by signal")), None)
    stderr = "\n".join(x for x in lines if not x.startswith(("MTOK-MAXRSS", "Command terminated", "Command exited")))
    status = "signal " + signalled.split()[-1] if signalled else p.returncode
    return status, p.stdout, stderr, peak


class Harness:
    def __init__(self, mtok, python, work):
        self.mtok, self.python, self.work = mtok, python, work
        self.failures = []
        self.peak = 0

    def note(self, case, what, status, peak):
        self.peak = max(self.peak, peak)
        if status == "hung" or str(status).startswith("signal") or status == 137:
            self.failures.append("%s: %s %s" % (case, what, status))

    def swift(self, case, *args):
        status, out, err, peak = run([self.mtok] + list(args))
        self.note(case, "mtok " + " ".join(args[:1] + args[2:]), status, peak)
        return status, out, err

    def python_reads(self, case, cache, ids):
        """What mtokcache reads, with its C extension (when built) and with its pure-Python code,
        which must read the same (the first refuses nothing the second takes, and the reverse)."""
        got = {}
        for native in ("1", "0"):
            status, out, err, peak = run([self.python, "-c", PY_READER, cache, os.path.join(ROOT, "tools", "python"),
                                          json.dumps(ids)], {"MTOKCACHE_NATIVE": native})
            self.note(case, "python reads", status, peak)
            if status != 0:
                self.failures.append("%s: python reader (native %s) exited %s: %s" % (case, native, status, err[-300:]))
                return None
            got[native] = json.loads(out)
        if got["1"] != got["0"]:
            diff = {k: (got["1"][k], got["0"][k]) for k in got["1"] if got["1"][k] != got["0"][k]}
            self.failures.append("%s: the C extension and the pure-Python reader differ: %s" % (case, str(diff)[:400]))
        return got["1"]


def snapshot(folder):
    """Every file under `folder` with its bytes' SHA-256 (links as their targets' text)."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            out[p] = os.readlink(p) if os.path.islink(p) else hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def shard_path(cache):
    return os.path.join(cache, "shards", "shard-00000.mdb")


def writable(path):
    os.chmod(path, 0o644)
    return path


def edit_manifest(cache, change):
    path = os.path.join(cache, "manifest.json")
    m = json.load(open(path))
    change(m)
    json.dump(m, open(path, "w"))


def unseal(cache):
    """The manifest of a cache whose writer was killed: the shard listed as still being written."""
    def change(m):
        for s in m["shards"]:
            s["sealed"] = False
            s.pop("sha256", None)
        m["complete"] = False
        m["content_digest"] = None
    edit_manifest(cache, change)


def lmdb_edit(cache, edit):
    import lmdb
    env = lmdb.open(writable(shard_path(cache)), subdir=False, max_dbs=4, lock=False)
    with env.begin(write=True) as txn:
        edit(env, txn)
    env.close()


# Each case makes a hostile cache from a copy of the base; `outside` is a folder outside it.
def forged_node(cache, outside):
    import lmdb
    env = lmdb.open(shard_path(cache), subdir=False, readonly=True, lock=False, max_dbs=4)
    with env.begin() as t:
        size = len(t.get(struct.pack(">Q", 1), db=env.open_db(b"records", txn=t, create=False)))
    env.close()
    data = bytearray(open(shard_path(cache), "rb").read())
    at = data.find(struct.pack("<I", size) + b"\x01\x00\x08\x00" + struct.pack(">Q", 1))
    assert at >= 0, "node of chunk 1 not found"
    data[at + 2:at + 4] = b"\xff\x7f"  # 2 GiB
    open(writable(shard_path(cache)), "wb").write(data)


def swapped_ids(cache, outside):
    def edit(env, txn):
        db = env.open_db(b"ids", txn=txn)
        keys = [k for k, _ in txn.cursor(db=db)][2:4]
        a, b = (txn.get(k, db=db) for k in keys)
        txn.put(keys[0], b, db=db)
        txn.put(keys[1], a, db=db)
    lmdb_edit(cache, edit)


def rewrite_frame(cache, chunk_no, slot, remake):
    """Replaces one frame of a chunk of shard 0 by `remake(payload)` (the new frame's bytes)."""
    import zstandard

    def edit(env, txn):
        db = env.open_db(b"records", txn=txn)
        key = struct.pack(">Q", chunk_no)
        chunk = bytes(txn.get(key, db=db))
        n = struct.unpack_from("<I", chunk)[0]
        offs = struct.unpack_from("<%dI" % (n + 1), chunk, 4)
        base = 4 * (n + 2)
        frames = [chunk[base + offs[i]:base + offs[i + 1]] for i in range(n)]
        frames[slot] = remake(zstandard.ZstdDecompressor().decompress(frames[slot]))
        ends = [0]
        for f in frames:
            ends.append(ends[-1] + len(f))
        txn.put(key, struct.pack("<%dI" % (n + 2), n, *ends) + b"".join(frames), db=db)
    lmdb_edit(cache, edit)


def frame_without_checksum(cache, outside=None):
    """Record 5 (chunk 1, slot 1) recompressed without the content checksum, one byte then altered."""
    import zstandard

    def remake(payload):
        raw = bytearray(zstandard.ZstdCompressor(write_checksum=False, write_content_size=True).compress(payload))
        raw[-3] ^= 1
        return bytes(raw)
    rewrite_frame(cache, 1, 1, remake)


def other_shuffle(cache, outside):
    lmdb_edit(cache, lambda env, txn: txn.delete(b"shuffle", db=env.open_db(b"meta", txn=txn)))
    edit_manifest(cache, lambda m: m["compression"].update(shuffle="none"))


def manifest_fifo(cache, outside):
    os.remove(os.path.join(cache, "manifest.json"))
    os.mkfifo(os.path.join(cache, "manifest.json"))


def manifest_dev_zero(cache, outside):
    os.remove(os.path.join(cache, "manifest.json"))
    os.symlink("/dev/zero", os.path.join(cache, "manifest.json"))


def shard_dev_zero(cache, outside):
    os.remove(shard_path(cache))
    os.symlink("/dev/zero", shard_path(cache))


def truncated_shard(cache, outside):
    path = writable(shard_path(cache))
    os.truncate(path, os.path.getsize(path) // 2)


def deep_manifest(cache, outside):
    nested = 0
    for _ in range(200):
        nested = [nested]
    edit_manifest(cache, lambda m: m.update(settings=nested))


def fractional_shape(cache, outside):
    """Record 5's header: the first tensor's shape made fractional (rewritten with a new length)."""
    import zstandard

    def remake(stored):
        hlen = struct.unpack_from("<Q", stored)[0]
        header = json.loads(stored[8:8 + hlen])
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"][0] = header[name]["shape"][0] - 0.5
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        payload = struct.pack("<Q", len(text)) + text + stored[8 + hlen:]
        return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(payload)
    rewrite_frame(cache, 1, 1, remake)


def large_manifest(cache, outside):
    """A valid manifest of about 30 MB (a million class names): every reader must read it in
    time linear in its size, within the memory bound."""
    edit_manifest(cache, lambda m: m.update(classes=["class-%07d-of-a-very-large-label-set" % i for i in range(1000000)]))


def planted_shard_link(cache, outside):
    """For the writer: the shard being written swapped for a link to a copy outside."""
    unseal(cache)
    copy = os.path.join(outside, "copy.mdb")
    shutil.copy(shard_path(cache), copy)
    os.remove(shard_path(cache))
    os.symlink(copy, shard_path(cache))


def planted_lock_link(cache, outside):
    os.remove(os.path.join(cache, ".writer.lock"))  # the finished writer's, replaced by a link
    os.symlink(os.path.join(outside, "created-by-writer"), os.path.join(cache, ".writer.lock"))


CASES = [forged_node, swapped_ids, frame_without_checksum, other_shuffle, fractional_shape, manifest_fifo,
         manifest_dev_zero, shard_dev_zero, truncated_shard, deep_manifest, large_manifest, planted_shard_link,
         planted_lock_link]


def found_fault(result):
    """Whether `mtok verify --json` found a fault (an unfinished cache, exit 2, has none)."""
    status, out, _ = result
    if status in (0, 2):
        return False
    try:
        return bool(json.loads(out)["faults"])
    except (ValueError, KeyError):
        return True  # refused outright


def wrong_records(py, truth):
    """Records the Python reader returned with other bytes than were written (a digest, not a refusal)."""
    return [i for i, v in py["records"].items() if len(v) == 64 and v != truth[int(i)][1]]


def swift_reads(h, case, cache, truth):
    """mtok get of every record by index: 'ok' (same bytes), 'WRONG' (other bytes) or the exit status."""
    answers = {}
    out = os.path.join(h.work, "got.safetensors")
    for i in range(len(truth)):
        if os.path.exists(out):
            os.remove(out)
        status, _, _ = h.swift(case, "get", cache, "--index", str(i), "--out", out)
        if status == 0:
            same = hashlib.sha256(open(out, "rb").read()).hexdigest() == truth[i][1]
            answers[i] = "ok" if same else "WRONG"
        else:
            answers[i] = status
    return answers


def examine(h, case, cache, outside, truth, reads=True):
    """Every reader on `cache`; returns a summary. Silent wrong reads are failures."""
    before = snapshot(outside)
    summary = {}
    for args in (["info", cache], ["verify", cache], ["verify", cache, "--deep"], ["stream", cache]):
        summary[" ".join(args[:1] + args[2:])] = h.swift(case, *args)[0]
    if reads:
        got = swift_reads(h, case, cache, truth)
        summary["get (index)"] = sorted(set(map(str, got.values())))
        ids = {}
        for i, (rid, _) in enumerate(truth):
            status, out, _ = h.swift(case, "get", cache, rid, "--json")
            if status == 0:
                ids[rid] = json.loads(out).get("id")
                if ids[rid] != rid:
                    h.failures.append("%s: mtok get %s returned record %s" % (case, rid, ids[rid]))
            else:
                ids[rid] = status
        summary["get (id)"] = sorted(set(map(str, ids.values())) - {r for r, _ in truth}) or ["ok"]
        py = h.python_reads(case, cache, [r for r, _ in truth])
        if py is not None:
            wrong = wrong_records(py, truth)
            wrong += [i for i, v in py["ids"].items() if not v.startswith(("refused", "absent")) and v != i]
            if wrong:
                h.failures.append("%s: python read wrong data silently at %s" % (case, wrong))
            summary["python"] = {"open": py["open"],
                                 "records": sorted({"ok" if len(v) == 64 and v == truth[int(i)][1] else v
                                                    for i, v in py["records"].items()}),
                                 "stream": py["stream"]}
        for i, answer in got.items():
            if answer == "WRONG":
                h.failures.append("%s: mtok get --index %d returned other bytes" % (case, i))
    else:  # each get would read the whole manifest again: one Python pass over every record
        py = h.python_reads(case, cache, [])
        if py is not None:
            wrong = wrong_records(py, truth)
            if wrong:
                h.failures.append("%s: python read wrong data silently at %s" % (case, wrong))
            summary["python"] = {"open": py["open"], "records": len(py["records"]), "stream": py["stream"]}
    if snapshot(outside) != before:
        h.failures.append("%s: a file outside the cache changed" % case)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtok", default=os.path.join(ROOT, ".build", "debug", "mtok"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--flips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
    import mtokcache

    with tempfile.TemporaryDirectory() as work:
        h = Harness(os.path.abspath(args.mtok), args.python, work)
        base = os.path.join(work, "base")
        # Records of about 2.5 KB, 4 to a chunk: chunks are large values (overflow pages).
        status, _, err, _ = run([h.mtok, "synth-cache", base, "--records", str(RECORDS)] + SHAPE)
        if status != 0:
            print("synth-cache failed: %s" % err)
            return 1
        c = mtokcache.open(base)
        truth = [(c[i]["id"], hashlib.sha256(c.payload(i)).hexdigest()) for i in range(len(c))]
        c.close()
        report = {}
        for n, make in enumerate(CASES):
            case = make.__name__
            cache, outside = os.path.join(work, "case%d" % n), os.path.join(work, "outside%d" % n)
            shutil.copytree(base, cache)
            os.makedirs(outside)
            with open(os.path.join(outside, "victim"), "wb") as f:
                f.write(os.urandom(4096))
            make(cache, outside)
            writer_case = case.startswith("planted")
            if writer_case:
                before = snapshot(outside)
                status, _, err = h.swift(case, "synth-cache", cache, "--records", str(2 * RECORDS), *SHAPE)
                report[case] = {"synth-cache (continue)": status, "message": err.strip()[-160:]}
                if snapshot(outside) != before:
                    h.failures.append("%s: the writer changed or made a file outside the cache" % case)
            else:
                report[case] = examine(h, case, cache, outside, truth, reads=case != "large_manifest")
        # Random byte flips of the shard file, sealed and unsealed.
        rng = random.Random(args.seed)
        size = os.path.getsize(shard_path(base))
        counts = {"flips": 0, "records changed": 0, "fast verify": 0, "deep verify": 0, "reads refused": 0}
        sealed_counts = {"flips": 0, "fast verify": 0}
        for k in range(args.flips):
            case = "flip%d" % k
            cache, outside = os.path.join(work, case), os.path.join(work, "outside-" + case)
            shutil.copytree(base, cache)
            os.makedirs(outside)
            sealed = k % 2 == 0
            if not sealed:
                unseal(cache)
            at, bit = rng.randrange(size), 1 << rng.randrange(8)
            with open(writable(shard_path(cache)), "r+b") as f:
                f.seek(at)
                b = f.read(1)[0]
                f.seek(at)
                f.write(bytes([b ^ bit]))
            fast, deep = (found_fault(h.swift(case, "verify", cache, "--json", *more))
                          for more in ([], ["--deep"]))
            got = swift_reads(h, case, cache, truth)
            py = h.python_reads(case, cache, [])
            refused = any(v != "ok" for v in got.values())
            if py is not None:
                refused = refused or py["open"] != "ok" or any(len(v) != 64 for v in py["records"].values())
                wrong = wrong_records(py, truth)
                if wrong:
                    h.failures.append("%s (byte %d): python read records %s wrongly, silently" % (case, at, wrong))
            for i, answer in got.items():
                if answer == "WRONG":
                    h.failures.append("%s (byte %d): mtok get --index %d read other bytes, silently" % (case, at, i))
            counts["flips"] += 1
            counts["fast verify"] += fast
            counts["deep verify"] += deep
            counts["reads refused"] += refused
            if sealed:
                sealed_counts["flips"] += 1
                sealed_counts["fast verify"] += fast
            shutil.rmtree(cache)
            shutil.rmtree(outside)
        for case, summary in report.items():
            print("%-24s %s" % (case, json.dumps(summary, default=str)))
        if counts["flips"]:
            n = counts["flips"]
            print("\n%d single-bit flips of a %d-byte shard (%d records), half of them with the shard unsealed:" % (n, size, RECORDS))
            print("  caught by fast verify: %d (%.0f%%; sealed shards: %d of %d)" % (
                counts["fast verify"], 100.0 * counts["fast verify"] / n, sealed_counts["fast verify"], sealed_counts["flips"]))
            print("  caught by deep verify: %d (%.0f%%)" % (counts["deep verify"], 100.0 * counts["deep verify"] / n))
            print("  a read refused (Swift get or Python): %d (%.0f%%); the rest hit bytes no record uses" % (
                counts["reads refused"], 100.0 * counts["reads refused"] / n))
        print("\npeak memory of any run: %.0f MiB (limit %d GiB of address space)" % (h.peak / 1024.0, ADDRESS_SPACE >> 30))
        if h.failures:
            print("\nFAILURES (%d):" % len(h.failures))
            for f in h.failures:
                print("  " + f)
            return 1
        print("no crash, no hang, nothing outside a cache touched, no silent wrong read")
        from mtokcache import _accel
        print("mtokcache's C extension %s" % ("read every case as its pure-Python code did" if _accel.built()
                                              else "is not built: only the pure-Python reader was run"))
        return 0


if __name__ == "__main__":
    sys.exit(main())
