"""Unit tests of mtokcache that need only numpy, lmdb and zstandard (no Swift; the one test of
the PyTorch dataset is skipped without torch).

Run as a script (`python tools/python/tests/test_mtokcache.py`, exit status 0 when all pass), or
with pytest. Tests/ReaderTests runs the script.
"""

import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mtokcache  # noqa: E402
from mtokcache import order  # noqa: E402


def make_records(n, k=16, c=4, n_patches=24, seed=0, logvar=False):
    rng = np.random.default_rng(seed)
    for i in range(n):
        r = dict(id="img/%05d.jpg" % i, view=i % 3, label=i % 7 - 1,
                 latents=rng.standard_normal((k, c)).astype(np.float32),
                 indices=rng.integers(0, 70000, k).astype(np.uint32),
                 groups=rng.integers(0, k, n_patches).astype(np.uint16),
                 source_size=(640, 480), crop_box=(80, 0, 480, 480), source_sha256="ab" * 32)
        if logvar:
            r["logvar"] = rng.standard_normal((k, c)).astype(np.float32)
        yield r


def write(path, records, **kw):
    with mtokcache.Writer(path, settings={"test": True}, **kw) as w:
        for r in records:
            w.append(**r)


class TempDir:
    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="mtokcache-test-")
        return self.path

    def __exit__(self, *exc):
        for root, dirs, files in os.walk(self.path):
            for f in files:
                if not os.path.islink(os.path.join(root, f)):  # links to nothing, or to themselves
                    os.chmod(os.path.join(root, f), 0o644)
        shutil.rmtree(self.path)


def rewrite_chunk(path, chunk_no, change, shard=0):
    """Replaces chunk `chunk_no` of a shard of the cache at `path` by change(its bytes), as a
    damaged or hand-made shard would hold it. No Cache of it may be open in this process."""
    import lmdb
    f = "%s/shards/shard-%05d.mdb" % (path, shard)
    os.chmod(f, 0o644)
    env = lmdb.open(f, subdir=False, lock=False, max_dbs=4)
    try:
        with env.begin(write=True) as txn:
            db = env.open_db(b"records", txn=txn, create=False)
            key = struct.pack(">Q", chunk_no)
            txn.put(key, change(bytes(txn.get(key, db=db))), db=db)
    finally:
        env.close()


def chunk_frames(chunk):
    n = struct.unpack_from("<I", chunk)[0]
    offsets = struct.unpack_from("<%dI" % (n + 1), chunk, 4)
    return [chunk[4 * (n + 2) + a:4 * (n + 2) + b] for a, b in zip(offsets, offsets[1:])]


def pack_chunk(frames, offsets=None):
    """A chunk of `frames` (FORMAT 3.2), with the given offset table instead of the true one."""
    if offsets is None:
        offsets = [0]
        for f in frames:
            offsets.append(offsets[-1] + len(f))
    return struct.pack("<I%dI" % len(offsets), len(frames), *offsets) + b"".join(frames)


def rewrite_header(path, index, records_per_chunk, edit):
    """Replaces the header text of the stored record `index` (of a one-shard cache) by
    edit(text), the frame compressed again as a writer would, so that only the header is wrong."""
    import zstandard
    chunk_no, slot = divmod(index, records_per_chunk)

    def change(chunk):
        frames = chunk_frames(chunk)
        stored = zstandard.ZstdDecompressor().decompress(frames[slot])
        hlen = struct.unpack_from("<Q", stored)[0]
        text = edit(stored[8:8 + hlen].decode().rstrip(" ")).encode()
        text += b" " * (-len(text) % 8)
        cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
        frames[slot] = cctx.compress(struct.pack("<Q", len(text)) + text + stored[8 + hlen:])
        return pack_chunk(frames)
    rewrite_chunk(path, chunk_no, change)


def set_metadata(**meta):
    """A header edit (rewrite_header) that sets metadata values."""
    def edit(text):
        header = json.loads(text)
        header["__metadata__"].update(meta)
        return json.dumps(header, separators=(",", ":"))
    return edit


def refused(error, read, words=(), case=None):
    """Runs read(); it must raise `error` (exactly that class or a subclass) with `words` in its
    message. Returns the error. `case` names what was read in a failure's message."""
    try:
        got = read()
    except error as e:
        assert all(w in str(e) for w in words), (case, words, e)
        return e
    raise AssertionError("read without %s%s: %r" % (error.__name__, "" if case is None else " (%s)" % (case,),
                                                    str(got)[:200]))


def test_round_trip_every_dtype_and_shuffle():
    for latent_dtype in ("bf16", "f16", "f32"):
        for shuffle in ("byte-planes", "none"):
            with TempDir() as d:
                recs = list(make_records(50, logvar=True))
                write(d + "/c", recs, latent_dtype=latent_dtype, shuffle=shuffle, records_per_chunk=4,
                      shard_cap_bytes=20000)
                c = mtokcache.open(d + "/c")
                assert len(c) == 50 and len(c.shard_entries) > 1, (len(c), len(c.shard_entries))
                raw = mtokcache.open(d + "/c", latent_format="raw")
                for i, r in enumerate(recs):
                    got = c[i]
                    assert got["id"] == r["id"] and got["view"] == r["view"] and got["label"] == r["label"]
                    assert got["source_size"] == (640, 480) and got["crop_box"] == (80, 0, 480, 480)
                    assert np.array_equal(got["indices"], r["indices"]) and got["indices"].dtype == np.uint32
                    assert np.array_equal(got["groups"], r["groups"]) and got["groups"].dtype == np.uint16
                    tol = {"f32": 0, "f16": 1e-3, "bf16": 1e-2}[latent_dtype]
                    assert np.allclose(got["latents"], r["latents"], rtol=tol, atol=tol)
                    if latent_dtype == "bf16":
                        want = mtokcache.writer.float32_to_bf16(r["latents"])
                        assert np.array_equal(raw[i]["latents"], want)
                    assert got["latents"].dtype == np.float32 and got["logvar"].shape == (16, 4)
                    assert c.get(r["id"], r["view"])["index"] == i
                b = c.batch([3, 1, 2])
                assert b["latents"].shape == (3, 16, 4) and b["indices"].dtype == np.uint32
                assert np.array_equal(b["latents"][1], c[1]["latents"]) and b["ids"] == [recs[j]["id"] for j in (3, 1, 2)]


def literal_block_types(frame):
    """The Literals_Block_Type (0 raw, 1 RLE, 2 Huffman, 3 Huffman with the previous table) of
    each compressed block of a zstd frame (RFC 8878, 3.1.1 and 3.1.1.3.1)."""
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    fhd = frame[4]
    single, fcs_flag, dict_flag = fhd >> 5 & 1, fhd >> 6, fhd & 3
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
    types = []
    while True:
        bh = int.from_bytes(frame[at:at + 3], "little")
        kind, size = bh >> 1 & 3, bh >> 3
        at += 3
        if kind == 2:
            types.append(frame[at] & 3)
        at += 1 if kind == 1 else size
        if bh & 1:
            return types


def test_literals_stored_raw_only_with_byte_planes():
    """The C extension stores literals raw with byte planes (the Swift writer's default) and
    Huffman-codes them without (where raw literals made frames a quarter larger); the pure-Python
    writer always Huffman-codes them. The manifest says which."""
    from mtokcache import _accel
    for shuffle in ("byte-planes", "none"):
        with TempDir() as d:
            write(d + "/c", make_records(20, k=64, c=16, n_patches=64), shuffle=shuffle, latent_dtype="bf16", records_per_chunk=4)
            c = mtokcache.open(d + "/c")
            raw = _accel.native() is not None and shuffle == "byte-planes"
            assert c.manifest["compression"]["literals"] == ("raw" if raw else "huffman"), c.manifest["compression"]
            chunk = c._open()[0].get(struct.pack(">Q", 0), "records")
            c.close()
            types = [t for f in chunk_frames(chunk) for t in literal_block_types(f)]
            assert types, "no compressed block"
            if raw:
                assert set(types) <= {0, 1}, types
            else:
                assert {2, 3} & set(types), types


def test_content_digest_and_manifest():
    import hashlib
    with TempDir() as d:
        recs = list(make_records(20))
        write(d + "/c", recs, records_per_chunk=3)
        c = mtokcache.open(d + "/c")
        m = c.manifest
        assert m["complete"] and m["totals"]["records"] == 20
        h = hashlib.sha256()
        for i in range(20):
            h.update(hashlib.sha256(c.payload(i)).digest())
        assert m["content_digest"] == "sha256:" + h.hexdigest()


def test_duplicate_ids_refused():
    with TempDir() as d:
        w = mtokcache.Writer(d + "/c")
        r = next(make_records(1))
        w.append(**r)
        try:
            w.append(**r)
        except ValueError as e:
            assert "duplicate" in str(e)
        else:
            raise AssertionError("duplicate accepted")


def test_errors_not_a_cache_and_unknown_version():
    with TempDir() as d:
        try:
            mtokcache.open(d)
        except mtokcache.NotACacheError as e:
            assert "manifest.json" in str(e)
        else:
            raise AssertionError("opened a directory without a manifest")
        write(d + "/c", make_records(3))
        mpath = d + "/c/manifest.json"
        m = json.load(open(mpath))
        m["format_version"] = 2
        os.chmod(mpath, 0o644)
        json.dump(m, open(mpath, "w"))
        try:
            mtokcache.open(d + "/c")
        except mtokcache.UnknownVersionError as e:
            assert "format_version 2" in str(e)
        else:
            raise AssertionError("accepted format_version 2")


def test_damaged_manifest_values_refused():
    """Out-of-range counts in manifest.json are refused when the cache opens, as FORMAT.md 2
    bounds them (Swift's reader refuses the same manifests)."""
    with TempDir() as d:
        write(d + "/c", make_records(3))
        mpath = d + "/c/manifest.json"
        good = json.load(open(mpath))
        os.chmod(mpath, 0o644)
        for field, value in (("records_per_chunk", 0), ("records_per_chunk", 2**40), ("records_per_chunk", True),
                             ("records", -5), ("records", False)):
            m = json.loads(json.dumps(good))
            if field == "records":
                m["shards"][0]["records"] = value
            else:
                m[field] = value
            json.dump(m, open(mpath, "w"))
            refused(mtokcache.NotACacheError, lambda: mtokcache.open(d + "/c"), ["manifest.json"], (field, value))


def test_manifest_with_another_shuffle_refused():
    """Shards record their byte-shuffle setting: a manifest edited to say otherwise would make
    every value decode wrong with every checksum intact, so the shard is refused."""
    with TempDir() as d:
        write(d + "/c", make_records(6))
        mpath = d + "/c/manifest.json"
        m = json.load(open(mpath))
        assert m["compression"]["shuffle"] == "byte-planes"
        m["compression"]["shuffle"] = "none"
        os.chmod(mpath, 0o644)
        json.dump(m, open(mpath, "w"))
        refused(mtokcache.ShardMismatchError, lambda: mtokcache.open(d + "/c")[0], ["shuffle"])


def test_corrupt_record_names_its_location():
    with TempDir() as d:
        write(d + "/c", make_records(40), records_per_chunk=8)
        c = mtokcache.open(d + "/c")
        # Find record 13's frame in the file (chunk 1, slot 5) and flip a byte in its middle.
        shard = c._open()[0]
        chunk = bytes(shard.txn.get(struct.pack(">Q", 1), db=shard.records))
        n = struct.unpack_from("<I", chunk)[0]
        a, b = struct.unpack_from("<II", chunk, 4 * (1 + 5))
        frame = chunk[4 * (n + 2) + a:4 * (n + 2) + b]
        c.close()
        path = d + "/c/" + c.shard_entries[0]["file"]
        os.chmod(path, 0o644)
        data = bytearray(open(path, "rb").read())
        at = data.find(frame)
        assert at > 0 and data.find(frame, at + 1) < 0
        data[at + len(frame) // 2] ^= 0x55
        open(path, "wb").write(bytes(data))
        c = mtokcache.open(d + "/c")
        for i in range(40):
            if i != 13:
                c[i]
        try:
            c[13]
        except mtokcache.CorruptRecordError as e:
            assert e.location == {"shard": "shards/shard-00000.mdb", "chunk": 1, "index": 13}, e.location
            assert "shard shards/shard-00000.mdb, chunk 1, index 13" in str(e)
        else:
            raise AssertionError("corrupt frame read without error")


def test_checked_header_tails_never_let_a_changed_layout_through():
    """_parse_header skips the layout checks for a header whose text after __metadata__ equals
    one already checked; any other header (a changed tensor entry, a second __metadata__) gets
    the full checks, and metadata always comes from the record itself."""
    from mtokcache import reader
    with TempDir() as d:
        write(d + "/c", make_records(3))
        c = mtokcache.open(d + "/c")
        stored, loc = c._stored(0)
        second, _ = c._stored(1)
        c.close()
    header = lambda p: bytes(p[8:8 + struct.unpack_from("<Q", p)[0]]).decode()
    def payload(text, like):
        old = struct.unpack_from("<Q", like)[0]
        return struct.pack("<Q", len(text.encode())) + text.encode() + like[8 + old:]
    h0 = header(stored)
    assert h0.startswith('{"__metadata__":')
    assert reader._parse_header(stored, loc)[0]["metadata"]["id"] == "img/00000.jpg"
    assert reader._parse_header(second, loc)[0]["metadata"]["id"] == "img/00001.jpg"  # same tail
    meta_end = reader._JSON.raw_decode(h0, len('{"__metadata__":'))[1]
    tail = h0[meta_end:]
    # A tail that differs in one tensor's shape: checked again, and refused.
    entry = json.loads("{" + tail[1:])["groups"]
    bad_shape = tail.replace(json.dumps(entry["shape"], separators=(",", ":")), "[%d]" % (entry["shape"][0] + 1), 1)
    assert bad_shape != tail
    for text in (h0[:meta_end] + bad_shape,
                 # A second __metadata__ after the tensors (json alone would keep it: it lacks the format).
                 h0[:meta_end] + tail[:-1] + ',"__metadata__":{"id":"x"}}'):
        try:
            reader._parse_header(payload(text, stored), loc)
        except (mtokcache.BadRecordError, mtokcache.UnknownVersionError):
            pass
        else:
            raise AssertionError("header accepted: " + text)


def test_order_is_a_permutation_with_locality():
    counts = [100, 0, 37, 64, 1]
    for seed in (0, 1, 2**64 - 1):
        for epoch in (0, 5):
            p = order.permutation(counts, seed, epoch, 8, 3)
            assert sorted(p.tolist()) == list(range(sum(counts)))
    a = order.permutation(counts, 1, 0, 8, 3)
    assert not np.array_equal(a, order.permutation(counts, 1, 1, 8, 3))
    assert not np.array_equal(a, order.permutation(counts, 2, 0, 8, 3))
    assert np.array_equal(order.permutation(counts, 1, 0, 8, 3, shuffle=False), np.arange(202))
    # Each window holds whole blocks: the first 3 blocks' records are the first window.
    first_window = set(a[:24].tolist())
    blocks = {i // 8 for i in first_window if i < 96}
    assert len(blocks) <= 3


def test_ranks_disjoint_complete_equal_resumable():
    p = order.permutation([50, 53], 9, 2, 4, 2)
    n = len(p)
    for w in range(1, 8):
        for padding in ("pad", "drop"):
            parts = [order.rank_indices(p, r, w, 0, padding) for r in range(w)]
            assert len({len(x) for x in parts}) == 1
            allv = np.concatenate(parts)
            if padding == "drop":
                assert len(set(allv.tolist())) == len(allv) == n // w * w
            else:
                assert set(allv.tolist()) == set(range(n)) and len(allv) == -(-n // w) * w
            for r in range(w):
                for start in (0, 1, w, 7, n, n + 5):
                    assert order.rank_count(n, r, w, start, padding) == len(order.rank_indices(p, r, w, start, padding))
            # Resuming at a global position continues the same sequence, with any world size.
            for start in (0, w, 3 * w, 7):
                for r in range(w):
                    full = order.rank_indices(p, r, w, 0, padding)
                    tail = order.rank_indices(p, r, w, start, padding)
                    assert np.array_equal(full[len(full) - len(tail):], tail)
    # Elastic: global positions 0..29 from 3 ranks, then 5 ranks from position 30, give P[0..].
    seq = np.empty(n, np.int64)
    for r in range(3):
        seq[r:30:3] = order.rank_indices(p, r, 3)[:10]
    for r in range(5):
        part = order.rank_indices(p, r, 5, start=30, padding="drop")
        seq[30 + r::5][:len(part)] = part[:len(seq[30 + r::5])]
    assert np.array_equal(seq[:100], p[:100])


def test_stream_worker_split_is_the_rank_order():
    """The split the iterable dataset uses (worker k takes batches k, k+K, ...), interleaved
    round-robin as DataLoader does, is the rank's order for any worker count."""
    with TempDir() as d:
        write(d + "/c", make_records(45), records_per_chunk=4)
        c = mtokcache.open(d + "/c")
        want = c.stream_indices(1, 2, 3, 11)
        b = 4
        for workers in (1, 2, 3, 4):
            per = [[] for _ in range(workers)]
            for k in range(workers):
                for lo in range(k * b, len(want), workers * b):
                    per[k].append(want[lo:lo + b])
            got, j = [], 0
            while any(per):
                if per[j % workers]:
                    got.extend(per[j % workers].pop(0))
                j += 1
            assert np.array_equal(np.array(got), want)
        got = [r["index"] for r in c.stream(1, 2, 3, 11)]
        assert got == want.tolist()
        batches = list(c.stream(1, 2, 3, 11, batch_size=5))
        assert np.concatenate([x["records"] for x in batches]).tolist() == want.tolist()


def killed_at(script, path, here, stop_at):
    """Runs a writer `script` (argv: the cache, this folder) that prints a line of numbers per
    step, the last one the records appended, and SIGKILLs it once that reaches `stop_at`.
    Returns the lines it printed, as lists of ints."""
    import signal
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", script, path, here], stdout=subprocess.PIPE, text=True)
    steps = []
    for line in child.stdout:
        steps.append([int(x) for x in line.split()])
        if steps[-1][-1] >= stop_at:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert steps and steps[-1][-1] >= stop_at, "the writer died before it was killed"
    return steps


_KILLED_WRITER = r"""
import sys, os, time
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]
import mtokcache
from test_mtokcache import make_records
w = mtokcache.Writer(sys.argv[1], settings={"test": True}, records_per_chunk=4, shard_cap_bytes=6000, resume=True)
for r in list(make_records(120))[w.committed:]:
    w.append(**r)
    print(w.committed, flush=True)
w.finish()
"""


_KILLED_BATCH_WRITER = r"""
import sys, os
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]
import numpy as np, mtokcache
from test_mtokcache import make_records
recs = list(make_records(150))
w = mtokcache.Writer(sys.argv[1], settings={"test": True}, records_per_chunk=4, shard_cap_bytes=12000,
                     commit_every=12, commit_seconds=3600, resume=True)
lo = w.committed
while lo < len(recs):
    rows = recs[lo:lo + 7]
    w.append_many([r["id"] for r in rows], np.stack([r["latents"] for r in rows]), np.stack([r["indices"] for r in rows]),
                  np.stack([r["groups"] for r in rows]), labels=[r["label"] for r in rows], views=[r["view"] for r in rows],
                  source_sizes=[r["source_size"] for r in rows], crop_boxes=[r["crop_box"] for r in rows],
                  source_sha256s=[r["source_sha256"] for r in rows])
    lo += len(rows)
    print(w.committed, len(w), flush=True)
w.finish()
"""


def test_sigkill_with_batched_commits_resumes_to_the_clean_digest():
    """append_many with commit_every: a writer killed (SIGKILL) between commits loses only the
    records after its last commit, never more than commit_every + records_per_chunk - 1 of
    them; resumed from `committed`, the finished cache holds the records and content digest of
    a run without a break written with append() one record at a time."""
    import random
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    with TempDir() as d:
        write(d + "/clean", make_records(150), records_per_chunk=4, shard_cap_bytes=12000)
        want = mtokcache.open(d + "/clean")
        rng = random.Random(11)
        path = d + "/c"
        for attempt in range(4):
            stop_at = rng.randrange(20, 130)
            steps = killed_at(_KILLED_BATCH_WRITER, path, here, stop_at)
            for committed, appended in steps:
                assert appended - committed <= 12 + 4 - 1, "more records wait than commit_every allows"
            committed, appended = steps[-1]
            w = mtokcache.Writer(path, settings={"test": True}, resume=True)
            # The kill landed after the child printed: a commit may have followed, never a loss.
            assert committed <= w.committed <= appended, (committed, w.committed, appended)
            w.close()
        child = subprocess.run([sys.executable, "-c", _KILLED_BATCH_WRITER, path, here], capture_output=True, text=True)
        assert child.returncode == 0, child.stderr
        got = mtokcache.open(path)
        assert len(got.shard_entries) > 1, "wanted several shards"
        assert got.manifest["content_digest"] == want.manifest["content_digest"]
        assert [got[i]["id"] for i in range(len(got))] == [want[i]["id"] for i in range(len(want))]


def test_commit_seconds_and_flush_make_records_durable():
    """commit_seconds=0 commits every chunk as it fills; flush() commits a partial one."""
    recs = list(make_records(10))
    with TempDir() as d:
        w = mtokcache.Writer(d + "/a", settings={"test": True}, records_per_chunk=4, commit_every=1000,
                             commit_seconds=0)
        for r in recs[:9]:
            w.append(**r)
        assert w.committed == 8 and len(w) == 9
        w.flush()
        assert w.committed == 9
        w.close()
        w = mtokcache.Writer(d + "/b", settings={"test": True}, records_per_chunk=4, commit_every=1000,
                             commit_seconds=3600)
        for r in recs[:9]:
            w.append(**r)
        assert w.committed == 0 and len(w) == 9
        w.close()  # commits what was appended
        with mtokcache.Writer(d + "/b", settings={"test": True}, resume=True) as w:
            assert w.committed == 9
        for bad in (0, -1, 1.5, True):
            refused(ValueError, lambda: mtokcache.Writer(d + "/x%r" % (bad,), settings={}, commit_every=bad), ["commit_every"])


def test_the_c_extension_reads_nothing_the_python_reader_refuses():
    """Thousands of damaged chunks, frames and payloads (bytes of the metadata changed in place,
    so the header keeps its learned layout; bytes of the tensors; bytes of the chunk and its
    frames): whatever the C extension reads, the pure-Python reader reads too, to the same dict;
    and it does read many of them (its fast path is exercised, not skipped)."""
    import random
    import zstandard
    from mtokcache import _accel, reader
    native = _accel.built()
    if native is None:
        print("       (the C extension is not built: skipped)")
        return
    from mtokcache.errors import CacheError
    dctx = zstandard.ZstdDecompressor()
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)

    def chunk_of(payloads):
        frames = [cctx.compress(bytes(p)) for p in payloads]
        offsets = np.zeros(len(frames) + 1, "<u4")
        offsets[1:] = np.cumsum([len(f) for f in frames])
        return struct.pack("<I", len(frames)) + offsets.tobytes() + b"".join(frames)

    def same(a, b):
        assert list(a) == list(b), (list(a), list(b))
        for k in a:
            if isinstance(a[k], np.ndarray):
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
            else:
                assert a[k] == b[k] and type(a[k]) is type(b[k]), (k, a[k], b[k])

    rng = random.Random(5)
    taken = refused_by_both = 0
    with TempDir() as d:
        write(d + "/c", make_records(6, logvar=True), records_per_chunk=4)
        for f32 in (False, True):
            c = mtokcache.open(d + "/c", latent_format="f32" if f32 else "raw")
            stored = [bytes(c._stored(i)[0]) for i in range(3)]
            for i in range(3):
                c._decode(i)  # the Python parse learns the layouts
            hlen = struct.unpack_from("<Q", stored[0])[0]
            meta_end = stored[0].index(b"},", 8) + 1
            for trial in range(1500):
                payloads = [bytearray(p) for p in stored]
                slot = rng.randrange(3)
                kind = trial % 3
                if kind == 0:  # metadata bytes, in place
                    for _ in range(rng.choice((1, 1, 2, 3))):
                        at = rng.randrange(8 + 16, meta_end)
                        payloads[slot][at] = rng.choice(b'0123456789-+,":{}\\ e.\x00\x7f\xc3\xa9az')
                    chunk = chunk_of(payloads)
                elif kind == 1:  # tensor bytes (group ids past K among them)
                    for _ in range(rng.choice((1, 4))):
                        payloads[slot][rng.randrange(8 + hlen, len(payloads[slot]))] = rng.randrange(256)
                    chunk = chunk_of(payloads)
                else:  # the chunk: offset table, frame headers, compressed bytes
                    chunk = bytearray(chunk_of(payloads))
                    for _ in range(rng.choice((1, 2))):
                        at = rng.randrange(min(len(chunk), 64)) if rng.random() < 0.5 else rng.randrange(len(chunk))
                        chunk[at] ^= 1 << rng.randrange(8)
                    chunk = bytes(chunk)
                got = native.decode(chunk, slot, 4, c.shuffled, f32, slot)
                try:
                    want = reader._decode_record(reader._record_in_chunk(chunk, slot, 4, dctx, {}), {}, slot,
                                                 c.shuffled, f32)
                except CacheError:
                    want = None
                if got is not None:
                    assert want is not None, ("the C extension read what Python refuses", kind, trial)
                    same(got, want)
                    taken += 1
                elif want is None:
                    refused_by_both += 1
    assert taken > 300 and refused_by_both > 300, (taken, refused_by_both)


def test_sealing_compacts_only_when_it_pays():
    """FORMAT 6.2: a shard is compacted on sealing when its free pages are over 1 % of it and
    over the floor; otherwise it is synced as it is. Either way it reads the same."""
    from mtokcache import reader
    recs = list(make_records(120))
    with TempDir() as d:
        sizes = {}
        for floor in (0, 16 << 20):
            path = d + "/f%d" % floor
            w = mtokcache.Writer(path, settings={"test": True}, records_per_chunk=4, commit_every=1)
            w.COMPACT_FLOOR_BYTES = floor
            for r in recs:
                w.append(**r)
            w.flush()
            pages = reader._pages_bytes(w._env)
            free = w._free_bytes()
            w.finish()
            c = mtokcache.open(path)
            sizes[floor] = (pages, free, c.shard_entries[0]["bytes"], c.manifest["content_digest"])
        pages, free, compacted, digest = sizes[0]
        assert free * 100 > pages and compacted < pages, sizes  # 30 commits freed pages: compacted
        pages, free, kept, other = sizes[16 << 20]
        assert kept == pages and other == digest, sizes  # under the floor: the file as written


def test_append_many_equals_append_and_refuses_a_bad_row_whole():
    recs = list(make_records(23, logvar=True))
    with TempDir() as d:
        write(d + "/one", recs, records_per_chunk=4)
        with mtokcache.Writer(d + "/many", settings={"test": True}, records_per_chunk=4) as w:
            for lo in (0, 10, 11, 23):
                rows = recs[lo:{0: 10, 10: 11, 11: 23, 23: 23}[lo]]
                if not rows:
                    w.append_many([], np.zeros((0, 16, 4), np.float32), np.zeros((0, 16), np.uint32),
                                  np.zeros((0, 24), np.uint16))
                    continue
                w.append_many([r["id"] for r in rows], np.stack([r["latents"] for r in rows]),
                              np.stack([r["indices"] for r in rows]), np.stack([r["groups"] for r in rows]),
                              labels=np.array([r["label"] for r in rows]), views=np.array([r["view"] for r in rows]),
                              logvar=np.stack([r["logvar"] for r in rows]),
                              source_sizes=np.array([r["source_size"] for r in rows]),
                              crop_boxes=[r["crop_box"] for r in rows], source_sha256s=[r["source_sha256"] for r in rows])
                if lo == 10:  # a bad row refuses the whole batch, and nothing of it is added
                    n = len(w)
                    lat = np.stack([recs[0]["latents"]] * 2)
                    idx = np.stack([recs[0]["indices"]] * 2)
                    grp = np.stack([recs[0]["groups"]] * 2)
                    lv = np.stack([recs[0]["logvar"]] * 2)
                    refused(ValueError, lambda: w.append_many(["new/a", "new/b"], lat, idx, grp, labels=[0, -2], logvar=lv),
                            ["labels", "-2"])
                    refused(ValueError, lambda: w.append_many(["new/a", "new/a"], lat, idx, grp, logvar=lv), ["duplicate"])
                    refused(ValueError, lambda: w.append_many(["new/a", recs[0]["id"]], lat, idx, grp, logvar=lv,
                                                              views=[0, recs[0]["view"]]), ["duplicate"])
                    bad = grp.copy()
                    bad[1, 3] = 16
                    refused(ValueError, lambda: w.append_many(["new/a", "new/b"], lat, idx, bad, logvar=lv), ["group id 16"])
                    refused(ValueError, lambda: w.append_many(["new/a", "new/b"], lat, idx, grp), ["logvar"])
                    refused(ValueError, lambda: w.append_many(["new/a"], lat, idx, grp, logvar=lv), ["latents"])
                    assert len(w) == n
        a, b = mtokcache.open(d + "/one"), mtokcache.open(d + "/many")
        assert a.manifest["content_digest"] == b.manifest["content_digest"]
        # Compressed on 1 or 3 threads (with the C extension), the same records in the same order.
        for threads in (1, 3):
            with mtokcache.Writer(d + "/t%d" % threads, settings={"test": True}, records_per_chunk=4,
                                  threads=threads) as w:
                w.append_many([r["id"] for r in recs], np.stack([r["latents"] for r in recs]),
                              np.stack([r["indices"] for r in recs]), np.stack([r["groups"] for r in recs]),
                              labels=[r["label"] for r in recs], views=[r["view"] for r in recs],
                              logvar=np.stack([r["logvar"] for r in recs]), source_sizes=[r["source_size"] for r in recs],
                              crop_boxes=[r["crop_box"] for r in recs], source_sha256s=[r["source_sha256"] for r in recs])
            t = mtokcache.open(d + "/t%d" % threads)
            assert t.manifest["content_digest"] == a.manifest["content_digest"], threads
            assert [t.payload(i) for i in range(len(t))] == [a.payload(i) for i in range(len(a))]


def test_resume_after_sigkill_loses_nothing_committed():
    import random
    here = os.path.dirname(os.path.abspath(__file__))
    with TempDir() as d:
        write(d + "/clean", make_records(120), records_per_chunk=4, shard_cap_bytes=6000)
        want = mtokcache.open(d + "/clean")
        rng = random.Random(7)
        path = d + "/c"
        for attempt in range(3):
            stop_at = rng.randrange(10, 110)
            last = killed_at(_KILLED_WRITER, path, here, stop_at)[-1][-1]
            w = mtokcache.Writer(path, settings={"test": True}, resume=True)
            assert w.committed >= last, "committed records lost: %d < %d" % (w.committed, last)
            w.close()
        # close() commits a partial chunk and leaves the cache resumable.
        w = mtokcache.Writer(path, settings={"test": True}, resume=True)
        for r in list(make_records(120))[w.committed:w.committed + 3]:
            w.append(**r)
        w.close()
        with mtokcache.Writer(path, settings={"test": True}, resume=True) as w:
            assert w.committed % 4 != 0, "wanted a partial chunk to resume"
            for r in list(make_records(120))[w.committed:]:
                w.append(**r)
        got = mtokcache.open(path)
        assert got.manifest["content_digest"] == want.manifest["content_digest"]
        assert len(got) == 120 and len(got.shard_entries) > 1
        for i in (0, 37, 119):
            assert got[i]["id"] == want[i]["id"] and np.array_equal(got[i]["latents"], want[i]["latents"])
        try:
            mtokcache.Writer(path, settings={"other": 1}, resume=True)
            raise AssertionError("resumed with other settings")
        except mtokcache.SettingsMismatchError as e:
            # The message names the first difference, so the caller knows what to restore.
            assert "test is true there, absent now" in str(e), e


def test_resume_refuses_a_damaged_partial_chunk():
    import lmdb
    with TempDir() as d:
        w = mtokcache.Writer(d + "/c", settings={"test": True}, records_per_chunk=4)
        for r in make_records(6):
            w.append(**r)
        w.close()  # 6 records: one full chunk and a partial one, unsealed
        env = lmdb.open(d + "/c/shards/shard-00000.mdb", subdir=False, max_dbs=4)
        with env.begin(write=True) as txn:
            ids = env.open_db(b"ids", txn=txn)
            key = next(k for k, v in txn.cursor(db=ids) if struct.unpack("<I", v)[0] == 5)
            txn.delete(key, db=ids)
        env.close()
        try:
            mtokcache.Writer(d + "/c", settings={"test": True}, resume=True)
            raise AssertionError("resumed a shard whose last record has no id")
        except mtokcache.ShardMismatchError as e:
            assert "shard-00000.mdb" in str(e), e
        # A frame of the partial chunk whose zstd magic number is damaged: the writer would take it
        # as pending, declaring no size (zstandard's frame_content_size raises on it).
        w = mtokcache.Writer(d + "/c2", settings={"test": True}, records_per_chunk=4)
        for r in make_records(6):
            w.append(**r)
        w.close()
        rewrite_chunk(d + "/c2", 1, lambda chunk: pack_chunk([b"\0" + f[1:] for f in chunk_frames(chunk)]))
        refused(mtokcache.ShardMismatchError, lambda: mtokcache.Writer(d + "/c2", settings={"test": True}, resume=True),
                ["shard-00000.mdb", "partial last chunk"])


def as_another_user(fn):
    """Runs fn(): in a forked child that drops to user and group 65534 when this process is root
    (root may read any file), else here. What fn raised is raised here as an AssertionError."""
    if os.geteuid() != 0:
        fn()
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
            failure = b""
        except BaseException as e:  # reported to the parent, which fails the test
            failure = ("%s: %s" % (type(e).__name__, e)).encode()
        os.write(w, failure[:4096])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        failure = f.read().decode()
    os.waitpid(pid, 0)
    assert not failure, "as user 65534: " + failure


def test_shard_file_problems_named_as_swift_names_them():
    """A shard path that is missing, a symbolic link to nothing or a loop of them, a directory, a
    FIFO, or a file this process may not read, is refused at the shard by the readers and by a
    resuming writer, in the words of Swift's Shard.fileSize: not with a bare OSError, nor as
    "does not exist" when it does. A FIFO is never opened (that would wait for a writer). A shard
    that is a link to a shard file reads (shards may live on other disks)."""
    import errno
    import signal
    with TempDir() as d:
        os.chmod(d, 0o755)  # user 65534 reads the caches here (as_another_user)
        recs = list(make_records(5))
        write(d + "/good", recs)
        file = "shards/shard-00000.mdb"

        def damaged(n, change):
            path = "%s/case%d" % (d, n)
            shutil.copytree(d + "/good", path)
            change(path + "/" + file)
            return path, path + "/" + file

        def replace(by):
            def change(shard):
                os.remove(shard)
                by(shard)
            return change
        path, shard = damaged(0, lambda s: (os.rename(s, s + ".elsewhere"),
                                            os.symlink(os.path.basename(s) + ".elsewhere", s)))
        assert mtokcache.open(path)[4]["id"] == recs[4]["id"]
        cases = [(lambda s: None, mtokcache.MissingShardError, "%s does not exist"),
                 (lambda s: os.symlink("gone.mdb", s), mtokcache.MissingShardError,
                  "%s is a symbolic link to a file that does not exist"),
                 (lambda s: os.symlink(os.path.basename(s), s), mtokcache.CacheIOError,
                  "cannot read %%s: %s" % os.strerror(errno.ELOOP)),
                 (os.mkdir, mtokcache.ShardMismatchError, "%s is a directory, not a shard file"),
                 (os.mkfifo, mtokcache.ShardMismatchError, "%s is not a regular file, not a shard file")]

        def timeout(*_):
            raise AssertionError("the read hangs (opened a FIFO?)")
        before = signal.signal(signal.SIGALRM, timeout)
        try:
            for n, (by, error, words) in enumerate(cases, 1):
                path, shard = damaged(n, replace(by))
                c = mtokcache.open(path)
                for read in (lambda: c[0], lambda: c.batch([0, 1]), lambda: list(c.stream(0, 1, 0, 0)),
                             lambda: mtokcache.Writer(path, settings={"test": True}, resume=True)):
                    signal.alarm(20)
                    e = refused(error, read, [words % shard])
                    signal.alarm(0)
                    assert e.location == {"shard": file}, (words, e.location)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, before)
        # Not readable: the file itself, or the directory that holds it.
        path, shard = damaged(len(cases) + 1, lambda s: os.chmod(s, 0o000))
        path2, shard2 = damaged(len(cases) + 2, lambda s: os.chmod(os.path.dirname(s), 0o600))

        def unreadable():
            for p, s in ((path, shard), (path2, shard2)):
                c = mtokcache.open(p)
                for read in (lambda: c[0], lambda: c.batch([0, 1])):
                    e = refused(mtokcache.CacheIOError, read, ["cannot read %s: %s" % (s, os.strerror(errno.EACCES))])
                    assert e.location == {"shard": file}, e.location
        try:
            as_another_user(unreadable)
        finally:
            os.chmod(os.path.dirname(shard2), 0o755)


def test_reopens_after_fork():
    with TempDir() as d:
        write(d + "/c", make_records(10))
        c = mtokcache.open(d + "/c")
        parent = c[3]["latents"]
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(c[3]["latents"], parent) and c._pid == os.getpid()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert np.array_equal(c[3]["latents"], parent)


def test_open_reads_a_cache_rebuilt_at_the_same_path():
    """A cache deleted and written again at the same path is read anew by the next open(), while
    a Cache opened before keeps reading the files it opened; dropped Caches release their shards."""
    import gc
    from mtokcache import reader
    open_before = len(reader._REGISTRY)
    with TempDir() as d:
        old = list(make_records(8, seed=1))
        write(d + "/c", old)
        c1 = mtokcache.open(d + "/c")
        assert c1[7]["id"] == old[7]["id"]
        shutil.rmtree(d + "/c")
        new = list(make_records(40, seed=2))
        write(d + "/c", new, records_per_chunk=4)
        c2 = mtokcache.open(d + "/c")
        assert len(c2) == 40
        for i in (0, 7, 39):
            assert np.array_equal(c2[i]["indices"], new[i]["indices"]), i
        assert np.array_equal(c1[7]["indices"], old[7]["indices"])  # still its own (deleted) files
        assert np.array_equal(mtokcache.open(d + "/c")[39]["indices"], new[39]["indices"])
        c1.close()
        assert np.array_equal(c2[39]["indices"], new[39]["indices"])
        del c2
        gc.collect()
        assert len(reader._REGISTRY) == open_before, "environments of dropped Caches are still open"


_CHILD = r"""
import sys, os
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]
import mtokcache
from test_mtokcache import make_records
"""

# A writer that can hold back its manifest writes: a commit then stays unlisted, as it does for a
# moment between a writer's commit and its manifest write (FORMAT 6.2).
_HOLDING_WRITER = _CHILD + r"""
class Writer(mtokcache.Writer):
    hold = False

    def _write_manifest(self, complete):
        if not self.hold:
            super()._write_manifest(complete)
"""

_STEPPED_WRITER = _HOLDING_WRITER + r"""
recs = list(make_records(16))
w = Writer(sys.argv[1], settings={"test": True}, records_per_chunk=4, commit_every=1)
for r in recs[:10]:
    w.append(**r)
w.flush()
w.hold = True
for r in recs[10:]:
    w.append(**r)  # commits records 8 ... 15 to the shard; the manifest still lists 10
print("committed", flush=True)
sys.stdin.readline()
w.hold = False
w._write_manifest(complete=False)
print("listed", flush=True)
sys.stdin.readline()
w.finish()
print("finished", flush=True)
sys.stdin.readline()
"""


def test_reads_a_cache_while_it_is_written():
    """FORMAT 6.2: a writer commits to the shard before it rewrites the manifest, so an unsealed
    shard may hold more records than the manifest lists. A reader reads the listed ones; a Cache
    opened later reads what was listed by then, and the earlier Caches go on working."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    recs = list(make_records(16))
    with TempDir() as d:
        path = d + "/c"
        child = subprocess.Popen([sys.executable, "-c", _STEPPED_WRITER, path, here], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            def step(want):
                line = child.stdout.readline().strip()
                assert line == want, (line, want)
            step("committed")
            c1 = mtokcache.open(path)
            assert len(c1) == 10 and not c1.shard_entries[0]["sealed"]
            assert np.array_equal(c1[9]["indices"], recs[9]["indices"])
            assert c1.index_of(recs[9]["id"], recs[9]["view"]) == 9
            assert c1.index_of(recs[12]["id"], recs[12]["view"]) is None  # committed, not listed
            assert c1.batch([9, 0])["ids"] == [recs[9]["id"], recs[0]["id"]]
            child.stdin.write("\n")
            child.stdin.flush()
            step("listed")
            c2 = mtokcache.open(path)
            assert len(c2) == 16 and np.array_equal(c2[15]["indices"], recs[15]["indices"])
            assert c2.index_of(recs[12]["id"], recs[12]["view"]) == 12
            assert np.array_equal(c1[9]["indices"], recs[9]["indices"]) and len(c1) == 10
            child.stdin.write("\n")
            child.stdin.flush()
            step("finished")
            c3 = mtokcache.open(path)
            assert c3.manifest["complete"] and c3.shard_entries[0]["sealed"]
            assert [c3[i]["id"] for i in range(16)] == [r["id"] for r in recs]
            assert c2[15]["id"] == recs[15]["id"] and c1[9]["id"] == recs[9]["id"]
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_shard_holding_fewer_records_than_listed_is_refused():
    """An unsealed shard may hold more records than its manifest entry, never fewer; a sealed one
    holds exactly as many."""
    with TempDir() as d:
        w = mtokcache.Writer(d + "/c", settings={"test": True}, records_per_chunk=4)
        for r in make_records(10):
            w.append(**r)
        w.close()  # 10 records in shard-00000, unsealed
        mpath = d + "/c/manifest.json"
        good = json.load(open(mpath))
        for sealed, records, ok in ((False, 9, True), (False, 10, True), (False, 11, False), (True, 9, False),
                                    (True, 11, False)):
            m = json.loads(json.dumps(good))
            m["shards"] = [{"file": "shards/shard-00000.mdb", "records": records, "payload_bytes": 0,
                            "compressed_bytes": 0, "bytes": 0, "sealed": sealed}]
            json.dump(m, open(mpath, "w"))
            c = mtokcache.open(d + "/c")
            try:
                got = c[records - 1]["id"]
            except mtokcache.ShardMismatchError as e:
                assert not ok, e
                assert "holds '10' records, manifest says %d" % records in str(e), e
            else:
                assert ok and got == "img/%05d.jpg" % (records - 1), (sealed, records, got)
                assert len(c) == records and c.index_of("img/00009.jpg", 0) == (9 if records == 10 else None)
            c.close()


def test_writers_lock_files_do_not_block_other_shards():
    """A writer's lock file beside a shard (shard-NNNNN.mdb-lock) plays no part in reading. py-lmdb
    refuses a second environment whose files it has open; a writer that deletes one shard's lock
    file and creates the next one's often gets the freed inode number, so two lock files with the
    same inode (a hard link here) must not keep the second shard from opening."""
    with TempDir() as d:
        recs = list(make_records(12))
        write(d + "/c", recs, records_per_chunk=4, shard_cap_bytes=1)
        shards = d + "/c/shards/"
        assert sorted(os.listdir(shards))[:2] == ["shard-00000.mdb", "shard-00001.mdb"]
        open(shards + "shard-00000.mdb-lock", "wb").close()
        os.link(shards + "shard-00000.mdb-lock", shards + "shard-00001.mdb-lock")
        c = mtokcache.open(d + "/c")
        assert [c[i]["id"] for i in range(12)] == [r["id"] for r in recs]


_BUSY_WRITER = _CHILD + r"""
w = mtokcache.Writer(sys.argv[1], settings={"test": True}, records_per_chunk=4, shard_cap_bytes=60000)
for i, r in enumerate(make_records(240)):
    w.append(**r)
    if i % 3 == 2:
        w.flush()
w.finish()
"""


def test_readers_during_a_busy_write():
    """Caches opened over and over while a writer commits (and seals shards) read the last listed
    record every time."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    recs = list(make_records(240))
    with TempDir() as d:
        path = d + "/c"
        child = subprocess.Popen([sys.executable, "-c", _BUSY_WRITER, path, here])
        try:
            seen = set()
            while True:
                # Once the writer has exited, one more read (of the finished cache, if it finished).
                exited = child.poll() is not None
                try:
                    c = mtokcache.open(path)
                except mtokcache.NotACacheError:
                    c = None  # not created yet
                n = 0 if c is None else len(c)
                if n:
                    got = c[n - 1]
                    assert got["id"] == recs[n - 1]["id"] and np.array_equal(got["indices"], recs[n - 1]["indices"])
                    assert c.index_of(recs[n - 1]["id"], recs[n - 1]["view"]) == n - 1
                    seen.add(n)
                if c is not None:
                    c.close()
                if exited:
                    break
            assert child.wait() == 0
            c = mtokcache.open(path)
            assert len(c) == 240 and c.manifest["complete"] and len(c.shard_entries) > 2
            assert c[239]["id"] == recs[239]["id"]
            assert len(seen) > 3, seen
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_seal_after_a_flushed_partial_chunk():
    """A flush() whose partial chunk takes the shard past its cap seals the shard with that chunk
    last; the records after it go to the next shard, once each."""
    import hashlib
    with TempDir() as d:
        recs = list(make_records(10))
        w = mtokcache.Writer(d + "/c", settings={"test": True}, records_per_chunk=4, shard_cap_bytes=1)
        for r in recs[:2]:
            w.append(**r)
        w.flush()  # 2 records, past the cap: sealed
        for r in recs[2:]:
            w.append(**r)
        w.finish()
        c = mtokcache.open(d + "/c")
        assert [s["records"] for s in c.shard_entries] == [2, 4, 4], c.shard_entries
        assert [c[i]["id"] for i in range(len(c))] == [r["id"] for r in recs]
        h = hashlib.sha256()
        for i in range(len(c)):
            h.update(hashlib.sha256(c.payload(i)).digest())
        assert c.manifest["content_digest"] == "sha256:" + h.hexdigest()


def test_resume_refuses_another_latent_dtype_and_keeps_the_layout():
    """The manifest does not store the latents' dtype: a resumed writer compares it with the
    records', since a cache of mixed dtypes passes `mtok verify` but its batches fail. Its layout
    (records_per_chunk, compression, shard cap) wins over the arguments, as in the Swift writer."""
    recs = list(make_records(30))
    with TempDir() as d:
        for finished in (False, True):
            path = "%s/c%d" % (d, finished)
            w = mtokcache.Writer(path, settings={"test": True}, latent_dtype="bf16", records_per_chunk=4,
                                 shard_cap_bytes=6000)
            for r in recs[:10]:
                w.append(**r)
            w.finish() if finished else w.close()
            for other in ("f32", "f16"):
                refused(mtokcache.SettingsMismatchError,
                        lambda: mtokcache.Writer(path, settings={"test": True}, latent_dtype=other, resume=True),
                        ['latent_dtype is "bf16" there, "%s" now' % other])
            w = mtokcache.Writer(path, settings={"test": True}, latent_dtype="bf16", records_per_chunk=8,
                                 compression_level=9, shuffle="none", shard_cap_bytes=1 << 20, resume=True)
            assert (w.R, w.level, w.shuffle, w.cap) == (4, 3, "byte-planes", 6000), (w.R, w.level, w.shuffle, w.cap)
            for r in recs[10:]:
                w.append(**r)
            w.finish()
            c = mtokcache.open(path)
            b = c.batch(range(len(c)))
            assert len(c) == 30 and b["ids"] == [r["id"] for r in recs] and b["latents"].shape == (30, 16, 4)
            assert c.manifest["records_per_chunk"] == 4 and c.manifest["compression"]["shuffle"] == "byte-planes"
        # A cache without records has no dtype yet: any goes.
        mtokcache.Writer(d + "/e", settings={"test": True}, latent_dtype="bf16").close()
        write(d + "/e", recs[:3], latent_dtype="f32", resume=True)
        assert mtokcache.open(d + "/e")[2]["dtypes"]["latents"] == "F32"


def test_writer_keeps_the_first_records_dtypes():
    """Every record of a cache stores each tensor in the dtype of the cache's first record, and
    has a logvar if and only if that one has (the readers batch records of one layout only):
    append refuses another record, naming the tensor and both dtypes, and adds nothing; a resumed
    writer holds to the first record of the cache it continues, in a sealed shard or not."""
    recs = list(make_records(30))
    u16 = lambda r: dict(r, indices=r["indices"].astype(np.uint16))
    u32 = lambda r: dict(r, indices=r["indices"].astype(np.uint32))
    u8 = lambda r: dict(r, groups=r["groups"].astype(np.uint8))
    with_logvar = lambda r: dict(r, logvar=r["latents"])
    without_logvar = lambda r: {k: v for k, v in r.items() if k != "logvar"}
    cases = [  # (the first record's form, [(another form, words)])
        (lambda r: r, [(u16, "indices are U16 here, U32 in the cache"), (u8, "groups are U8 here, U16 in the cache"),
                       (with_logvar, "logvar is BF16 here, absent in the cache")]),
        (with_logvar, [(without_logvar, "logvar is absent here, BF16 in the cache"),
                       (u16, "indices are U16 here")]),
        (u16, [(u32, "indices are U32 here, U16 in the cache")])]
    with TempDir() as d:
        for n, (first, others) in enumerate(cases):
            path = "%s/c%d" % (d, n)
            w = mtokcache.Writer(path, settings={"test": True}, records_per_chunk=4, shard_cap_bytes=6000)

            def check(w, r):
                count = len(w)
                for change, words in others:
                    refused(ValueError, lambda: w.append(**change(first(r))), [words])
                assert len(w) == count
                w.append(**first(r))
            for r in recs[:10]:
                w.append(**first(r))
            check(w, recs[10])
            w.close()
            for _ in range(2):
                w = mtokcache.Writer(path, settings={"test": True}, resume=True)
                check(w, recs[w.committed])
                w.close()
            c = mtokcache.open(path)
            # The first record is in a sealed shard, the last ones in the unsealed next one.
            assert len(c) == 13 and len(c.batch(range(13))["ids"]) == 13 and len(c.shard_entries) > 1
            c.close()


_COUNTING_READER = _CHILD + r"""
c = mtokcache.open(sys.argv[1])
print(len(c), c[len(c) - 1]["id"] if len(c) else "-", c.batch(range(len(c)))["ids"] == [c[i]["id"] for i in range(len(c))])
"""


def test_manifest_lists_the_open_shard():
    """Every commit is listed, the shard being written with `sealed: false` (FORMAT 2, 6.2), as
    the Swift writer lists it: readers in other processes see the records as they are committed,
    and an unfinished cache is one `mtok verify` calls unfinished, not one with an unlisted shard."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    recs = list(make_records(12))
    with TempDir() as d:
        path = d + "/c"

        def other_process():
            out = subprocess.run([sys.executable, "-c", _COUNTING_READER, path, here], stdout=subprocess.PIPE,
                                 text=True, check=True).stdout.split()
            return int(out[0]), out[1], out[2]

        w = mtokcache.Writer(path, settings={"test": True}, records_per_chunk=4, commit_every=1)
        w.MANIFEST_INTERVAL_S = 0  # list every commit (see test_manifest_lags_commits_until_flush)
        assert json.load(open(path + "/manifest.json"))["shards"] == []
        for r in recs[:6]:
            w.append(**r)  # records 0 ... 3: one chunk, committed
        m = json.load(open(path + "/manifest.json"))
        assert len(m["shards"]) == 1 and m["totals"]["records"] == 4, m["shards"]
        e = m["shards"][0]
        assert e["file"] == "shards/shard-00000.mdb" and not e["sealed"] and "sha256" not in e, e
        assert e["bytes"] == m["totals"]["bytes_on_disk"] and 0 < e["bytes"] <= os.path.getsize(path + "/" + e["file"])
        assert e["payload_bytes"] > e["compressed_bytes"] > 0
        assert other_process() == (4, recs[3]["id"], "True")
        w.flush()
        assert other_process() == (6, recs[5]["id"], "True")
        for r in recs[6:9]:
            w.append(**r)
        w.close()  # commits the partial chunk: 9 records, unfinished
        m = json.load(open(path + "/manifest.json"))
        assert [(s["records"], s["sealed"]) for s in m["shards"]] == [(9, False)] and not m["complete"]
        assert other_process() == (9, recs[8]["id"], "True")
        with mtokcache.Writer(path, settings={"test": True}, resume=True) as w:
            assert w.committed == 9
            for r in recs[9:]:
                w.append(**r)
        m = json.load(open(path + "/manifest.json"))
        assert m["complete"] and [(s["records"], s["sealed"]) for s in m["shards"]] == [(12, True)]
        assert other_process() == (12, recs[11]["id"], "True")


def test_manifest_lags_commits_until_flush():
    """Chunk commits rewrite the manifest at most once a MANIFEST_INTERVAL_S (each rewrite costs
    two fsyncs); readers see the lagging count, flush() lists everything, and a writer resumed
    after a crash takes the shard's own count."""
    recs = list(make_records(12))
    with TempDir() as d:
        path = d + "/c"
        w = mtokcache.Writer(path, settings={"test": True}, records_per_chunk=4, commit_every=1)
        w.MANIFEST_INTERVAL_S = 3600
        for r in recs[:9]:
            w.append(**r)  # two chunks committed, neither listed yet
        assert json.load(open(path + "/manifest.json"))["totals"]["records"] == 0
        assert len(mtokcache.open(path)) == 0
        w.flush()
        assert json.load(open(path + "/manifest.json"))["totals"]["records"] == 9
        for r in recs[9:]:
            w.append(**r)
        w._close_env()  # dropped without close(): as after a crash
        w._unlock()
        w._finished = True
        with mtokcache.Writer(path, settings={"test": True}, resume=True) as r:
            assert r.committed == 12


def test_a_cache_in_the_writers_process_reads_the_open_shard():
    """py-lmdb opens a file once per process: a Cache opened beside a Writer reads the shard being
    written through the writer's environment, and opens the file itself once the writer seals or
    closes it."""
    from mtokcache import reader
    open_before = len(reader._REGISTRY)
    recs = list(make_records(40))
    with TempDir() as d:
        path = d + "/c"
        w = mtokcache.Writer(path, settings={"test": True}, records_per_chunk=4, commit_every=1, shard_cap_bytes=60000)
        w.MANIFEST_INTERVAL_S = 0
        for r in recs[:6]:
            w.append(**r)
        c1 = mtokcache.open(path)
        assert len(c1) == 4 and c1[3]["id"] == recs[3]["id"]
        assert c1._shards[0]._env.borrowed and c1._shards[0].env is w._env
        assert c1.index_of(recs[5]["id"], recs[5]["view"]) is None  # committed later
        w.flush()
        c2 = mtokcache.open(path)
        assert len(c2) == 6 and c2.batch([5, 0])["ids"] == [recs[5]["id"], recs[0]["id"]]
        assert c2.index_of(recs[5]["id"], recs[5]["view"]) == 5
        for r in recs[6:37]:
            w.append(**r)
        assert len(w._shards) >= 2 and w._env is not None, "wanted shards sealed, one open"
        c3 = mtokcache.open(path)
        n = len(c3)
        assert n > w._shards[0]["records"] and c3[n - 1]["id"] == recs[n - 1]["id"]
        assert c3._shards[-1]._env.borrowed
        # Shard 0, which c1 and c2 list unsealed, was sealed meanwhile: they read the sealed file.
        assert c1[3]["id"] == recs[3]["id"] and c2[5]["id"] == recs[5]["id"]
        assert not c1._shards[0]._env.borrowed and c2.index_of(recs[5]["id"], recs[5]["view"]) == 5
        w.close()
        assert c3[n - 1]["id"] == recs[n - 1]["id"] and c3.index_of(recs[n - 1]["id"], recs[n - 1]["view"]) == n - 1
        assert not c3._shards[-1]._env.borrowed and not reader._WRITING
        for c in (c1, c2, c3):
            c.close()
        with mtokcache.Writer(path, settings={"test": True}, resume=True) as w:
            assert w.committed == 37
            for r in recs[37:]:
                w.append(**r)
            w.flush()
            c4 = mtokcache.open(path)
            assert [c4[i]["id"] for i in range(40)] == [r["id"] for r in recs]
        assert [c4[i]["id"] for i in range(40)] == [r["id"] for r in recs]
        c4.close()
        assert not reader._WRITING and len(reader._REGISTRY) == open_before


def test_resume_while_a_cache_of_it_is_open():
    """Resuming reads the sealed shards through the readers' environments; the unsealed last
    shard, which the writer opens for writing, must not be open in a Cache of this process: a
    clear error says to close it."""
    recs = list(make_records(30))
    with TempDir() as d:
        path = d + "/c"
        write(path, recs[:20], records_per_chunk=4, shard_cap_bytes=60000, commit_every=1)  # finished: every shard sealed
        c = mtokcache.open(path)
        assert c[19]["id"] == recs[19]["id"] and len(c.shard_entries) > 1
        w = mtokcache.Writer(path, settings={"test": True}, resume=True)
        for r in recs[20:23]:
            w.append(**r)
        w.close()  # unfinished: its last shard unsealed
        assert c[19]["id"] == recs[19]["id"] and len(c) == 20
        c2 = mtokcache.open(path)
        assert c2[22]["id"] == recs[22]["id"] and not c2.shard_entries[-1]["sealed"]
        refused(mtokcache.InUseError, lambda: mtokcache.Writer(path, settings={"test": True}, resume=True),
                ["close it", c2.shard_entries[-1]["file"]])
        assert c2[22]["id"] == recs[22]["id"]  # the refused writer left it as it was
        c2.close()
        with mtokcache.Writer(path, settings={"test": True}, resume=True) as w:
            assert w.committed == 23
            for r in recs[23:]:
                w.append(**r)
        got = mtokcache.open(path)
        assert [got[i]["id"] for i in range(30)] == [r["id"] for r in recs] and got.manifest["complete"]
        assert c[19]["id"] == recs[19]["id"]


def test_resume_in_the_process_of_a_dropped_writer():
    """A Writer dropped without close() (an exception in a loop, say) releases its open shard: the
    same process can resume the cache, and read it."""
    import gc
    from mtokcache import reader
    recs = list(make_records(10))
    with TempDir() as d:
        w = mtokcache.Writer(d + "/c", settings={"test": True}, records_per_chunk=4, commit_every=1)
        w.MANIFEST_INTERVAL_S = 0
        for r in recs[:6]:
            w.append(**r)
        c = mtokcache.open(d + "/c")
        assert c[3]["id"] == recs[3]["id"]  # through the writer's environment
        del w
        gc.collect()
        assert not reader._WRITING
        assert c[3]["id"] == recs[3]["id"]  # the file itself now
        c.close()
        with mtokcache.Writer(d + "/c", settings={"test": True}, resume=True) as w:
            assert w.committed == 4
            for r in recs[4:]:
                w.append(**r)
        assert [mtokcache.open(d + "/c")[i]["id"] for i in range(10)] == [r["id"] for r in recs]


def test_writer_refuses_bad_metadata():
    """Metadata the readers would refuse (FORMAT 4.1) is refused at append, naming the field, and
    leaves nothing behind."""
    with TempDir() as d:
        w = mtokcache.Writer(d + "/c", settings={"test": True})
        good = next(make_records(1))
        bad = [("source_size", (-1, 5)), ("source_size", (1,)), ("source_size", (1.5, 2)), ("source_size", "640,480"),
               ("source_size", None), ("source_size", (2**63, 1)), ("crop_box", (-3, 0, 1, 1)),
               ("crop_box", (0, 0, 1)), ("crop_box", (0, 0, 1, np.float32(2))), ("view", -1), ("view", 65536),
               ("view", 1.5), ("view", True), ("view", "1"), ("label", -2), ("label", 0.5), ("label", "3"),
               ("label", 2**63), ("id", ""), ("id", b"img"), ("id", "a\x00b"), ("id", "x" * 509), ("id", "\udc80"),
               ("id", None), ("source_sha256", "AB" * 32), ("source_sha256", "ab"), ("source_sha256", None)]
        for field, value in bad:
            e = refused(ValueError, lambda: w.append(**dict(good, **{field: value})), case=(field, value))
            assert str(e).startswith(field + " must"), (field, value, e)
        assert len(w) == 0
        w.append(**dict(good, view=np.uint16(7), label=np.int64(-1), source_size=np.array([3, 4]),
                        crop_box=[0, 1, 2, 2], source_sha256=""))
        w.finish()
        c = mtokcache.open(d + "/c")
        assert len(c) == 1
        r = c[0]
        assert (r["view"], r["label"], r["source_size"], r["crop_box"]) == (7, -1, (3, 4), (0, 1, 2, 2))


def test_manifest_types_and_compression_refused():
    """Manifests the Swift reader refuses: JSON types other than FORMAT.md 2's (numbers as
    strings, ...) are not a cache; an unknown codec or shuffle is an unknown version."""
    with TempDir() as d:
        write(d + "/c", make_records(3))
        mpath = d + "/c/manifest.json"
        good = json.load(open(mpath))
        os.chmod(mpath, 0o644)
        cases = [
            (lambda m: m["compression"].update(codec="lz4"), mtokcache.UnknownVersionError,
             "compression lz4/byte-planes is not known"),
            (lambda m: m["compression"].update(shuffle="bit-planes"), mtokcache.UnknownVersionError,
             "compression zstd/bit-planes is not known"),
            (lambda m: m.update(format_version="1"), mtokcache.UnknownVersionError, "format_version '1'"),
            (lambda m: m.update(format_version=True), mtokcache.UnknownVersionError, "format_version True"),
            (lambda m: m["shards"][0].update(records="3"), mtokcache.NotACacheError,
             "shards[0].records must be an integer"),
            (lambda m: m["shards"][0].update(records=2.5), mtokcache.NotACacheError, "shards[0].records"),
            (lambda m: m["totals"].update(records="3"), mtokcache.NotACacheError, "totals.records"),
            (lambda m: m.update(records_per_chunk="16"), mtokcache.NotACacheError, "records_per_chunk"),
            (lambda m: m["shards"][0].update(sealed="true"), mtokcache.NotACacheError, "shards[0].sealed"),
            (lambda m: m["shards"][0].pop("sealed"), mtokcache.NotACacheError, "lacks the field shards[0].sealed"),
            (lambda m: m["shards"][0].update(file=7), mtokcache.NotACacheError, "shards[0].file"),
            (lambda m: m["shards"].append(5), mtokcache.NotACacheError, "shards[1]"),
            (lambda m: m.update(shards={}), mtokcache.NotACacheError, "shards must be an array"),
            (lambda m: m.update(compression="zstd"), mtokcache.NotACacheError, "compression must be an object"),
            (lambda m: m["compression"].update(level="3"), mtokcache.NotACacheError, "compression.level"),
            (lambda m: m.pop("totals"), mtokcache.NotACacheError, "lacks the field totals"),
            (lambda m: m.update(complete=1), mtokcache.NotACacheError, "complete must be true or false"),
            (lambda m: m.update(classes=["a", 1]), mtokcache.NotACacheError, "classes"),
            (lambda m: m.update(part={"rank": "0", "world_size": 1}), mtokcache.NotACacheError, "part.rank"),
            (lambda m: m.update(arithmetic={}), mtokcache.NotACacheError, "arithmetic must be an array"),
            (lambda m: m["totals"].update(records=1 << 64), mtokcache.NotACacheError, "totals.records"),
            (lambda m: m.update(arithmetic=[{"first_record": 0, "records": "3"}]), mtokcache.NotACacheError,
             "arithmetic[0].records"),
            (lambda m: m.update(arithmetic=[{"first_record": 0, "records": 3, "made_by": {"revision": 3, "blas": "x"}}]),
             mtokcache.NotACacheError, "lacks the field arithmetic[0].made_by.kernel"),
        ]
        for change, error, words in cases:
            m = json.loads(json.dumps(good))
            change(m)
            json.dump(m, open(mpath, "w"))
            refused(error, lambda: mtokcache.open(d + "/c"), [words, "manifest.json"])
        # Integral JSON numbers written as 3.0, and optional fields left null, are still a cache.
        m = json.loads(json.dumps(good))
        m["shards"][0]["records"] = 3.0
        m["format_version"] = 1.0
        m.update(classes=None, part=None, inputs_done=None, arithmetic=[
            {"first_record": 0, "records": 3, "made_by": {"revision": 3, "blas": "OpenBLAS 0.3.21", "kernel": "Haswell"}}])
        json.dump(m, open(mpath, "w"))
        c = mtokcache.open(d + "/c")
        assert len(c) == 3 and c[2]["id"] == "img/00002.jpg"


def test_negative_index_out_of_range_names_the_callers_index():
    with TempDir() as d:
        write(d + "/c", make_records(6))
        c = mtokcache.open(d + "/c")
        assert c[-6]["id"] == c[0]["id"] and c[-1]["id"] == c[5]["id"]
        for i in (-7, -600, 6):
            refused(IndexError, lambda: c[i], ["index %d not in " % i])


def have_torch():
    """True when torch imports; says the test is skipped otherwise (torch is optional)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("       (torch not installed: skipped)")
        return False
    return True


def test_loader_batches_equal_collated_samples_and_options_are_named_as_in_cache():
    """DataLoader batches of both datasets (whose samples hand the decoded batch on, see
    Sample) equal PyTorch's default collate of to_sample dicts, for whole batches, partial and
    reordered lists of samples; latent_format and index_dtype give the types they name, and
    compact=True still means the two of them, with a DeprecationWarning."""
    if not have_torch():
        return
    import warnings
    import torch
    from torch.utils.data import DataLoader, default_collate
    from mtokcache.datasets import CacheDataset, CacheIterableDataset, Sample, to_sample

    def same(a, b):
        assert list(a) == list(b), (list(a), list(b))
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k

    with TempDir() as d:
        write(d + "/c", make_records(40, logvar=True), records_per_chunk=4)
        for fmt, ints in (("raw", "int32"), ("f32", "int64")):
            c = mtokcache.open(d + "/c", latent_format=fmt)
            ds = CacheDataset(d + "/c", latent_format=fmt, index_dtype=ints)
            for b in DataLoader(ds, batch_size=8, num_workers=2, sampler=[5, 3, 39, 7, 0] * 4):
                same(b, default_collate([to_sample(c[i], ints) for i in b["index"].tolist()]))
                assert b["indices"].dtype == getattr(torch, ints)
                assert b["latents"].dtype == (torch.bfloat16 if fmt == "raw" else torch.float32)
            rows = ds.__getitems__([1, 2, 3])
            assert isinstance(rows[0], Sample)
            same(dict(rows[1]), to_sample(c[2], ints))
            same(default_collate([rows[2], rows[0]]), default_collate([to_sample(c[3], ints), to_sample(c[1], ints)]))
            it = CacheIterableDataset(d + "/c", batch_size=8, seed=3, latent_format=fmt, index_dtype=ints)
            for b in DataLoader(it, batch_size=8, num_workers=2):
                same(b, default_collate([to_sample(c[i], ints) for i in b["index"].tolist()]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = CacheDataset(d + "/c", compact=True)
        assert old.latent_format == "raw" and old.index_dtype == "int32"
        assert any(issubclass(w.category, DeprecationWarning) for w in caught)
        refused(ValueError, lambda: CacheDataset(d + "/c", latent_format="f16"), ["latent_format"])
        refused(ValueError, lambda: CacheDataset(d + "/c", index_dtype="int16"), ["index_dtype"])


def test_iterable_dataset_epochs_reach_persistent_workers():
    """set_epoch and set_start reach DataLoader workers that persist across epochs (fork and
    spawn), and num_workers=0 follows them too: each epoch's samples are the rank's stream."""
    if not have_torch():
        return
    from torch.utils.data import DataLoader
    from mtokcache.datasets import CacheIterableDataset
    with TempDir() as d:
        write(d + "/c", make_records(45), records_per_chunk=4)
        c = mtokcache.open(d + "/c")
        for workers, context in ((2, "fork"), (2, "spawn"), (0, None)):
            ds = CacheIterableDataset(d + "/c", seed=5, batch_size=4, rank=1, world_size=2)
            extra = dict(persistent_workers=True, multiprocessing_context=context) if workers else {}
            loader = DataLoader(ds, batch_size=4, num_workers=workers, **extra)
            for epoch, start in ((0, 0), (1, 0), (2, 6)):
                ds.set_epoch(epoch)
                if start:
                    ds.set_start(start)
                got = [int(i) for batch in loader for i in batch["index"]]
                want = c.stream_indices(1, 2, epoch, 5, start=start).tolist()
                assert got == want, (workers, context, epoch, got, want)
                assert len(ds) == len(want)
            del loader


def test_loader_batches_that_break_the_stream_order_are_refused():
    """With several workers, a DataLoader that collates another number of samples than the
    dataset's batch_size would reorder the stream: refused with the fix; one worker (or none)
    keeps the order whatever the loader's batch size; batched=True wants batch_size=None."""
    if not have_torch():
        return
    from torch.utils.data import DataLoader
    from mtokcache.datasets import CacheIterableDataset
    with TempDir() as d:
        write(d + "/c", make_records(30), records_per_chunk=4)
        c = mtokcache.open(d + "/c")
        want = c.stream_indices(0, 1, 0, 5).tolist()
        ds = CacheIterableDataset(d + "/c", seed=5, batch_size=4)
        refused(ValueError, lambda: [b for b in DataLoader(ds, batch_size=6, num_workers=2)],
                ["collates 6 samples", "batch_size is 4", "DataLoader(batch_size=4)"])
        for workers in (0, 1):
            got = [int(i) for b in DataLoader(ds, batch_size=6, num_workers=workers) for i in b["index"]]
            assert got == want, (workers, got)
        got = [int(i) for b in DataLoader(ds, batch_size=4, num_workers=2) for i in b["index"]]
        assert got == want, got
        batched = CacheIterableDataset(d + "/c", seed=5, batch_size=4, batched=True)
        refused(ValueError, lambda: next(iter(DataLoader(batched, batch_size=4))), ["batch_size=None"])
        got = [int(i) for b in DataLoader(batched, batch_size=None, num_workers=2) for i in b["index"]]
        assert got == want, got


def test_iterable_dataset_takes_any_unsigned_epoch_and_start():
    """Epochs are unsigned 64-bit and a start may lie past the epoch (STREAM.md): the dataset's
    shared int64 progress tensor holds both; a negative start is refused."""
    if not have_torch():
        return
    from mtokcache.datasets import CacheIterableDataset
    with TempDir() as d:
        write(d + "/c", make_records(9), records_per_chunk=4)
        c = mtokcache.open(d + "/c")
        ds = CacheIterableDataset(d + "/c", seed=5, batch_size=2)
        for epoch in (2**63, 2**64 - 1):
            ds.set_epoch(epoch)
            assert ds.epoch == epoch
            got = [int(r["index"]) for r in ds]
            assert got == c.stream_indices(0, 1, epoch, 5).tolist(), (epoch, got)
        for start in (2**63, 2**64 - 1, 2**100):
            ds.set_start(start)
            assert list(ds) == [] and len(ds) == 0, start
        refused(ValueError, lambda: ds.set_start(-1), ["0 or more"])
        refused(ValueError, lambda: ds.set_epoch(2**64), ["2**64 - 1"])


def test_damaged_frame_header_is_a_located_corrupt_record():
    """A frame whose zstd magic number is damaged, or too short for a frame header (zstandard's
    frame_content_size raises on both), is a CorruptRecordError naming shard, chunk and index
    in every read path."""
    with TempDir() as d:
        recs = list(make_records(12))
        write(d + "/c", recs, records_per_chunk=4)

        def damage(chunk):
            frames = chunk_frames(chunk)
            frames[1] = bytes([frames[1][0] ^ 0xFF]) + frames[1][1:]  # record 5: the magic number
            frames[2] = frames[2][:3]  # record 6: 3 bytes
            return pack_chunk(frames)
        rewrite_chunk(d + "/c", 1, damage)
        c = mtokcache.open(d + "/c")
        for i in (5, 6):
            r = recs[i]
            for read in (lambda: c[i], lambda: c.get(r["id"], r["view"]), lambda: c.batch([4, i]),
                         lambda: c.payload(i)):
                e = refused(mtokcache.CorruptRecordError, read, ["not a zstd frame"])
                assert e.location == {"shard": "shards/shard-00000.mdb", "chunk": 1, "index": i}, e.location
        for batch_size in (None, 5):
            e = refused(mtokcache.CorruptRecordError, lambda: list(c.stream(0, 1, 0, 0, batch_size=batch_size)))
            assert e.location["index"] in (5, 6), e.location
        assert c[4]["id"] == recs[4]["id"] and c[7]["id"] == recs[7]["id"]
        c.close()


def refused_at_record_5(d, cases):
    """For each (header edit, words) (see rewrite_header): a copy of a cache of 8 records whose
    record 5 has the edited header; every read path, the PyTorch datasets' too when torch is
    installed, refuses it with a BadRecordError at the record, while record 4 reads."""
    try:
        from mtokcache.datasets import CacheDataset, CacheIterableDataset
    except ImportError:
        CacheDataset = CacheIterableDataset = None
    recs = list(make_records(8))
    write(d + "/good", recs, records_per_chunk=4)
    r = recs[5]
    for n, (edit, words) in enumerate(cases):
        path = "%s/case%d" % (d, n)
        shutil.copytree(d + "/good", path)
        rewrite_header(path, 5, 4, edit)
        c = mtokcache.open(path)
        reads = [lambda: c[5], lambda: c.get(r["id"], r["view"]), lambda: c.batch([4, 5]),
                 lambda: list(c.stream(0, 1, 0, 0)), lambda: list(c.stream(0, 1, 0, 0, batch_size=8))]
        if CacheDataset is not None:
            reads += [lambda: CacheDataset(path)[5], lambda: CacheDataset(path).__getitems__([4, 5]),
                      lambda: list(CacheIterableDataset(path, batch_size=3)),
                      lambda: list(CacheIterableDataset(path, batch_size=3, batched=True))]
        for read in reads:
            e = refused(mtokcache.BadRecordError, read, words)
            assert (e.location["index"], e.location["chunk"]) == (5, 1), (words, e.location)
        assert c[4]["id"] == recs[4]["id"]
        c.close()


def test_labels_outside_int32_refused():
    """FORMAT 4.1: labels are -1 ... 2147483647 (batches carry them as int32). The writer refuses
    others, naming the range; a stored one outside it, however large, is a BadRecordError at the
    record in every read path (not an OverflowError from batch, nor a huge int from c[i])."""
    with TempDir() as d:
        recs = list(make_records(3))
        w = mtokcache.Writer(d + "/c", settings={"test": True})
        for label in (2**31, 2**40, 2**63 - 1, -2):
            refused(ValueError, lambda: w.append(**dict(recs[0], label=label)),
                    ["label must be -1 ... 2147483647", "got %d" % label])
        assert len(w) == 0
        w.append(**dict(recs[0], label=2147483647))
        w.append(**dict(recs[1], label=-1))
        w.finish()
        c = mtokcache.open(d + "/c")
        assert (c[0]["label"], c[1]["label"]) == (2147483647, -1)
        assert c.batch([0, 1])["labels"].tolist() == [2147483647, -1]
        c.close()
        refused_at_record_5(d, [(set_metadata(label=v), ["label %s outside -1 ... 2147483647" % v])
                                for v in ("2147483648", "99999999999999999999999", "-2")])


def test_view_size_and_crop_box_outside_range_or_form_refused():
    """FORMAT 4.1: a stored view outside 0 ... 65535, and a source_size or crop_box that is not
    non-negative decimal integers separated by commas, are BadRecordErrors in every read path."""
    with TempDir() as d:
        refused_at_record_5(d, [(set_metadata(**{field: value}), words) for field, value, words in (
            ("view", "70000", ["view 70000 outside 0 ... 65535"]), ("view", "65536", ["view 65536 outside"]),
            ("source_size", "640, 480", ["source_size"]), ("source_size", "640,480,1", ["source_size"]),
            ("source_size", "-1,480", ["source_size"]), ("crop_box", "0,0,1", ["crop_box"]),
            ("crop_box", "0,0,1,x", ["crop_box"]), ("crop_box", "0,0,1,1 ", ["crop_box"]))])


def test_header_with_a_duplicate_key_refused():
    """JSON readers disagree on a key named twice (Python's json keeps the last value, Swift's
    parser refuses it), so a record header that names one twice, in its metadata, at its top
    level (__metadata__ or a tensor) or in a tensor entry, is a BadRecordError at the record in
    every read path: a record that Swift refuses must not read as another record in Python."""
    def twice(key):
        """An edit that names the top-level `key` a second time, with the same value."""
        def edit(text):
            value = json.dumps(json.loads(text)[key], separators=(",", ":"))
            return text[:-1] + ',"%s":%s}' % (key, value)
        return edit

    def meta_last(text):
        """__metadata__ after the tensors (a header the fast path does not take), naming id twice."""
        header = json.loads(text)
        meta = json.dumps(header.pop("__metadata__"), separators=(",", ":"))
        return json.dumps(header, separators=(",", ":"))[:-1] + ',"__metadata__":%s}' % meta.replace(
            '"id":', '"id":"other","id":', 1)
    with TempDir() as d:
        refused_at_record_5(d, [
            (lambda text: text.replace('"label":"4"', '"label":"4","label":"117"', 1), ['the key "label" twice']),
            (lambda text: text.replace('"label":"4"', '"label":"117","label":"4"', 1), ['the key "label" twice']),
            (twice("__metadata__"), ['the key "__metadata__" twice']),
            (twice("groups"), ['the key "groups" twice']),
            (lambda text: text.replace('"dtype":', '"dtype":"U8","dtype":', 1), ['the key "dtype" twice']),
            (meta_last, ['the key "id" twice'])])


def test_header_shapes_must_be_whole_numbers():
    """A shape of 15.5, "16" or true is no shape (Swift's parser takes whole numbers only): int()
    would have read them as 15, 16 and 1, and a fitting data length would then read as a record."""
    def shape(first):
        def edit(text):
            header = json.loads(text)
            name = next(k for k in header if k != "__metadata__")
            header[name]["shape"][0] = first
            return json.dumps(header, separators=(",", ":"))
        return edit
    with TempDir() as d:
        refused_at_record_5(d, [(shape(v), ["not a list of whole numbers"]) for v in (15.5, "16", True)])


def test_chunk_offsets_and_frames_checked_as_the_format_states():
    """FORMAT 3.2: offsets[0] = 0, non-decreasing, offsets[n] = the bytes of the frames; else
    every record of the chunk is refused, even one whose own slot is intact. And a slot holds one
    zstd frame with nothing after it (libzstd refuses the rest to Swift): a slot that holds a
    second frame, or other bytes, is refused."""
    with TempDir() as d:
        recs = list(make_records(12))
        write(d + "/good", recs, records_per_chunk=4)

        def ends(frames, first=0):
            out = [first]
            for f in frames:
                out.append(out[-1] + len(f))
            return out
        chunk_wide = (4, 5, 6, 7)
        cases = [
            # Record 4's slot spans two frames; record 7's is intact.
            (lambda f: pack_chunk(f, [ends(f)[i] for i in (0, 2, 1, 3, 4)]), "frame offsets decrease", chunk_wide),
            (lambda f: pack_chunk([b"\0" + f[0]] + f[1:], ends(f, 1)), "offsets[0] = 1, not 0", chunk_wide),
            (lambda f: pack_chunk(f) + b"\0" * 5, "frame offsets end at", chunk_wide),
            (lambda f: pack_chunk([f[0] + b"junk"] + f[1:]), "zstd", (4,)),
            (lambda f: pack_chunk([f[0] + f[1]] + f[1:]), "zstd", (4,)),
        ]
        for n, (change, words, bad) in enumerate(cases):
            path = "%s/case%d" % (d, n)
            shutil.copytree(d + "/good", path)
            rewrite_chunk(path, 1, lambda chunk: change(chunk_frames(chunk)))
            c = mtokcache.open(path)
            for i in range(12):
                if i not in bad:
                    assert c[i]["id"] == recs[i]["id"], (words, i)
                    continue
                for read in (lambda: c[i], lambda: c.batch([i]), lambda: c.payload(i)):
                    e = refused(mtokcache.CorruptRecordError, read, [words])
                    assert e.location == {"shard": "shards/shard-00000.mdb", "chunk": 1, "index": i}, e.location
            c.close()
    # Tables of many records take another path (NumPy): the same checks.
    from mtokcache import reader
    for n in (3, 100):
        good = [0] + [10 * (i + 1) for i in range(n)]
        for table, frames, words in ((good, 10 * n, None), (good[:2] + [5] + good[3:], 10 * n, "decrease"),
                                     ([1] + good[1:], 10 * n, "offsets[0] = 1"), (good, 10 * n + 1, "end at")):
            chunk = struct.pack("<I%dI" % (n + 1), n, *table) + b"\0" * frames
            if words is None:
                assert list(reader._chunk_offsets(chunk, n)) == good
            else:
                refused(ValueError, lambda: reader._chunk_offsets(chunk, n), [words])


def test_manifest_with_a_duplicate_key_refused():
    """JSON readers disagree on a key named twice (Python's json keeps the last value, Swift's
    decoder the first), so a manifest with one anywhere is not a cache."""
    with TempDir() as d:
        write(d + "/c", make_records(3))
        mpath = d + "/c/manifest.json"
        text = json.dumps(json.load(open(mpath)))
        os.chmod(mpath, 0o644)
        assert '"records": 3' in text and '"settings": {"test": true}' in text
        for damaged, key in (('{"format_version": 7, ' + text[1:], "format_version"),
                             (text.replace('"records": 3', '"records": 2, "records": 3', 1), "records"),
                             (text.replace('"settings": {"test": true}', '"settings": {"test": 1, "test": true}'),
                              "test")):
            open(mpath, "w").write(damaged)
            refused(mtokcache.NotACacheError, lambda: mtokcache.open(d + "/c"),
                    [mpath, 'names the key "%s" twice' % key])
        open(mpath, "w").write(text)
        assert len(mtokcache.open(d + "/c")) == 3


def test_self_contradictory_manifest_refused():
    """A shard listed twice (its records would be served twice), under one name or two names of
    the same file, and a complete cache without its digest or with an unsealed shard are
    refused, as Swift refuses them."""
    with TempDir() as d:
        write(d + "/c", make_records(9), records_per_chunk=2, shard_cap_bytes=2048)
        mpath = d + "/c/manifest.json"
        m = json.load(open(mpath))
        assert len(m["shards"]) >= 2 and m["complete"] and m["shards"][0]["file"] == "shards/shard-00000.mdb"
        os.chmod(mpath, 0o644)
        first = m["shards"][0]
        named = lambda file: dict(first, file=file)
        cases = [(dict(m, shards=m["shards"] + m["shards"][:1]), "shard shards/shard-00000.mdb is listed twice")]
        for a, b in (("shards/shard-00000.mdb", "./shards/shard-00000.mdb"),
                     ("shards//shard-00000.mdb", "shards/shard-00000.mdb"),
                     ("./shards/./shard-00000.mdb", "shards//shard-00000.mdb/")):
            cases.append((dict(m, shards=[named(a)] + m["shards"][1:] + [named(b)]),
                          "shard %s is listed twice (as %s)" % (b, a)))
        cases += [(dict(m, content_digest=None), "no content_digest"),
                  (dict(m, shards=[dict(first, sealed=False)] + m["shards"][1:]), "not sealed")]
        for damaged, words in cases:
            json.dump(damaged, open(mpath, "w"))
            refused(mtokcache.NotACacheError, lambda: mtokcache.open(d + "/c"), [mpath, words])
        # Each of those names alone reads the shard.
        for file in ("./shards/shard-00000.mdb", "shards//shard-00000.mdb", "./shards/./shard-00000.mdb"):
            json.dump(dict(m, shards=[named(file)] + m["shards"][1:]), open(mpath, "w"))
            c = mtokcache.open(d + "/c")
            assert len(c) == 9 and c[0]["id"] == "img/00000.jpg"
            c.close()
        json.dump(m, open(mpath, "w"))
        assert len(mtokcache.open(d + "/c")) == 9


def test_stream_from_a_start_past_the_epoch_is_empty():
    """A start at or past the epoch's end, however large, gives no records; a negative one is
    refused, saying what start is."""
    with TempDir() as d:
        write(d + "/c", make_records(10), records_per_chunk=4)
        c = mtokcache.open(d + "/c")
        for rank, world in ((0, 1), (1, 3), (2, 4)):
            for padding in ("pad", "drop"):
                for start in (12, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**100):
                    got = c.stream_indices(rank, world, 0, 7, start=start, padding=padding)
                    assert len(got) == 0 and got.dtype == np.int64, (rank, world, padding, start, got)
                    assert order.rank_count(10, rank, world, start, padding) == 0
        assert list(c.stream(0, 1, 0, 7, start=2**64 - 1)) == []
        assert list(c.stream(0, 1, 0, 7, start=2**64 - 1, batch_size=4)) == []
        assert c.stream_indices(0, 1, 0, 7, start=9).tolist() == c.permutation(0, 7)[9:].tolist()
        refused(ValueError, lambda: c.stream_indices(0, 1, 0, 7, start=-1), ["start is a global position", "-1"])
        c.close()


def main():
    tests = [(k, v) for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print("ok    ", name)
        except Exception as e:  # report every failure, then exit non-zero
            failed += 1
            import traceback
            traceback.print_exc()
            print("FAILED", name, e)
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
