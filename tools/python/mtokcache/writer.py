"""Writing a cache from Python (e.g. in a PyTorch GPU job), written from Schemas/FORMAT.md.

    with mtokcache.Writer("out.mtok", settings={"model": "..."}, latent_dtype="bf16") as w:
        for ...:
            w.append(id="n01440764/x.JPEG", latents=lat, indices=idx, groups=grp, label=0)

The result is a complete cache that `mtok verify --deep` accepts. A job that died (even by
SIGKILL) continues with `Writer(path, ..., resume=True)`: `w.committed` is where to go on from;
what was committed before is kept (FORMAT 6.2), including caches the Swift writer left.
"""

import concurrent.futures
import fcntl
import hashlib
import json
import os
import re
import struct
import time
import weakref

import lmdb
import numpy as np
import zstandard

from . import _accel
from . import reader as _reader
from .errors import InUseError, SettingsMismatchError, ShardMismatchError
from .reader import FORMAT, FORMAT_VERSION, LABEL_MAX, MAX_PAYLOAD, RECORD_FORMAT, SHARD_FORMAT, Cache

_SAFETENSORS = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<u4"): "U32", np.dtype("<u2"): "U16",
                np.dtype("u1"): "U8"}
_LATENT_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}  # latent_dtype -> the records' dtype
_DATABASES = ("records", "digests", "ids", "meta")  # a shard's named databases (FORMAT 3.1)


def float32_to_bf16(values):
    """float32 -> bfloat16 bit patterns (uint16): round to nearest, ties to even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


_U64 = struct.Struct("<Q").pack
_U32 = struct.Struct("<I").pack
_PLAIN_ID = re.compile(r'[^"\\\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z')  # what JSON writes between quotes as it is


def _json_string(text):
    """json.dumps(text, ensure_ascii=False), without its call for the usual id."""
    return '"%s"' % text if _PLAIN_ID.match(text) else json.dumps(text, ensure_ascii=False)


class _Headers:
    """The payload headers of records with one tensor layout (FORMAT 4.1): u64 header length,
    then `{"__metadata__":{...},"latents":{...},...}` padded with spaces to a multiple of 8.
    Text equal to json.dumps of the header object with separators (",", ":") and
    ensure_ascii=False: the metadata's values other than the id are digits, commas and hex,
    which JSON writes as they are. `tensors`: (name, safetensors dtype, array of one record) in
    the order their bytes follow."""

    def __init__(self, tensors):
        entries, offset = [], 0
        for name, dtype_name, arr in tensors:
            entries.append('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'
                           % (name, dtype_name, ",".join(map(str, arr.shape)), offset, offset + arr.nbytes))
            offset += arr.nbytes
        self.data_bytes = offset
        self.format = ('{"__metadata__":{"mtok.format":"%s","id":%%s,"view":"%%d","label":"%%d",'
                       '"source_size":"%%d,%%d","crop_box":"%%d,%%d,%%d,%%d","source_sha256":"%%s"},' % RECORD_FORMAT
                       + ",".join(entries).replace("%", "%%") + "}")

    def __call__(self, id, view, label, source_size, crop_box, source_sha256):
        text = (self.format % (_json_string(id), view, label, source_size[0], source_size[1], crop_box[0], crop_box[1],
                               crop_box[2], crop_box[3], source_sha256)).encode("utf-8")
        text += b" " * (-len(text) % 8)
        return _U64(len(text)) + text


def _frame_python(cctx, header, arrays, shuffle):
    """The zstd frame of a record's stored form without the C extension: FORMAT 4.2's byte
    planes, stored[b + j*n + i] = payload[b + i*s + j] for each tensor of item size s > 1."""
    parts = [header]
    for arr in arrays:
        s = arr.dtype.itemsize
        if shuffle and s > 1:
            parts.append(arr.reshape(-1).view(np.uint8).reshape(-1, s).T.tobytes())
        else:
            parts.append(arr.tobytes())
    return cctx.compress(b"".join(parts))


def _file_sha256(path):
    """SHA-256 (hex) of a file, read through one buffer used again and again: a fresh 1 MiB
    bytes object per read cost the process a page fault per 4 KiB of the file."""
    h = hashlib.sha256()
    block = bytearray(1 << 20)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(block)
            if not n:
                return h.hexdigest()
            h.update(view[:n])


def _chunk_frames(chunk, records_per_chunk):
    """The zstd frames of one stored chunk (FORMAT 3.2), its offsets checked as the readers check
    them (ValueError)."""
    offsets = _reader._chunk_offsets(chunk, records_per_chunk)
    base = 4 * (len(offsets) + 1)
    return [bytes(chunk[base + int(a):base + int(b)]) for a, b in zip(offsets[:-1], offsets[1:])]


# FORMAT 4.1's metadata as the readers check it: decimal integers (Swift reads them as Int, so at
# most 2^63 - 1), view 0 ... 65535 (the ids key holds it in 2 bytes), label -1 ... 2^31 - 1
# (batches carry labels as int32), source_size and crop_box non-negative. Checked at append, so a
# bad value is refused before anything is written.
_INT64_MAX = (1 << 63) - 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


def _meta_int(name, value, lo, hi):
    # int() would truncate 1.5 and take True as 1 without a word.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError("%s must be an integer, got %r" % (name, value))
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError("%s must be %d ... %d, got %d" % (name, lo, hi, value))
    return value


def _meta_ints(name, values, count):
    try:
        items = None if isinstance(values, (str, bytes)) else tuple(values)
    except TypeError:
        items = None
    if items is None or len(items) != count:
        raise ValueError("%s must be %d integers, got %r" % (name, count, values))
    return tuple(_meta_int(name, v, 0, _INT64_MAX) for v in items)


def _check_sha256(value):
    if not isinstance(value, str) or not (value == "" or _SHA256_HEX.match(value)):
        raise ValueError("source_sha256 must be the source file's SHA-256 as 64 lower-case hex digits, or '' "
                         "when unknown, got %r" % (value,))


def _meta_column(name, values, rows, lo, hi, default):
    """`rows` integers lo ... hi as a list of ints (append_many's labels and views): an integer
    array is checked at once, anything else value by value as _meta_int."""
    if values is None:
        return [default] * rows
    arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if arr.shape != (rows,):
        raise ValueError("%s must hold %d integers, got shape %s" % (name, rows, list(arr.shape)))
    if arr.dtype.kind in "iu":
        if rows and not (lo <= int(arr.min()) and int(arr.max()) <= hi):
            bad = next(int(v) for v in arr.tolist() if not lo <= v <= hi)
            raise ValueError("%s must be %d ... %d, got %d" % (name, lo, hi, bad))
        return arr.tolist()
    return [_meta_int(name, v, lo, hi) for v in values]


def _meta_rows(name, values, rows, count):
    """`rows` tuples of `count` non-negative integers (source_sizes, crop_boxes)."""
    if values is None:
        return [(0,) * count] * rows
    arr = np.asarray(values)
    if arr.dtype.kind in "iu" and arr.shape == (rows, count):
        if arr.size and not (0 <= int(arr.min()) and int(arr.max()) <= _INT64_MAX):
            raise ValueError("%s must be integers 0 ... %d, got %d" % (name, _INT64_MAX, int(arr.min()) if
                                                                      int(arr.min()) < 0 else int(arr.max())))
        return [tuple(r) for r in arr.tolist()]
    if len(values) != rows:
        raise ValueError("%s must hold %d rows of %d integers" % (name, rows, count))
    return [_meta_ints(name, v, count) for v in values]


class Writer:
    """Writes records into a new cache at `path` (which must not exist or be empty), or with
    resume=True continues the cache there.

    - latent_dtype: "bf16", "f16" or "f32"; float inputs are converted (bf16 rounds to nearest
      even), uint16 inputs with latent_dtype "bf16" are taken as bf16 bit patterns.
    - records_per_chunk: R of FORMAT 3.1; shard_cap_bytes: seal a shard past this size.
    - part: (rank, world_size) when this cache is one rank's part of a scaled-out run; `part` is
      recorded in the manifest, and the cache is written at `path` as always. `mtok merge CACHE`
      joins the parts it finds at CACHE/parts/rank-NNNNN (FORMAT 6.3, where `mtok tokenize
      --rank` puts them), so pass that path:
      `Writer("%s/parts/rank-%05d" % (cache, rank), part=(rank, world_size), ...)`.
    - resume: continue the cache at `path` if it has a manifest (a new one otherwise). Its settings
      and part must equal the given ones, and latent_dtype that of its records (the manifest does
      not store it: the first record of each shard tells; the readers batch records of one dtype
      only); its layout (records_per_chunk, compression, shard cap) wins over the arguments, as
      in the Swift writer. Append from record `w.committed` on. A manifest's `inputs_done` (the
      Swift pipeline's resume point) is dropped: this writer does not track inputs. A Cache of
      the cache open in this process must not hold its unsealed last shard (InUseError: close it).

    - commit_every, commit_seconds: durability. Full chunks are committed (written with fsync,
      so that they survive a crash) together, once `commit_every` records wait or
      `commit_seconds` have passed since the last commit, whichever comes first; both are looked
      at when a chunk of records_per_chunk records fills. A process killed in between loses
      the records not yet committed (`w.committed` tells where to resume from) and nothing else,
      and the finished cache is the same, byte for byte in its records, as one written without a
      break. The default, 1024 records or 10 s, costs a fraction of a percent in commits; each
      commit is one LMDB write transaction (two fsyncs). flush() commits at once.
    - threads: how many threads append_many compresses a batch's records on, with the C
      extension (default 1). The records and their order are the same whatever the number. More
      threads shorten the wall time of a batch where cores are free, at some CPU time for
      handing the GIL around (2 threads on 2 cores: 15 % less wall time, 15 % more CPU time).

    Every commit (flush(), close(), or one of the above) is listed in the manifest, the open
    shard with `sealed: false` (FORMAT 2, 6.2), so readers see the records as they are committed. A Cache
    opened in this process while this writer is open reads the open shard through the writer's
    own LMDB environment (py-lmdb opens a file once per process); once the writer seals or closes
    that shard, the Cache opens the file itself.
    """

    def __init__(self, path, settings=None, latent_dtype="bf16", records_per_chunk=16, compression_level=3,
                 shuffle="byte-planes", shard_cap_bytes=1 << 30, classes=None, created_by="mtokcache (Python)",
                 part=None, resume=False, commit_every=1024, commit_seconds=10.0, threads=1):
        if latent_dtype not in ("bf16", "f16", "f32"):
            raise ValueError("latent_dtype must be bf16, f16 or f32")
        if not (1 <= records_per_chunk <= 65536):
            raise ValueError("records_per_chunk must be 1 ... 65536")
        if shuffle not in ("byte-planes", "none"):
            raise ValueError("shuffle must be 'byte-planes' or 'none'")
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ValueError("commit_every must be a positive number of records")
        if not commit_seconds >= 0:
            raise ValueError("commit_seconds must be >= 0")
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError("threads must be a positive number")
        self.threads = threads
        self._pool = None
        self.path = os.fspath(path)
        resuming = resume and os.path.exists(os.path.join(self.path, "manifest.json"))
        if not resuming and os.path.exists(self.path) and os.listdir(self.path):
            raise FileExistsError("%s exists and is not empty; pass resume=True to continue the cache there"
                                  % self.path)
        os.makedirs(os.path.join(self.path, "shards"), exist_ok=True)
        # FORMAT 1: the single writer holds an advisory lock on .writer.lock while it writes.
        self._lock = open(os.path.join(self.path, ".writer.lock"), "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            raise RuntimeError("%s is being written by another process" % self.path) from e
        self.settings = settings if settings is not None else {}
        self.latent_dtype = latent_dtype
        self.R = records_per_chunk
        self.level = compression_level
        self.shuffle = shuffle
        self.cap = shard_cap_bytes
        self.classes = classes
        self.created_by = created_by
        if part is not None:
            rank, world_size = part
            if not (0 <= rank < world_size):
                raise ValueError("part must be (rank, world_size) with 0 <= rank < world_size")
        self.part = part
        self._native = _accel.native()
        self._choose_literals()
        self._seen = set()
        self._digest = hashlib.sha256()
        self._shards = []  # manifest entries of finished shards
        self._env = None
        self._lent = None  # takes the open shard's environment back from readers and closes it
        self._count = 0  # records committed to the open shard
        self._pending = []  # (frame, sha256, id key, payload size) of the chunk being filled
        self._pending_committed = 0  # how many of them are already in the shard (a resumed partial chunk)
        self._ready = []  # full chunks waiting for the next commit (_chunk_item)
        self._ready_records = 0  # their new records
        self._ready_bytes = 0
        self._last_commit = time.monotonic()
        self._dtypes = None  # tensor name -> dtype of the cache's first record (append)
        self._manifest_written = float("-inf")  # time.monotonic() of the last manifest write
        self._manifest_stale = False  # a commit the manifest does not list yet
        self._finished = False
        try:
            if resuming:
                self._resume()
            self._cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True, write_content_size=True)
            self._write_manifest(complete=False)
        except BaseException:
            self._close_env()
            self._unlock()
            raise

    def _choose_literals(self):
        # With byte planes the C extension stores zstd literals raw, as the Swift writer does by
        # default (FORMAT 7: there most literals are mantissa noise, so raw frames are 3 % larger
        # and faster to write and to read). Without byte planes Huffman coding pays (raw frames
        # of interleaved bf16 measured 26 % larger), and python-zstandard cannot store them raw
        # anyway. Continuing a cache whose frames are coded the other way leaves the manifest's
        # field out (the cache mixes both).
        self._raw_literals = self._native is not None and self.shuffle == "byte-planes"
        self._literals = "raw" if self._raw_literals else "huffman"

    @property
    def committed(self):
        """Records that are durable: a writer that dies now keeps exactly these."""
        return sum(s["records"] for s in self._shards) + self._count

    def __len__(self):
        """Records appended so far, committed or still pending."""
        return self.committed + self._ready_records + len(self._pending) - self._pending_committed

    # -- resuming (FORMAT 6.2) -------------------------------------------------------------------

    def _resume(self):
        m = Cache(self.path).manifest  # refuses what is not a cache or of an unknown version
        if m.get("settings", {}) != self.settings:
            where, there, here = _first_difference(m.get("settings", {}), self.settings)
            raise SettingsMismatchError("%s was written with other settings: %s is %s there, %s now"
                                        % (self.path, where or "settings", _show(there), _show(here)))
        part = m.get("part")
        want = None if self.part is None else {"rank": self.part[0], "world_size": self.part[1]}
        if part != want:
            raise SettingsMismatchError("%s is part %r of a scaled-out run, not %r" % (self.path, part, want))
        self.R = int(m["records_per_chunk"])
        self.level = int(m["compression"]["level"])
        self.shuffle = m["compression"]["shuffle"]
        self.cap = int(m["shard_cap_bytes"])
        self._choose_literals()
        if m["compression"].get("literals") != self._literals:
            self._literals = None
        self.classes = m.get("classes", self.classes)
        self.created_by = m.get("created_by", self.created_by)
        # Leftovers of an interrupted seal or manifest write.
        shard_dir = os.path.join(self.path, "shards")
        for name in os.listdir(shard_dir):
            if name.endswith(".compact"):
                os.remove(os.path.join(shard_dir, name))
        tmp = os.path.join(self.path, "manifest.json.tmp")
        if os.path.exists(tmp):
            os.remove(tmp)
        entries = [dict(e) for e in m["shards"]]
        nxt = "shards/shard-%05d.mdb" % len(entries)
        if os.path.exists(os.path.join(self.path, nxt)):  # created just before a crash
            entries.append({"file": nxt, "records": 0, "sealed": False})
        for i, e in enumerate(entries):
            if e.get("sealed"):
                # Through the readers' registry: a Cache of this process may have the file open,
                # and py-lmdb opens a file once per process.
                with _reader._LOCK:
                    held = _reader._acquire(os.path.join(self.path, e["file"]), e["file"], None)
                try:
                    self._adopt(held.env, {name: getattr(held, name) for name in _DATABASES}, e["file"])
                finally:
                    with _reader._LOCK:
                        _reader._release(held)
                self._shards.append(e)
            elif i != len(entries) - 1:
                raise ShardMismatchError("only the last shard may be unsealed", shard=e["file"])
            else:
                self._file = e["file"]
                self._shard_path = os.path.join(self.path, self._file)
                self._open_env()
                meta = self._adopt(self._env, self._db, self._file)
                # The shard's own meta was committed with its data; the manifest may lag it.
                self._count = int(meta.get("count", "0"))
                self._payload_bytes = int(meta.get("payload_bytes", "0"))
                self._compressed_bytes = int(meta.get("compressed_bytes", "0"))

    def _adopt(self, env, dbs, file):
        """Feeds a shard's ids into the duplicate check and its digests into the content digest;
        reloads a partial last chunk as pending; refuses a latent dtype other than its records'.
        Returns the shard's meta. `dbs`: its databases by name (_DATABASES), already open."""
        with env.begin() as txn:
            meta = {bytes(k).decode("ascii"): bytes(v).decode("ascii") for k, v in txn.cursor(dbs["meta"])}
            count = int(meta.get("count", "0"))
            if meta and meta.get("records_per_chunk") != str(self.R):
                raise ShardMismatchError("records_per_chunk %r, the manifest says %d"
                                         % (meta.get("records_per_chunk"), self.R), shard=file)
            tail_start = count - count % self.R
            tail_keys = {}
            for k, v in txn.cursor(dbs["ids"]):
                self._seen.add(bytes(k))
                index = struct.unpack("<I", v)[0]
                if index >= tail_start:
                    tail_keys[index] = bytes(k)
            digests = [bytes(v) for _, v in txn.cursor(dbs["digests"])]
            if sum(len(d) for d in digests) != 32 * count:
                raise ShardMismatchError("digests cover %d records, meta.count is %d"
                                         % (sum(len(d) for d in digests) // 32, count), shard=file)
            for d in digests:
                self._digest.update(d)
            if count:
                self._check_first_record(txn.get(struct.pack(">Q", 0), db=dbs["records"]), file)
            if count % self.R and env is self._env:
                chunk = txn.get(struct.pack(">Q", count // self.R), db=dbs["records"])
                try:
                    frames = _chunk_frames(chunk, self.R)
                    sizes = [zstandard.frame_content_size(f) for f in frames]
                except (TypeError, ValueError, struct.error, zstandard.ZstdError):  # absent or malformed
                    frames, sizes = [], []
                missing = [i for i in range(tail_start, count) if i not in tail_keys]
                if len(frames) != count - tail_start or missing or min(sizes, default=0) < 0:
                    raise ShardMismatchError("the partial last chunk does not hold records %d..%d with their ids"
                                             % (tail_start, count - 1), shard=file)
                last = digests[-1]
                self._pending = [(f, last[32 * i:32 * i + 32], tail_keys[tail_start + i], size)
                                 for i, (f, size) in enumerate(zip(frames, sizes))]
                self._pending_committed = len(frames)
        return meta

    def _check_first_record(self, chunk, file):
        """The manifest does not store the latents' dtype; the records do. A resumed writer with
        another one would mix dtypes in one cache, which `mtok verify` accepts but the readers'
        batches (and so the PyTorch datasets) refuse: compare with the shard's first record. The
        first of the cache (shards are adopted in order) gives the dtypes that append holds every
        record to."""
        try:
            frame = _chunk_frames(chunk, self.R)[0]
            size = zstandard.frame_content_size(frame)
            if not 0 <= size <= MAX_PAYLOAD:
                raise ValueError("frame declares %d bytes" % size)
            stored = zstandard.ZstdDecompressor().decompress(frame)
            header, _ = _reader._parse_header(stored, {"shard": file, "chunk": 0})
        except (TypeError, ValueError, IndexError, struct.error, zstandard.ZstdError) as e:
            raise ShardMismatchError("its first record cannot be read: %s" % e, shard=file) from e
        there = header["tensors"]["latents"][0]
        if there != _LATENT_DTYPES[self.latent_dtype]:
            name = {v: k for k, v in _LATENT_DTYPES.items()}[there]
            raise SettingsMismatchError("%s was written with other settings: latent_dtype is %s there, %s now"
                                        % (self.path, _show(name), _show(self.latent_dtype)))
        if self._dtypes is None:
            self._dtypes = {name: t[0] for name, t in header["tensors"].items()}

    # -- records ------------------------------------------------------------------------------

    def _latent(self, arr):
        arr = np.asarray(arr)
        if self.latent_dtype == "bf16":
            if arr.dtype == np.uint16:
                return np.ascontiguousarray(arr, "<u2"), "BF16"
            return float32_to_bf16(arr.astype(np.float32)), "BF16"
        if self.latent_dtype == "f16":
            return np.ascontiguousarray(arr, "<f2"), "F16"
        return np.ascontiguousarray(arr, "<f4"), "F32"

    def _tensors(self, latents, indices, groups, logvar, rows):
        """The tensors of `rows` records (rows = None: one record) as (name, safetensors dtype,
        little-endian C-contiguous array), checked as `append` states; ValueError otherwise."""
        lead = () if rows is None else (rows,)
        lat, ldt = self._latent(latents)
        if lat.ndim != len(lead) + 2 or lat.shape[:len(lead)] != lead:
            raise ValueError("latents must be [K, C]" if rows is None else "latents must be [B, K, C] with B = %d" % rows)
        k = lat.shape[-2]
        indices = np.asarray(indices)
        groups = np.asarray(groups)
        if indices.dtype not in (np.uint16, np.uint32) or indices.shape != lead + (k,):
            raise ValueError("indices must be uint16 or uint32 of shape %s" % (list(lead + (k,)),))
        if groups.dtype not in (np.uint8, np.uint16) or groups.ndim != len(lead) + 1 or \
                groups.shape[:len(lead)] != lead or groups.shape[-1] < k:
            raise ValueError("groups must be uint8 or uint16 of shape %s, N >= K" % ("[N]" if rows is None else "[B, N]"))
        if groups.size and int(groups.max()) >= k:
            raise ValueError("group id %d is not a kept token (K = %d)" % (int(groups.max()), k))
        tensors = [("latents", ldt, lat)]
        if logvar is not None:
            lv, _ = self._latent(logvar)
            if lv.shape != lat.shape:
                raise ValueError("logvar must have the shape of latents")
            tensors.append(("logvar", ldt, lv))
        for name, arr in (("indices", indices), ("groups", groups)):
            le = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
            tensors.append((name, _SAFETENSORS[le.dtype], le))
        dtypes = {name: dt for name, dt, _ in tensors}
        if self._dtypes is not None and dtypes != self._dtypes:
            name = next(n for n in _reader.TENSORS if dtypes.get(n) != self._dtypes.get(n))
            raise ValueError("%s %s %s here, %s in the cache" % (name, "is" if name == "logvar" else "are",
                                                                 dtypes.get(name, "absent"),
                                                                 self._dtypes.get(name, "absent")))
        return tensors, dtypes

    def _key(self, id, view, batch_keys=()):
        """The ids database key of (id, view), refused when invalid or already in the cache."""
        try:
            raw_id = id.encode("utf-8") if isinstance(id, str) else None
        except UnicodeEncodeError:  # a lone surrogate
            raw_id = None
        if raw_id is None or not (1 <= len(raw_id) <= 508) or b"\x00" in raw_id:
            raise ValueError("id must be a str of 1 ... 508 UTF-8 bytes without NUL, got %r"
                             % (id[:80] if isinstance(id, str) else id,))
        key = raw_id + b"\x00" + struct.pack(">H", view)
        if key in self._seen or key in batch_keys:
            raise ValueError("duplicate (id, view): (%r, %d)" % (id, view))
        return key

    def append(self, id, latents, indices, groups, label=-1, view=0, logvar=None, source_size=(0, 0),
               crop_box=(0, 0, 0, 0), source_sha256=""):
        """Adds one record. `indices` must be uint16 or uint32, `groups` uint8 or uint16 (their
        dtype is stored as given). Metadata the readers would refuse (FORMAT.md 4.1: view 0 ...
        65535, label -1 ... 2147483647, non-negative integers in source_size and crop_box,
        source_sha256 hex or empty) raises ValueError naming the field, and nothing is added. So
        does a record whose tensors' dtypes, or whose having a logvar, differ from the cache's first
        record (a resumed cache's too): the readers batch records of one layout only."""
        self._check_open()
        view = _meta_int("view", view, 0, 65535)
        label = _meta_int("label", label, -1, LABEL_MAX)
        source_size = _meta_ints("source_size", source_size, 2)
        crop_box = _meta_ints("crop_box", crop_box, 4)
        _check_sha256(source_sha256)
        key = self._key(id, view)
        tensors, dtypes = self._tensors(latents, indices, groups, logvar, None)
        self._dtypes = dtypes
        headers = _Headers(tensors)
        header, frame, digest = self._encode(headers(id, view, label, source_size, crop_box, source_sha256),
                                             [t[2] for t in tensors])
        self._add(key, frame, digest, len(header) + headers.data_bytes)

    def append_many(self, ids, latents, indices, groups, labels=None, views=None, logvar=None, source_sizes=None,
                    crop_boxes=None, source_sha256s=None):
        """Adds len(ids) records from arrays with a leading batch dimension: latents (and logvar)
        [B, K, C], indices [B, K], groups [B, N]; labels and views [B] (default -1 and 0),
        source_sizes [B, 2], crop_boxes [B, 4], source_sha256s B strings. The same records, bytes
        and checks as `append` once per row, for less Python per record; every row is checked
        before any is added, so a bad one adds none."""
        self._check_open()
        ids = list(ids)
        B = len(ids)
        if B == 0:
            return
        labels = _meta_column("labels", labels, B, -1, LABEL_MAX, -1)
        views = _meta_column("views", views, B, 0, 65535, 0)
        source_sizes = _meta_rows("source_sizes", source_sizes, B, 2)
        crop_boxes = _meta_rows("crop_boxes", crop_boxes, B, 4)
        if source_sha256s is None:
            source_sha256s = [""] * B
        else:
            source_sha256s = list(source_sha256s)
            if len(source_sha256s) != B:
                raise ValueError("source_sha256s must hold %d strings, got %d" % (B, len(source_sha256s)))
            for sha in source_sha256s:
                _check_sha256(sha)
        keys = {}
        for id, view in zip(ids, views):
            key = self._key(id, view, keys)
            keys[key] = None
        tensors, dtypes = self._tensors(latents, indices, groups, logvar, B)
        self._dtypes = dtypes
        headers = _Headers([(name, dt, arr[0]) for name, dt, arr in tensors])
        arrays = [t[2] for t in tensors]

        def encode(rows):
            return [self._encode(headers(ids[row], views[row], labels[row], source_sizes[row], crop_boxes[row],
                                         source_sha256s[row]), [arr[row] for arr in arrays]) for row in rows]

        # With the C extension, compression (and hashing) run without the GIL: a batch's rows are
        # encoded on `threads` threads, in contiguous slices, and added in order.
        threads = self.threads if self._native is not None else 1
        if threads > 1 and B >= 2 * threads:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mtokcache-encode")
            step = -(-B // threads)
            done = [r for part in self._pool.map(encode, [range(lo, min(lo + step, B)) for lo in range(0, B, step)])
                    for r in part]
        else:
            done = encode(range(B))
        for key, (header, frame, digest) in zip(keys, done):
            self._add(key, frame, digest, len(header) + headers.data_bytes)

    def _check_open(self):
        if self._finished:
            raise RuntimeError("writer already finished")

    def _encode(self, header, arrays):
        """(header, zstd frame, SHA-256 of the payload) of one checked record whose payload is
        `header`, then the bytes of `arrays`. Thread-safe (append_many's threads)."""
        digest = hashlib.sha256(header)
        for arr in arrays:
            digest.update(arr)
        if self._native is not None:
            frame = self._native.encode(header, tuple(arrays), self.shuffle == "byte-planes", self.level,
                                       self._raw_literals)
        else:
            frame = _frame_python(self._cctx, header, arrays, self.shuffle == "byte-planes")
        return header, frame, digest.digest()

    def _add(self, key, frame, digest, size):
        """Adds an encoded record (`size`: its payload's bytes) to the chunk being filled."""
        self._seen.add(key)
        self._pending.append((frame, digest, key, size))
        if len(self._pending) == self.R:
            self._chunk_filled()

    # -- shards -------------------------------------------------------------------------------

    def _open_shard(self):
        n = len(self._shards)
        self._file = "shards/shard-%05d.mdb" % n
        self._shard_path = os.path.join(self.path, self._file)
        self._open_env()
        self._count = 0
        self._payload_bytes = 0
        self._compressed_bytes = 0

    def _open_env(self):
        # Under the readers' lock: no Cache of this process may open the file meanwhile (py-lmdb
        # opens a file once per process); from now on they read it through this environment.
        with _reader._LOCK:
            _reader._check_unread(self._shard_path, self._file)
            try:
                self._env = lmdb.open(self._shard_path, subdir=False, map_size=_reader._map_size(self.cap),
                                      max_dbs=4, sync=True, metasync=True)
            except lmdb.Error as e:
                if "already open" not in str(e):
                    raise
                raise InUseError("%s is already open in this process: close the Caches and Writers of the "
                                 "cache first" % self._shard_path, shard=self._file) from e
            self._db = {name: self._env.open_db(name.encode()) for name in _DATABASES}
            key = _reader._lend(self._shard_path, self._env, self._db)
        # A writer dropped without close() gives it back too, so that the file can be opened again
        # in this process (a resume after an exception, say). Exiting unmaps it anyway.
        self._lent = weakref.finalize(self, _reader._writer_dropped, key, self._env)
        self._lent.atexit = False

    def _close_env(self):
        if self._lent is not None:
            _, _, (key, env), _ = self._lent.detach()
            self._lent = None
            _reader._take_back(key, env)  # closes self._env
        elif self._env is not None:
            self._env.close()
        self._env = None

    def _entry(self):
        """The open shard's manifest entry, as the Swift writer lists it: `bytes` is the size of
        its pages so far."""
        return {"file": self._file, "records": self._count, "payload_bytes": self._payload_bytes,
                "compressed_bytes": self._compressed_bytes, "bytes": _reader._pages_bytes(self._env),
                "sealed": False}

    # The manifest is rewritten (and fsynced twice) after a chunk's commit at most this often;
    # readers serve the manifest's count and a resumed writer trusts the shard's own, so a
    # manifest that lags a few chunks loses nothing (FORMAT 6.2), and rewriting it for every
    # 16-record chunk halved the writer's speed on disk. flush(), close() and sealing list
    # everything at once.
    MANIFEST_INTERVAL_S = 1.0

    def _chunk_filled(self):
        """The chunk being filled is full: it waits with the others for the next commit."""
        if self._env is None:
            self._open_shard()
        self._ready.append(self._chunk_item())
        self._pending = []
        self._pending_committed = 0
        if self._ready_records >= self.commit_every or \
                time.monotonic() - self._last_commit >= self.commit_seconds or \
                _reader._pages_bytes(self._env) + self._ready_bytes >= self.cap:
            self._commit()  # the last test keeps shards near their cap whatever commit_every is

    def _chunk_item(self):
        """(chunk number in the open shard, chunk value, its digests, its new records, whether it
        rewrites a partial chunk already committed) of the records pending (FORMAT 3.2)."""
        done = self._pending_committed
        new = self._pending[done:]
        frames = [p[0] for p in self._pending]
        offsets = np.zeros(len(frames) + 1, dtype="<u4")
        offsets[1:] = np.cumsum([len(f) for f in frames])
        chunk = struct.pack("<I", len(frames)) + offsets.tobytes() + b"".join(frames)
        first = self._count + self._ready_records - done  # the chunk's first record in the shard
        self._ready_records += len(new)
        # What the chunk will add to the shard's pages: LMDB stores a value this large on
        # overflow pages of their own (16-byte header); its digests and ids take little.
        self._ready_bytes += -(-(len(chunk) + 16) // 4096) * 4096
        return first // self.R, chunk, b"".join(p[1] for p in self._pending), new, done > 0

    def _commit(self, partial=False):
        """Commits the chunks waiting (and with `partial` the chunk being filled) in one write
        transaction; then seals the shard when it reached its cap, or lists the commit in the
        manifest now and then (FORMAT 6.2). What was appended before is durable once this returns."""
        items = self._ready
        if partial and len(self._pending) > self._pending_committed:
            items = items + [self._chunk_item()]
            self._pending_committed = len(self._pending)  # the next commit rewrites it whole
        if not items:
            return
        if self._env is None:
            self._open_shard()
        with self._env.begin(write=True) as txn:
            for chunk_no, chunk, digests, new, rewrite in items:
                ckey = _reader._CHUNK_KEY(chunk_no)
                txn.put(ckey, chunk, db=self._db["records"], append=not rewrite)
                txn.put(ckey, digests, db=self._db["digests"], append=not rewrite)
                _, added = txn.cursor(db=self._db["ids"]).putmulti(
                    [(p[2], _U32(self._count + i)) for i, p in enumerate(new)], overwrite=False)
                if added != len(new):
                    raise ValueError("duplicate id key in shard")
                self._count += len(new)
                self._payload_bytes += sum(p[3] for p in new)
                self._compressed_bytes += sum(len(p[0]) for p in new)
            for k, v in (("format", SHARD_FORMAT), ("records_per_chunk", str(self.R)), ("count", str(self._count)),
                         ("payload_bytes", str(self._payload_bytes)),
                         ("compressed_bytes", str(self._compressed_bytes)), ("shuffle", self.shuffle)):
                txn.put(k.encode(), v.encode(), db=self._db["meta"])
        for _, _, _, new, _ in items:
            for p in new:
                self._digest.update(p[1])
        self._ready = []
        self._ready_records = 0
        self._ready_bytes = 0
        self._last_commit = time.monotonic()
        if _reader._pages_bytes(self._env) >= self.cap:
            self._seal()  # lists it sealed
        elif time.monotonic() - self._manifest_written >= self.MANIFEST_INTERVAL_S:
            self._write_manifest(complete=False)  # lists the commit (FORMAT 6.2)
        else:
            self._manifest_stale = True

    # FORMAT 6.2: compacting on sealing pays when the free pages are over 1 % of the file and
    # over this floor (as the Swift writer): a copy costs a read and a write of the whole file.
    COMPACT_FLOOR_BYTES = 16 << 20

    def _free_bytes(self):
        """The bytes of the open shard's pages that no database uses (LMDB's free pages; the
        free list's own pages count as free here, which errs towards compacting)."""
        env = self._env
        used = 2  # the meta pages
        with env.begin() as txn:
            for st in [txn.stat(self._db[name]) for name in _DATABASES] + [txn.stat()]:
                used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return (env.info()["last_pgno"] + 1 - used) * env.stat()["psize"]

    def _seal(self):
        """FORMAT 6.2: compact into shard.compact and rename it over the shard when that pays
        (else sync it), drop the lock file, hash the file, make it read-only."""
        free = self._free_bytes()
        if free > self.COMPACT_FLOOR_BYTES and free * 100 > _reader._pages_bytes(self._env):
            compact = self._shard_path + ".compact"
            self._env.copy(compact, compact=True)
            self._close_env()
            os.replace(compact, self._shard_path)
        else:
            self._env.sync(True)
            self._close_env()
        lock = self._shard_path + "-lock"
        if os.path.exists(lock):
            os.remove(lock)
        sha256 = _file_sha256(self._shard_path)
        os.chmod(self._shard_path, 0o444)
        self._shards.append({"file": self._file, "records": self._count, "payload_bytes": self._payload_bytes,
                             "compressed_bytes": self._compressed_bytes,
                             "bytes": os.path.getsize(self._shard_path), "sealed": True, "sha256": sha256})
        self._count = 0  # its records now count through self._shards
        # A partial chunk committed by flush() stays the sealed shard's last chunk: the next shard
        # starts a chunk of its own.
        self._pending = []
        self._pending_committed = 0
        self._write_manifest(complete=False)

    def _write_manifest(self, complete):
        self._manifest_written = time.monotonic()
        self._manifest_stale = False
        shards = self._shards + ([self._entry()] if self._env is not None else [])
        m = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_by": self.created_by, "complete": complete,
             "records_per_chunk": self.R,
             "compression": {"codec": "zstd", "level": self.level, "checksum": True, "shuffle": self.shuffle},
             "shard_cap_bytes": self.cap, "settings": self.settings}
        if self.classes is not None:
            m["classes"] = list(self.classes)
        if self.part is not None:
            m["part"] = {"rank": self.part[0], "world_size": self.part[1]}
        if self._literals is not None:
            m["compression"]["literals"] = self._literals
        m["shards"] = shards
        m["totals"] = {"records": sum(s["records"] for s in shards),
                       "payload_bytes": sum(s["payload_bytes"] for s in shards),
                       "compressed_bytes": sum(s["compressed_bytes"] for s in shards),
                       "bytes_on_disk": sum(s["bytes"] for s in shards)}
        m["content_digest"] = "sha256:" + self._digest.hexdigest() if complete else None
        # Atomic replace: temp file, fsync, rename, fsync the directory (FORMAT 2).
        tmp = os.path.join(self.path, "manifest.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(m, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, "manifest.json"))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def flush(self):
        """Commits every record appended so far (a partial chunk too): they survive a crash, and
        the manifest lists them."""
        self._check_open()
        self._commit(partial=True)
        if self._manifest_stale:  # a commit not listed yet, this one's or an earlier one's
            self._write_manifest(complete=False)

    def close(self):
        """Commits what was appended and releases the cache without finishing it: the last shard
        stays unsealed and `Writer(path, ..., resume=True)` continues it."""
        if self._finished:
            return
        self.flush()
        self._close_env()
        self._finished = True
        self._unlock()

    def finish(self):
        """Writes the last chunk, seals the last shard and marks the cache complete."""
        if self._finished:
            return
        self._commit(partial=True)
        if self._env is not None:
            self._seal()
        self._finished = True
        self._write_manifest(complete=True)
        self._unlock()

    def _unlock(self):
        """Releases the cache (and the encoding threads): the writer is done with it."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self._close_env()
            self._unlock()


_ABSENT = object()


def _first_difference(a, b, path=""):
    """(path, value in a, value in b) where two JSON values first differ, in a's key order
    (_ABSENT for a key one side lacks); None when they are equal. Paths read `a.b[2]`."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key, value in a.items():
            here = "%s.%s" % (path, key) if path else key
            if key not in b:
                return here, value, _ABSENT
            d = _first_difference(value, b[key], here)
            if d:
                return d
        for key, value in b.items():
            if key not in a:
                return ("%s.%s" % (path, key) if path else key), _ABSENT, value
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, "%s[%d]" % (path, i))
            if d:
                return d
        return None
    return None if a == b else (path, a, b)


def _show(value):
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."
