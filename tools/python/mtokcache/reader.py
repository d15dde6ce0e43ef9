"""Reading a cache, written from Schemas/FORMAT.md (sections cited as FORMAT n.m)."""

import bisect
import builtins
import hashlib
import json
import os
import re
import stat
import struct
import threading
import weakref

import lmdb
import numpy as np
import zstandard

from . import order as _order
from . import _accel
from .errors import (BadRecordError, CacheIOError, CorruptRecordError, InUseError, MissingShardError, NotACacheError,
                     ShapeMismatchError, ShardMismatchError, UnknownVersionError)

FORMAT = "mtok.cache"
FORMAT_VERSION = 1
SHARD_FORMAT = "mtok.shard/1"
RECORD_FORMAT = "1"
MAX_PAYLOAD = 64 << 20  # FORMAT 4.2: refuse larger declared sizes before allocating
LABEL_MAX = 2147483647  # FORMAT 4.1: batches carry labels as int32

# safetensors dtype name -> (NumPy dtype of the stored elements, element size)
DTYPES = {
    "F32": (np.dtype("<f4"), 4), "F16": (np.dtype("<f2"), 2), "BF16": (np.dtype("<u2"), 2),
    "U32": (np.dtype("<u4"), 4), "U16": (np.dtype("<u2"), 2), "U8": (np.dtype("u1"), 1),
}
LATENT_DTYPES = ("F32", "F16", "BF16")
TENSORS = ("latents", "logvar", "indices", "groups")


def bf16_to_float32(bits):
    """bfloat16 bit patterns (uint16) to float32: bf16 is the top half of a binary32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def open(path, **kwargs):  # noqa: A001 - the package's entry point is mtokcache.open
    """Opens the cache at `path` for reading. See `Cache`."""
    return Cache(path, **kwargs)


def _integer(value):
    """A JSON integer as an int, else None: json gives 600.0 as a float, and True is no number."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


class _DuplicateKey(ValueError):
    """Raised by _unique_keys; args[0] is the key."""


def _unique_keys(pairs):
    """A json object_pairs_hook that refuses an object naming a key twice: Python's json keeps the
    last value and other readers (Swift's) refuse it or keep the first, so such a manifest or
    record header means one thing to one reader and another (or nothing) to the other. Comparing
    lengths costs little on every object; the key is looked for only when there is one."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


# Largest manifest read (Swift: Manifest.maximumBytes).
MANIFEST_MAX_BYTES = 1 << 30
# JSON nesting either reader takes (Swift: JSONValue.maxDepth): every value, scalars included,
# lies fewer than this many containers deep.
MAX_JSON_DEPTH = 32


def _depth(value):
    """How many containers deep the deepest value of parsed JSON lies (the top value: 0), level
    by level without recursion: per value one type test in a comprehension, the rest in C."""
    depth, level = 0, [value]
    while True:
        containers = [v for v in level if type(v) is dict or type(v) is list]
        children = []
        for c in containers:
            children.extend(c.values() if type(c) is dict else c)
        if not children:
            return depth
        depth, level = depth + 1, children

_STR, _INT, _BOOL, _OBJ, _LIST, _ANY = "a string", "an integer", "true or false", "an object", "an array", "any"
# FORMAT.md 2 and manifest.schema.json: (field, type, required). The Swift reader decodes these
# types and refuses a manifest that does not fit them; so does this one.
_MANIFEST = (("created_by", _STR, True), ("complete", _BOOL, True), ("records_per_chunk", _INT, True),
             ("compression", _OBJ, True), ("shard_cap_bytes", _INT, True), ("settings", _ANY, True),
             ("classes", _LIST, False), ("part", _OBJ, False), ("shards", _LIST, True), ("totals", _OBJ, True),
             ("content_digest", _STR, False), ("inputs_done", _INT, False), ("arithmetic", _LIST, False))
_COMPRESSION = (("codec", _STR, True), ("level", _INT, True), ("checksum", _BOOL, True), ("shuffle", _STR, True),
                ("literals", _STR, False))
_PART = (("rank", _INT, True), ("world_size", _INT, True))
_SEGMENT = (("first_record", _INT, True), ("records", _INT, True), ("rank", _INT, False), ("made_by", _OBJ, False))
_MADE_BY = (("revision", _INT, True), ("blas", _STR, True), ("kernel", _STR, True))
_SHARD_ENTRY = (("file", _STR, True), ("records", _INT, True), ("payload_bytes", _INT, True),
                ("compressed_bytes", _INT, True), ("bytes", _INT, True), ("sealed", _BOOL, True),
                ("sha256", _STR, False))
_TOTALS = (("records", _INT, True), ("payload_bytes", _INT, True), ("compressed_bytes", _INT, True),
           ("bytes_on_disk", _INT, True))
_IS = {_STR: lambda v: isinstance(v, str), _BOOL: lambda v: type(v) is bool, _OBJ: lambda v: isinstance(v, dict),
       _LIST: lambda v: isinstance(v, list), _ANY: lambda v: True}


def _check_fields(obj, fields, where, mpath):
    """Checks the types of `obj`'s fields (optional ones may be absent or null); stores integers
    as ints."""
    for name, kind, required in fields:
        if name not in obj or (obj[name] is None and not required):
            if required:
                raise NotACacheError("%s lacks the field %s%s" % (mpath, where, name))
            continue
        value = obj[name]
        if kind is _INT:
            n = _integer(value)
            # Swift decodes these as 64-bit integers and refuses a larger one: so does this reader.
            if n is None or not -(1 << 63) <= n < (1 << 63):
                raise NotACacheError("%s: %s%s must be %s, got %r" % (mpath, where, name, kind, value))
            obj[name] = n
        elif not _IS[kind](value):
            raise NotACacheError("%s: %s%s must be %s, got %r" % (mpath, where, name, kind, value))


def _check_manifest(m, mpath):
    """Refuses a manifest whose fields do not have FORMAT.md 2's types and ranges, as the Swift
    reader does, so that a damaged one is refused as such instead of failing later with an
    unrelated error (or not at all)."""
    _check_fields(m, _MANIFEST, "", mpath)
    _check_fields(m["compression"], _COMPRESSION, "compression.", mpath)
    if m.get("part") is not None:
        _check_fields(m["part"], _PART, "part.", mpath)
    # FORMAT.md 2.1: which kernels made which records. Only its types are checked here (as the
    # Swift reader decodes it); whether the segments cover the records is `mtok verify`'s question.
    for i, seg in enumerate(m.get("arithmetic") or []):
        if not isinstance(seg, dict):
            raise NotACacheError("%s: arithmetic[%d] must be an object, got %r" % (mpath, i, seg))
        _check_fields(seg, _SEGMENT, "arithmetic[%d]." % i, mpath)
        if seg.get("made_by") is not None:
            _check_fields(seg["made_by"], _MADE_BY, "arithmetic[%d].made_by." % i, mpath)
    if m.get("classes") is not None and not all(isinstance(c, str) for c in m["classes"]):
        raise NotACacheError("%s: classes must be strings" % mpath)
    _check_fields(m["totals"], _TOTALS, "totals.", mpath)
    for i, s in enumerate(m["shards"]):
        if not isinstance(s, dict):
            raise NotACacheError("%s: shards[%d] must be an object, got %r" % (mpath, i, s))
        _check_fields(s, _SHARD_ENTRY, "shards[%d]." % i, mpath)
    c = m["compression"]
    if c["codec"] != "zstd" or c["shuffle"] not in ("byte-planes", "none"):
        raise UnknownVersionError("%s: compression %s/%s is not known to this build"
                                  % (mpath, c["codec"], c["shuffle"]))
    if not 1 <= m["records_per_chunk"] <= 65536:
        raise NotACacheError("%s: records_per_chunk %r out of range (1 ... 65536)" % (mpath, m["records_per_chunk"]))
    for s in m["shards"]:
        f = s["file"]
        if f.startswith("/") or ".." in f.split("/"):
            raise NotACacheError("%s: shard path %r leaves the cache" % (mpath, f))
        if s["records"] < 0:
            raise NotACacheError("%s: shard %s holds %r records" % (mpath, f, s["records"]))
    # Compared as the files they name: "shards/x.mdb", "./shards/x.mdb" and "shards//x.mdb" are one
    # file (and "..", which could make two names of one file too, is refused above).
    listed = {}
    for f in (s["file"] for s in m["shards"]):
        name = tuple(part for part in f.split("/") if part not in ("", "."))
        if name in listed:
            raise NotACacheError("%s: shard %s is listed twice%s"
                                 % (mpath, f, "" if listed[name] == f else " (as %s)" % listed[name]))
        listed[name] = f
    # FORMAT 2: a complete cache has every shard sealed and its content digest set.
    if m["complete"]:
        if m.get("content_digest") is None:
            raise NotACacheError("%s: complete, but no content_digest" % mpath)
        for s in m["shards"]:
            if not s["sealed"] or s.get("sha256") is None:
                raise NotACacheError("%s: complete, but shard %s is not sealed" % (mpath, s["file"]))


def _pages_bytes(env):
    """The bytes an LMDB environment's pages take (its file holds at least these)."""
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def _map_size(cap):
    """What a writer maps for a shard of `cap` bytes, and a reader for a shard still being
    written: a reservation of address space, not disk, for the cap plus room for one chunk and
    LMDB's copy-on-write pages."""
    return 2 * cap + (256 << 20)


class _Replaced(Exception):
    """The file at a shard's path changed while it was being opened (a writer sealing it)."""


class _Env:
    """One shard file's LMDB environment, opened read-only without a lock file (FORMAT 3.3)."""

    borrowed = False

    def __init__(self, path, file, map_size, key):
        # Hold the file we mean and open that one, through /dev/fd: LMDB then maps exactly it even
        # if a writer renames a compacted copy over the path meanwhile, and py-lmdb's guard against
        # opening a file twice knows it by this file alone. Opened by its path, the guard also keys
        # it by path + "-lock" when that exists (a writer's lock file); once the writer deletes it
        # and creates the next shard's, often under the freed inode number, that next shard would
        # be refused as "already open in this process" for as long as this environment lives.
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise _Replaced() from None
        except OSError as e:  # no permission: Swift asks access(2), which gives Python no reason
            raise CacheIOError("cannot read %s: %s" % (path, e.strerror), shard=file) from e
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != key:
                raise _Replaced()
            by_fd = os.path.isdir("/dev/fd")
            kwargs = {} if map_size is None else {"map_size": map_size}
            try:
                env = lmdb.open("/dev/fd/%d" % fd if by_fd else path, subdir=False, readonly=True, lock=False,
                                readahead=False, max_dbs=4, max_spare_txns=0, **kwargs)
            except lmdb.Error as e:
                raise ShardMismatchError("cannot open as LMDB: %s" % str(e).replace("/dev/fd/%d" % fd, path),
                                         shard=file) from e
            try:
                if not by_fd:
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        raise _Replaced() from None
                    if (st.st_dev, st.st_ino) != key:
                        raise _Replaced()
                # A truncated file opens, but touching its missing pages through the map raises
                # SIGBUS. A writer writes a commit's pages before its meta page, so a shard being
                # written passes too.
                need = _pages_bytes(env)
                size = os.fstat(fd).st_size
                if size < need:
                    raise ShardMismatchError("file is truncated: %d bytes, its pages need %d" % (size, need),
                                             shard=file)
                self.records = env.open_db(b"records", create=False)
                self.ids = env.open_db(b"ids", create=False)
                self.digests = env.open_db(b"digests", create=False)
                self.meta = env.open_db(b"meta", create=False)
                self.past_end = _values_past_end(env, fd, size)
            except lmdb.Error as e:
                env.close()
                raise ShardMismatchError("not an mtok shard (named databases missing): %s" % e, shard=file) from e
            except BaseException:
                env.close()
                raise
        finally:
            os.close(fd)
        self.env = env
        self.key = key
        self.users = 0

    def refuse_past_end(self, name, key, loc):
        """Raises for a value that _values_past_end found running past the end of the file: py-lmdb
        reads every page of a value as it hands it out, so such a value must never be asked for."""
        if (name, bytes(key)) in self.past_end:
            raise CorruptRecordError("a value runs past the end of the file (a damaged or forged page)", **loc)


def _value_past_end(txn, path, name, key):
    """Whether the value of `key` in database `name` would run past the end of the file, found by
    descending the tree from its root in `txn`'s snapshot with pread (as _values_past_end, for one
    key): the check for a shard being written, whose values are newer than its walk."""
    record = txn.get(name.encode())
    if record is None or len(record) != 48:
        return False
    (pgno,) = struct.unpack_from("<Q", record, 40)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        # The page size: md_pad of the free database's record in meta page 0 (header 16 bytes,
        # magic, version, address, map size, then the record).
        psize = struct.unpack_from("<I", os.pread(fd, 44, 0).ljust(44, b"\0"), 40)[0]
        if not 512 <= psize <= 65536:
            return False
        for _ in range(64):  # deeper than any real tree: a forged cycle stops here
            if pgno * psize >= size:
                return False  # LMDB refuses a page past its last one itself
            page = os.pread(fd, psize, pgno * psize)
            flags, lower = struct.unpack_from("<HH", page, 10)
            if not flags & 0x03 or not 16 <= lower <= psize:
                return False
            nodes = []
            for i in range((lower - 16) // 2):
                (ptr,) = struct.unpack_from("<H", page, 16 + 2 * i)
                if ptr + 8 <= psize:
                    lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, ptr)
                    nodes.append((page[ptr + 8:ptr + 8 + ksize], lo, hi, nflags, ptr + 8 + ksize))
            if flags & 0x01:  # branch: the last child whose key is at most `key` (the first's is empty)
                child = [n for i, n in enumerate(nodes) if i == 0 or n[0] <= key]
                if not child:
                    return False
                _, lo, hi, nflags, _ = child[-1]
                pgno = lo | hi << 16 | nflags << 32
                continue
            for k, lo, hi, nflags, data in nodes:
                if k == key and nflags & 0x01 and data + 8 <= psize:
                    (opg,) = struct.unpack_from("<Q", page, data)
                    return opg * psize + 16 + (lo | hi << 16) > size
            return False
        return False
    finally:
        os.close(fd)


def _values_past_end(env, fd, size):
    """The (database, key) pairs of the records, ids and digests databases whose value would run
    past the end of the file. LMDB takes a large value's size from its leaf node; py-lmdb touches
    every page of a value before it returns it, so a forged size would kill the process with
    SIGBUS inside `get`, before any check of ours. So the trees are walked once when the file is
    opened, reading pages with pread (never through the map): a branch or leaf page is one page,
    and a large (F_BIGDATA) value starts after its overflow page's 16-byte header. Each database's
    root comes from its record in the main database (MDB_db, root page number at byte 40). Values
    added to a shard being written after it was opened are not walked."""
    psize = env.stat()["psize"]
    pages = size // psize
    bad = set()
    with env.begin() as txn:
        records = {name: txn.get(name) for name in (b"records", b"ids", b"digests")}
    roots = tuple((name.decode(), struct.unpack_from("<Q", record, 40)[0]) for name, record in records.items()
                  if record is not None and len(record) == 48)
    native = _accel.native()
    if native is not None:  # the same walk in C: a tenth of a second per GB of shard in Python
        return set(native.values_past_end(fd, size, psize, roots))
    for name, root in roots:
        todo, seen = [root], set()
        while todo:
            pgno = todo.pop()
            if pgno in seen or pgno >= pages:
                continue  # a cycle, or a page LMDB itself refuses (past its last page)
            seen.add(pgno)
            page = os.pread(fd, psize, pgno * psize)
            if len(page) < psize:
                continue
            flags, lower = struct.unpack_from("<HH", page, 10)
            if not flags & 0x03 or not 16 <= lower <= psize:
                continue
            for i in range((lower - 16) // 2):
                (ptr,) = struct.unpack_from("<H", page, 16 + 2 * i)
                if ptr + 8 > psize:
                    continue
                lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, ptr)
                if flags & 0x01:  # branch: the child's page number is lo | hi << 16 | flags << 32
                    todo.append(lo | hi << 16 | nflags << 32)
                elif nflags & 0x01 and ptr + 8 + ksize + 8 <= psize:  # F_BIGDATA
                    key = page[ptr + 8:ptr + 8 + ksize]
                    (opg,) = struct.unpack_from("<Q", page, ptr + 8 + ksize)
                    if opg * psize + 16 + (lo | hi << 16) > size:
                        bad.add((name, bytes(key)))
    return bad


class _Borrowed:
    """The environment of a shard that a Writer of this process is writing, lent to this process's
    readers: py-lmdb refuses to open the file a second time, and reading through the writer's own
    environment is safe, as its read transactions sit in the lock file's reader table (the writer
    keeps their pages). The writer takes it back (_take_back) before it closes it, when it seals
    or closes the shard; a _Shard that holds it then opens the file anew (_Shard.get). `lock` is
    held around each read, so that the writer waits for the reads under way before it closes."""

    borrowed = True

    def __init__(self, env, dbs, key):
        self.env = env
        self.records, self.ids, self.digests, self.meta = (dbs[n] for n in ("records", "ids", "digests", "meta"))
        self.key = key
        self.users = 0
        self.lock = threading.Lock()
        self.returned = False


class _Shard:
    """One Cache's view of one shard: the process's environment of the file (_acquire) and a read
    snapshot taken when the Cache first read it, checked against the Cache's manifest entry."""

    def __init__(self, root, entry, records_per_chunk, map_size, shuffle):
        self.file = entry["file"]
        self._shuffle = shuffle
        self.path = os.path.join(root, self.file)
        self.count = entry["records"]
        self.sealed = entry["sealed"]
        # A shard still being written can grow past its size now: map room for it, as its writer does.
        self._map_size = None if self.sealed else map_size
        self._records_per_chunk = records_per_chunk
        self._env = _acquire(self.path, self.file, self._map_size)
        self.txn = None
        try:
            self._check()
        except BaseException:
            self.close()
            raise

    def _check(self):
        records_per_chunk = self._records_per_chunk
        e = self._env
        self.env, self.records, self.ids, self.digests = e.env, e.records, e.ids, e.digests
        # buffers=True avoids copying chunks.
        txn = self.env.begin(buffers=True)
        self.txn = txn
        meta = {bytes(k).decode("ascii", "replace"): bytes(v).decode("ascii", "replace")
                for k, v in txn.cursor(db=e.meta)}
        if meta.get("format") != SHARD_FORMAT:
            raise UnknownVersionError("shard format %r, expected %r" % (meta.get("format"), SHARD_FORMAT),
                                      shard=self.file)
        # A shard written since meta.shuffle exists records its byte-shuffle setting: a manifest
        # that says otherwise would make every value decode wrong with every checksum intact.
        self.records_shuffle = "shuffle" in meta
        if "shuffle" in meta and meta["shuffle"] != self._shuffle:
            raise ShardMismatchError("written with shuffle %s, the manifest says %s" % (meta["shuffle"], self._shuffle),
                                     shard=self.file)
        if meta.get("records_per_chunk") != str(records_per_chunk):
            raise ShardMismatchError("records_per_chunk %r differs from the manifest's %d"
                                     % (meta.get("records_per_chunk"), records_per_chunk), shard=self.file)
        count = meta.get("count", "")
        held = int(count) if count.isdigit() and count.isascii() else -1
        # FORMAT 6.2: a writer commits a batch to the shard before it rewrites the manifest, so an
        # unsealed shard may hold more records than the manifest lists; they are not yet part of
        # the cache, and the manifest's count is what this Cache reads.
        if (held != self.count) if self.sealed else (held < self.count):
            raise ShardMismatchError("holds %r records, manifest says %d" % (meta.get("count"), self.count),
                                     shard=self.file)
        if not self.sealed:
            # An unsealed shard may have a writer in another process. It cannot see this reader
            # (lock=False), so it reuses the pages of our snapshot two commits later: read each
            # record in a snapshot of its own (get), taken when it is read.
            txn.abort()
            self.txn = None
        # A sealed shard keeps one long read transaction per Cache: no writer touches the file, so
        # it pins nothing, and it saves a begin/abort per record.

    def refuse_past_end(self, name, key, loc):
        """_Env.refuse_past_end; a writer's own environment, lent to this process, holds what
        that writer wrote."""
        if not self._env.borrowed:
            self._env.refuse_past_end(name, key, loc)

    def get(self, key, name):
        """The value of `key` in the database `name` ("records", "ids", ...; a copy), read in a
        snapshot of the shard as it is now."""
        e = self._env
        if e.borrowed:
            with e.lock:
                if not e.returned:
                    with e.env.begin() as txn:
                        return txn.get(key, db=getattr(e, name))
            # Its writer sealed the shard (a compacted copy now has the path, with the records
            # this Cache lists) or closed it: read the file as it is now, as another process would.
            self._reopen(e)
        try:
            with self.env.begin() as txn:
                # A shard being written gains values after it was opened (and walked): look at
                # this one's leaf node first, in the snapshot the value comes from.
                if _value_past_end(txn, self.path, name, bytes(key)):
                    raise CorruptRecordError("a value runs past the end of the file (a damaged or forged page)",
                                             shard=self.file)
                return txn.get(key, db=getattr(self._env, name))
        except lmdb.MapResizedError as e:
            raise ShardMismatchError("grew past the %d bytes this process mapped for it; close its Caches and "
                                     "open it again" % self.env.info()["map_size"], shard=self.file) from e

    def _reopen(self, old):
        with _LOCK:
            if self._env is old:  # not done already by another thread
                self._env = _acquire(self.path, self.file, self._map_size)
                _release(old)
                # Its manifest entry here is unsealed, so _check keeps no transaction open.
                self._check()

    def close(self):
        if self.txn is not None:
            try:
                self.txn.abort()
            except lmdb.Error:
                pass
            self.txn = None
        if self._env is not None:
            _release(self._env)
            self._env = None


# Shard environments open in this process, one per file, shared by every Cache that reads it:
# py-lmdb refuses to open a file that is already open in the process (LMDB's lock-file rule,
# applied to lock=False environments too). Keyed by the file's (st_dev, st_ino), so a cache
# rebuilt at the same path has new files and gets new environments, while Caches that still hold
# the old ones keep reading them; each Cache takes its own snapshot (_Shard), so one opened after
# a shard grew sees what it holds then. Value: _Env, with `users` counting the _Shards on it.
# After a fork the child inherits the parent's entries: it closes them (safe for read-only
# MDB_NOLOCK environments: that only unmaps and closes the child's copies) and opens its own, as
# lmdb.h requires. A shard that a Writer of this process is writing is lent by it (_WRITING, key ->
# (environment, databases)) and read through its environment (_Borrowed).
_REGISTRY = {}
_WRITING = {}
_DROPPED = []  # (key, environment) of Writers dropped without close() (_writer_dropped)
_REGISTRY_PID = os.getpid()
_LOCK = threading.Lock()
# Shards of Caches that the garbage collector took while another registry call was under way
# (it may run in the middle of one, on the same thread): the next call releases them.
_DEFERRED = []


# This process's id, kept up to date across fork: the read path compares it for every record,
# and os.getpid() is a system call.
_PID = os.getpid()


def _after_fork():
    global _LOCK, _PID
    _LOCK = threading.Lock()  # another thread may have held it at the fork
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def _forget_parent():
    """Called with _LOCK held."""
    global _REGISTRY_PID
    if _REGISTRY_PID != os.getpid():
        for e in _REGISTRY.values():
            if e.borrowed:
                continue  # a writer's environment: the parent's to close
            try:
                e.env.close()
            except lmdb.Error:
                pass
        _REGISTRY.clear()
        _WRITING.clear()
        del _DEFERRED[:]
        del _DROPPED[:]
        _REGISTRY_PID = os.getpid()
    while _DEFERRED:
        for shard in _DEFERRED.pop():
            shard.close()
    for item in list(_DROPPED):
        if _give_back(*item, wait=False):
            _DROPPED.remove(item)


def _shard_stat(path, file):
    """The stat of the shard file at `path`, following symbolic links (shards may be links to
    files on other disks). A missing, unreachable or non-regular file is refused in the words of
    Swift's Shard.fileSize, saying which; never opened, as opening a FIFO would wait for a writer.
    (Whether the file may be read, _Env finds when it opens it.)"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MissingShardError("%s is a symbolic link to a file that does not exist" % path if os.path.islink(path)
                                else "%s does not exist" % path, shard=file) from None
    except OSError as e:
        raise CacheIOError("cannot read %s: %s" % (path, e.strerror), shard=file) from e
    if not stat.S_ISREG(st.st_mode):
        raise ShardMismatchError("%s is %s, not a shard file"
                                 % (path, "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"),
                                 shard=file)
    return st


def _acquire(path, file, map_size):
    """The process's environment of the file at `path` (called with _LOCK held)."""
    _forget_parent()
    for _ in range(3):
        st = _shard_stat(path, file)
        key = (st.st_dev, st.st_ino)
        env = _REGISTRY.get(key)
        if env is None and key in _WRITING:
            env = _REGISTRY[key] = _Borrowed(*_WRITING[key], key)
        elif env is None:
            try:
                env = _REGISTRY[key] = _Env(path, file, map_size, key)
            except _Replaced:
                continue
        env.users += 1
        return env
    raise ShardMismatchError("replaced again and again while it opened", shard=file)


def _release(env):
    """Called with _LOCK held."""
    env.users -= 1
    if env.users == 0:
        if _REGISTRY.get(env.key) is env:
            del _REGISTRY[env.key]
        if not env.borrowed:
            env.env.close()


def _file_key(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _lend(path, env, dbs):
    """Called, with _LOCK held, by a Writer that has opened the shard file at `path` for writing:
    this process's readers read it through `env` from now on. Returns the key to give back
    (_take_back)."""
    key = _file_key(path)
    _WRITING[key] = (env, dbs)
    return key


def _give_back(key, env, wait):
    """Closes the environment `env` a Writer lent (called with _LOCK held): readers that hold it
    finish their reads under way, and from then on open the file themselves. Returns False,
    without waiting, when `wait` is false and a read holds it."""
    lent = _REGISTRY.get(key)
    if lent is not None and lent.borrowed:
        if not lent.lock.acquire(blocking=wait):
            return False
        try:
            lent.returned = True  # a reader that takes the lock now reopens (_Shard.get), under _LOCK
        finally:
            lent.lock.release()
        del _REGISTRY[key]  # a Cache opened from now on opens the file itself
    _WRITING.pop(key, None)
    env.close()
    return True


def _take_back(key, env):
    """Called by a Writer to close the environment it lent. All under _LOCK, so that no reader
    opens the file while py-lmdb still counts it open. (_Shard.get takes no _LOCK while it holds
    a lent environment's lock.)"""
    with _LOCK:
        _forget_parent()
        _give_back(key, env, True)


def _writer_dropped(key, env):
    """Finalizer of a Writer dropped without close(). The garbage collector may run it in the
    middle of a registry call, or of a read through `env`, on this thread: it takes note, and a
    registry call gives the environment back once no read holds it (_forget_parent)."""
    _DROPPED.append((key, env))
    _settle_unless_busy()


def _check_unread(path, file):
    """Refuses to let a Writer open the shard file at `path` while a Cache of this process has it
    open (py-lmdb would refuse with "already open in this process"). Called with _LOCK held."""
    _forget_parent()
    try:
        key = _file_key(path)
    except FileNotFoundError:
        return
    if key in _REGISTRY:
        raise InUseError("a Cache open in this process reads %s: close it (c.close()) before resuming the cache"
                         % path, shard=file)


def _open_shards(root, entries, records_per_chunk, map_size, shuffle):
    shards = []
    with _LOCK:
        try:
            for e in entries:
                shards.append(_Shard(root, e, records_per_chunk, map_size, shuffle))
        except BaseException:
            for s in shards:
                s.close()
            raise
    return shards


def _close_shards(shards, pid):
    if pid == os.getpid():  # a forked child leaves its parent's shards alone
        with _LOCK:
            _forget_parent()
            for s in shards:
                s.close()


def _collected(shards, pid):
    """Finalizer of a Cache: releases its shards unless a registry call is under way."""
    if pid != os.getpid():
        return
    _DEFERRED.append(shards)
    _settle_unless_busy()


def _settle_unless_busy():
    """Releases what finalizers noted (_DEFERRED, _DROPPED) now, unless a registry call is under
    way (a finalizer may run in the middle of one, on its thread): then that call, or the next,
    releases them."""
    if _LOCK.acquire(blocking=False):
        try:
            _forget_parent()
        finally:
            _LOCK.release()


class Cache:
    """A cache opened for reading: a finished one, or one still being written, of which it reads
    the records its manifest listed when it was opened (open it again to see more).

    LMDB environments are opened lazily, per process: after a fork (DataLoader workers) the child
    opens its own on first use and never touches the parent's. They are released by close(), or
    when the Cache is garbage-collected. Per-process memory is a few small NumPy arrays (no
    per-record Python objects).

    `latents` (and `logvar`) come back as float32 by default; `latent_format="raw"` keeps the
    stored dtype (bf16 as uint16 bit patterns).
    """

    def __init__(self, path, latent_format="f32"):
        if latent_format not in ("f32", "raw"):
            raise ValueError("latent_format must be 'f32' or 'raw'")
        self.path = os.fspath(path)
        self.latent_format = latent_format
        mpath = os.path.join(self.path, "manifest.json")
        try:
            # A regular file of bounded size only (as Swift's Manifest.read): a FIFO would block
            # the open, a link to /dev/zero would be read without end.
            st = os.stat(mpath)
            if not stat.S_ISREG(st.st_mode):
                raise NotACacheError("%s is not a regular file" % mpath)
            if st.st_size > MANIFEST_MAX_BYTES:
                raise NotACacheError("%s is %d bytes, more than the %d MiB a manifest may be"
                                     % (mpath, st.st_size, MANIFEST_MAX_BYTES >> 20))
            with builtins.open(mpath, "rb") as f:
                raw = f.read(MANIFEST_MAX_BYTES + 1)
        except OSError as e:
            raise NotACacheError("%s has no readable manifest.json (%s)" % (self.path, e.strerror)) from e
        try:
            m = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise NotACacheError("%s names the key %s twice in one object" % (mpath, json.dumps(e.args[0]))) from None
        except (UnicodeDecodeError, ValueError) as e:
            raise NotACacheError("%s is not JSON: %s" % (mpath, e)) from e
        except RecursionError:
            raise NotACacheError("%s nests deeper than %d levels" % (mpath, MAX_JSON_DEPTH)) from None
        if _depth(m) >= MAX_JSON_DEPTH:
            raise NotACacheError("%s nests deeper than %d levels" % (mpath, MAX_JSON_DEPTH))
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise NotACacheError("%s does not name format %r" % (mpath, FORMAT))
        if _integer(m.get("format_version")) != FORMAT_VERSION:
            raise UnknownVersionError("%s: format_version %r, this reader knows %d"
                                      % (mpath, m.get("format_version"), FORMAT_VERSION))
        _check_manifest(m, mpath)
        self.records_per_chunk = m["records_per_chunk"]
        self.shuffled = m["compression"]["shuffle"] == "byte-planes"
        self.shard_entries = [dict(s) for s in m["shards"]]
        counts = [s["records"] for s in self.shard_entries]
        # What an unsealed shard's environment maps: room to grow, as its writer reserves.
        self._map_size = _map_size(max(m["shard_cap_bytes"], 0))
        self.manifest = m
        self.classes = m.get("classes")
        self.shard_records = np.asarray(counts, dtype=np.int64)
        # first(s) of FORMAT 2, plus the total at the end.
        self.bounds = np.concatenate([[0], np.cumsum(self.shard_records)]).astype(np.int64)
        self._starts = [int(b) for b in self.bounds[:-1]]  # bisect on a list: no NumPy call per record
        self._count = int(self.bounds[-1])
        self._pid = None
        self._shards = None
        self._dctx = None
        self._finalizer = None
        self._fast = None

    # -- process-local state ------------------------------------------------------------------

    def _open(self):
        pid = os.getpid()
        if self._pid != pid:
            if self._finalizer is not None:
                self._finalizer.detach()  # the parent's shards, after a fork: the parent releases them
            shards = _open_shards(self.path, self.shard_entries, self.records_per_chunk, self._map_size,
                                  self.manifest["compression"]["shuffle"])
            # A Cache that is dropped without close() releases its shards too, so that a cache
            # rebuilt or grown at this path is not held open (and its old files not kept) for good.
            self._finalizer = weakref.finalize(self, _collected, shards, pid)
            self._finalizer.atexit = False  # exiting unmaps them anyway
            self._shards = shards
            # Per shard, what the C extension reads through: (transaction, records database) of
            # a sealed shard, read in one long snapshot, whose walk found no value running past
            # the end of its file; (None, None) for the others, which the Python path reads.
            self._fast = [(sh.txn, sh.records) if sh.txn is not None and not sh._env.past_end else (None, None)
                          for sh in shards]
            self._dctx = zstandard.ZstdDecompressor()
            self._pid = pid
            try:
                self._check_shuffle(shards)
            except BaseException:
                self.close()
                raise
        return self._shards

    def _check_shuffle(self, shards):
        """For a shard that does not record its shuffle setting (written before meta.shuffle
        existed, or with the key removed), its first record read with the manifest's setting must
        be the payload whose SHA-256 the shard stores: a manifest edited to the other setting
        would make every record decode to other values with every checksum intact (as Swift's
        Shard.checkShuffle). A first record that does not decode is left for its read to report."""
        for s, shard in enumerate(shards):
            if shard.records_shuffle or not shard.count:
                continue
            try:
                payload = self.payload(int(self.bounds[s]))
            except CorruptRecordError:
                continue
            key = struct.pack(">Q", 0)
            shard.refuse_past_end("digests", key, {"shard": shard.file})
            stored = (shard.txn.get(key, db=shard.digests) if shard.txn is not None
                      else shard.get(key, "digests"))
            if stored is None or bytes(stored[:32]) != hashlib.sha256(payload).digest():
                raise ShardMismatchError("its first record does not read back as stored with shuffle %s: the manifest's "
                                         "shuffle setting is not the one this shard was written with"
                                         % self.manifest["compression"]["shuffle"], shard=shard.file)

    def close(self):
        """Releases this Cache's shards; reading again reopens them."""
        if self._finalizer is not None:
            self._finalizer.detach()
            _close_shards(self._shards, self._pid)
        self._shards, self._pid, self._finalizer, self._fast = None, None, None, None

    def __getstate__(self):
        # Pickled into spawned workers: the handles stay behind and reopen lazily there.
        state = self.__dict__.copy()
        state.update(_pid=None, _shards=None, _dctx=None, _finalizer=None, _fast=None)
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- statistics ---------------------------------------------------------------------------

    STATS_MAX_BYTES = 64 << 20

    @property
    def stats(self):
        """The cache's `stats.json` as a dict (written by `mtok tokenize` and `mtok merge`; see
        `mtok stats --help`): per-channel `latents` (and `logvar`) count, mean, std, min, max;
        `codebook` (size, used, perplexity, most_used, least_used, counts); `groups`; `labels`.
        None when the cache has none, or when it describes other records (another content
        digest: the cache was changed after). Normalise latents per channel with
        `mean, std = cache.latent_mean_std()` then `(x - mean) / std`."""
        spath = os.path.join(self.path, "stats.json")
        try:
            st = os.lstat(spath)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.STATS_MAX_BYTES:
            return None
        try:
            with builtins.open(spath, "rb") as f:
                s = json.loads(f.read(self.STATS_MAX_BYTES + 1).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        digest = self.manifest.get("content_digest")
        if not isinstance(s, dict) or digest is None or s.get("content_digest") != digest or s.get("records") != len(self):
            return None
        return s

    def latent_mean_std(self):
        """(mean, std) float32 arrays of shape [C] from `stats`, for `(latents - mean) / std`.
        Raises NotACacheError when the cache has no valid stats.json (`mtok stats CACHE --write`)."""
        s = self.stats
        if s is None or not s.get("latents"):
            raise NotACacheError("%s has no statistics for these records: run `mtok stats %s --write`" % (self.path, self.path))
        mean = np.asarray([c["mean"] for c in s["latents"]], dtype=np.float32)
        std = np.asarray([c["std"] for c in s["latents"]], dtype=np.float32)
        return mean, std

    # -- records ------------------------------------------------------------------------------

    def __len__(self):
        return int(self.bounds[-1])

    def locate(self, index):
        """(shard number, local record number) of a global index."""
        n = len(self)
        if not (0 <= index < n):
            raise IndexError("index %d not in 0..%d" % (index, n - 1) if n else "index %d: the cache is empty" % index)
        s = bisect.bisect_right(self._starts, index) - 1
        return s, index - self._starts[s]

    def _stored(self, index):
        """Decompressed (still byte-shuffled) payload of record `index`, and its location."""
        index = int(index)
        s, local = self.locate(index)
        shard = self._open()[s]
        R = self.records_per_chunk
        chunk_no, slot = divmod(local, R)
        loc = dict(shard=shard.file, chunk=chunk_no, index=index)
        txn = shard.txn
        shard.refuse_past_end("records", struct.pack(">Q", chunk_no), loc)
        if txn is not None:
            chunk = txn.get(struct.pack(">Q", chunk_no), db=shard.records)
        else:
            chunk = shard.get(struct.pack(">Q", chunk_no), "records")
        if chunk is None:
            raise CorruptRecordError("chunk %d is missing" % chunk_no, **loc)
        return _record_in_chunk(chunk, slot, R, self._dctx, loc), loc

    def payload(self, index):
        """The record's payload (a safetensors blob) with the byte shuffle undone."""
        stored, loc = self._stored(index)
        if not self.shuffled:
            return stored
        header, data_start = _parse_header(stored, loc)
        out = bytearray(stored)
        for name, (dt, shape, (b, e)) in header["tensors"].items():
            size = DTYPES[dt][1]
            if size > 1:
                n = (e - b) // size
                planes = np.frombuffer(stored, np.uint8, count=e - b, offset=data_start + b).reshape(size, n)
                out[data_start + b:data_start + e] = planes.T.tobytes()
        return bytes(out)

    def __getitem__(self, index):
        if type(index) is not int:
            if not isinstance(index, np.integer):
                raise TypeError("index with an int; use batch() for many records")
            index = int(index)  # arithmetic on NumPy scalars costs microseconds a record
        if index < 0:
            n = len(self)
            if index < -n:
                raise IndexError("index %d not in -%d..%d" % (index, n, n - 1) if n else
                                 "index %d: the cache is empty" % index)
            index += n
        # The C extension's path; what it leaves (None) is read in Python.
        native = _accel.native()
        if native is not None and index < self._count:
            s = bisect.bisect_right(self._starts, index) - 1
            R = self.records_per_chunk
            chunk_no, slot = divmod(index - self._starts[s], R)
            chunk = self._fast_chunk(s, chunk_no)
            if chunk is not None:
                rec = native.decode(chunk, slot, R, self.shuffled, self.latent_format == "f32", index)
                if rec is not None:
                    return rec
        return self._decode(index)

    def _fast_chunk(self, s, chunk_no):
        """The chunk, read in the shard's long read transaction, when the native fast path may
        read the shard (see _open: sealed, and no value running past the end of its file).
        None otherwise, and for a missing chunk: the Python path reads it then, and reports what
        is wrong."""
        if self._pid != _PID:
            self._open()
        txn, db = self._fast[s]
        return None if txn is None else txn.get(_CHUNK_KEY(chunk_no), None, db)

    def _decode(self, index):
        """Record `index` read in Python (what the C extension leaves: see __getitem__)."""
        stored, loc = self._stored(index)
        return _decode_record(stored, loc, index, self.shuffled, self.latent_format == "f32")

    def get(self, id, view=0):
        """The record of (id, view); KeyError if the cache does not hold it. A damaged or forged
        id index that points at another (id, view) raises CorruptRecordError: never another
        image's record (as Swift's record(id:view:))."""
        i = self.index_of(id, view)
        if i is None:
            raise KeyError((id, view))
        r = self[i]
        if r["id"] != id or r["view"] != view:
            raise CorruptRecordError("the id index points at record %d, which is (%s, view %d)" % (i, r["id"], r["view"]),
                                     index=i, id=id, view=view)
        return r

    def index_of(self, id, view=0):
        """Global index of (id, view), or None (FORMAT 3.1, database `ids`)."""
        raw = id.encode("utf-8")
        if not raw or len(raw) > 508 or b"\x00" in raw or not (0 <= view <= 65535):
            return None
        key = raw + b"\x00" + struct.pack(">H", view)
        for s, shard in enumerate(self._open()):
            shard.refuse_past_end("ids", key, {"shard": shard.file, "id": id, "view": view})
            v = shard.txn.get(key, db=shard.ids) if shard.txn is not None else shard.get(key, "ids")
            if v is not None:
                if len(v) != 4:
                    raise CorruptRecordError("ids value of %d bytes" % len(v), shard=shard.file, id=id, view=view)
                local = struct.unpack("<I", v)[0]
                if local >= shard.count:  # committed to an unsealed shard, not yet listed (_Shard)
                    return None
                return int(self.bounds[s]) + local
        return None

    def batch(self, indices):
        """Records `indices` (in that order) as contiguous arrays: latents [B,K,C] float32 (or the
        stored dtype with latent_format="raw"), logvar [B,K,C] (when the records have one), indices
        [B,K] uint32, groups [B,N] uint16, labels [B] int32, views [B] int32, records [B] int64
        (global indices), ids (a list).

        Each tensor's bytes are gathered from all records first and its byte planes undone for the
        whole batch at once: a few NumPy calls per batch instead of per record (or, with the C
        extension, each chunk's records decoded straight into the batch's arrays)."""
        indices = np.asarray(indices, dtype=np.int64)
        B = len(indices)
        if B == 0:
            return {"records": indices, "ids": []}
        native = _accel.native()
        if native is not None:
            out = self._batch_native(indices, native)
            if out is not None:
                return out
        return self._batch_python(indices)

    def _batch_native(self, indices, native):
        """batch() through the C extension: one call per run of records in one chunk. None when
        a record leaves the fast path (damaged, another layout, an unsealed shard...): the batch
        is then read again in Python, which reports what is wrong."""
        B = len(indices)
        n = len(self)
        if int(indices.min()) < 0 or int(indices.max()) >= n:
            return None  # the Python path raises IndexError
        R = self.records_per_chunk
        shard = np.searchsorted(self.bounds, indices, side="right") - 1
        local = indices - self.bounds[shard]
        chunk_no, slots = np.divmod(local, R)
        # Runs of consecutive records in one chunk: [starts[j], starts[j + 1]).
        change = np.flatnonzero((shard[1:] != shard[:-1]) | (chunk_no[1:] != chunk_no[:-1])) + 1
        starts = [0] + change.tolist() + [B]
        shard, chunk_no, slots = shard.tolist(), chunk_no.tolist(), slots.tolist()
        f32 = self.latent_format == "f32"
        first = self._fast_chunk(shard[0], chunk_no[0])
        layout = -1 if first is None else native.layout(first, slots[0], R, self.shuffled)
        if layout < 0:
            return None
        spec = _NATIVE_LAYOUTS[layout][f32]
        arrays = [np.empty((B,) + shape, dt) for _, dt, shape in spec]
        labels = np.empty(B, np.int32)
        views = np.empty(B, np.int32)
        ids = []
        outs = tuple(arrays)
        for a, b in zip(starts[:-1], starts[1:]):
            chunk = self._fast_chunk(shard[a], chunk_no[a])
            got = None if chunk is None else \
                native.decode_rows(chunk, slots[a:b], R, self.shuffled, f32, layout, outs, labels, views, a)
            if got is None:
                return None
            ids += got
        out = {"labels": labels, "views": views, "records": indices.copy(), "ids": ids}
        out.update((name, arr) for (name, _, _), arr in zip(spec, arrays))
        return out

    def _batch_python(self, indices):
        B = len(indices)
        parts = []
        layout = None
        labels = np.empty(B, np.int32)
        views = np.empty(B, np.int32)
        ids = []
        for row, i in enumerate(indices):
            stored, loc = self._stored(int(i))
            header, data_start = _parse_header(stored, loc)
            meta = _metadata(header["metadata"], loc)
            t = header["tensors"]
            if layout is None:
                layout = t
            elif t is not layout and _shapes(t) != _shapes(layout):
                raise ShapeMismatchError("record has %s; the batch has %s" % (_shapes(t), _shapes(layout)),
                                         index=int(i), id=meta["id"], view=meta["view"])
            parts.append((stored, data_start, t))
            labels[row] = meta["label"]
            views[row] = meta["view"]
            ids.append(meta["id"])
        f32 = self.latent_format == "f32"
        out = {"labels": labels, "views": views, "records": indices.copy(), "ids": ids}
        for name, (_, shape, _) in layout.items():
            dts = {p[2][name][0] for p in parts}
            if len(dts) != 1:
                raise ShapeMismatchError("records of the batch store %s as %s" % (name, sorted(dts)))
            dt = dts.pop()
            np_dt, size = DTYPES[dt]
            n = 1
            for d in shape:
                n *= d
            # memoryview slices: join copies each record's bytes once, straight into the batch.
            raw = np.frombuffer(b"".join(memoryview(st)[ds + p[name][2][0]:ds + p[name][2][1]] for st, ds, p in parts),
                                np.uint8)
            is_float = name in ("latents", "logvar")
            if self.shuffled and size > 1:
                planes = raw.reshape(B, size, n)
                if is_float and f32 and dt == "BF16":
                    arr = _bf16_planes_to_float32(planes[:, 0], planes[:, 1])
                else:
                    wide = {2: np.uint16, 4: np.uint32, 8: np.uint64}[size]
                    arr = planes[:, 0].astype(wide)
                    for j in range(1, size):
                        arr |= planes[:, j].astype(wide) << wide(8 * j)
                    arr = arr.view(np_dt)
            else:
                arr = raw.view(np_dt).reshape(B, n)
                if is_float and f32 and dt == "BF16":
                    arr = bf16_to_float32(arr)
            if is_float and f32 and arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            if name == "indices":
                arr = arr.astype(np.uint32, copy=False)
            elif name == "groups":
                k = layout["latents"][1][0]
                if arr.size:
                    worst = arr.max(axis=1)
                    if int(worst.max()) >= k:
                        row = int(np.argmax(worst >= k))
                        raise BadRecordError("group id %d is not a kept token (K = %d)" % (int(worst[row]), k),
                                             index=int(indices[row]), id=ids[row], view=int(views[row]))
                arr = arr.astype(np.uint16, copy=False)
            out[name] = arr.reshape((B,) + tuple(shape))
        return out

    # -- streams (Schemas/STREAM.md) ----------------------------------------------------------

    def permutation(self, epoch, seed, block_records=None, window_blocks=_order.DEFAULT_WINDOW_BLOCKS, shuffle=True):
        """P, the epoch's global permutation (STREAM.md section 3)."""
        return _order.permutation(self.shard_records, seed, epoch, block_records or self.records_per_chunk,
                                  window_blocks, shuffle)

    def stream_indices(self, rank, world_size, epoch, seed, start=0, padding="pad", block_records=None,
                       window_blocks=_order.DEFAULT_WINDOW_BLOCKS, shuffle=True):
        """Global record indices `rank` reads from global position `start` on (STREAM.md 4)."""
        perm = self.permutation(epoch, seed, block_records, window_blocks, shuffle)
        return _order.rank_indices(perm, rank, world_size, start, padding)

    def stream(self, rank, world_size, epoch, seed, start=0, padding="pad", batch_size=None, limit=None, **order_args):
        """Yields the records `rank` of `world_size` sees in `epoch`, from global position `start`
        on: one dict per sample, or batches (see `batch`) of `batch_size` when given.
        `order_args`: shuffle=False keeps the records in cache order (the same every epoch, each
        rank its share); block_records and window_blocks set the shuffle's locality (STREAM.md 3)."""
        idx = self.stream_indices(rank, world_size, epoch, seed, start, padding, **order_args)
        if limit is not None:
            idx = idx[:limit]
        if batch_size is None:
            for i in idx:
                yield self[int(i)]
        else:
            for lo in range(0, len(idx), batch_size):
                yield self.batch(idx[lo:lo + batch_size])


def _record_in_chunk(chunk, slot, R, dctx, loc):
    """The decompressed (still byte-shuffled) payload in `slot` of a chunk (FORMAT 3.2, 4.2),
    every check made (CorruptRecordError naming `loc` otherwise). What _native.c's
    record_in_chunk takes the happy path of."""
    try:
        offsets = _chunk_offsets(chunk, R)
    except ValueError as e:
        raise CorruptRecordError(str(e), **loc) from None
    if slot >= len(offsets) - 1:
        raise CorruptRecordError("slot %d not in a chunk of %d" % (slot, len(offsets) - 1), **loc)
    base = 4 * (len(offsets) + 1)
    frame = chunk[base + int(offsets[slot]):base + int(offsets[slot + 1])]
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:  # no frame header: a damaged magic number, or too few bytes
        declared = -1
    if declared < 0:
        raise CorruptRecordError("not a zstd frame with a declared content size", **loc)
    if declared > MAX_PAYLOAD:
        raise CorruptRecordError("frame declares %d bytes, limit is %d" % (declared, MAX_PAYLOAD), **loc)
    # FORMAT 4.2: every frame carries its content checksum (RFC 8878 3.1.1.1: bit 2 of the
    # frame header descriptor after the magic number). zstd decodes a frame without one just
    # as well, so a flipped byte in it would come back as a silently different record.
    if not frame[4] & 0x04:
        raise CorruptRecordError("the frame has no content checksum (every record's frame must carry one)", **loc)
    try:
        # Verifies the XXH64 content checksum. A record is one frame (FORMAT 4.2): bytes after
        # it in its slot (a second frame, or garbage) are refused, as Swift's reader refuses them.
        stored = dctx.decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CorruptRecordError("zstd: %s" % e, **loc) from e
    if len(stored) != declared:
        raise CorruptRecordError("frame produced %d bytes, declared %d" % (len(stored), declared), **loc)
    return stored


def _decode_record(stored, loc, index, shuffled, f32):
    """A record's dict from its decompressed payload, every check made (FORMAT 4.1, 4.2): what
    _native.c's decode takes the happy path of."""
    header, data_start = _parse_header(stored, loc)
    meta = header["metadata"]
    loc = dict(loc, id=meta.get("id"), view=meta.get("view"))
    t = header["tensors"]
    out = {}
    for name, (dt, shape, (b, e)) in t.items():
        np_dt, size = DTYPES[dt]
        n = (e - b) // size
        is_float = name in ("latents", "logvar")
        if shuffled and size > 1:
            if is_float and f32 and dt == "BF16":
                planes = np.frombuffer(stored, np.uint8, count=e - b, offset=data_start + b).reshape(2, n)
                arr = _bf16_planes_to_float32(planes[0], planes[1])
            elif n * size <= 4096:
                # Small tensors: one transposing copy beats several whole-plane operations.
                planes = np.frombuffer(stored, np.uint8, count=e - b, offset=data_start + b).reshape(size, n)
                arr = planes.T.copy().view(np_dt).reshape(n)
            else:
                arr = _unplane(stored, data_start + b, n, size).view(np_dt)
        else:
            arr = np.frombuffer(stored, np_dt, count=n, offset=data_start + b)
            if is_float and f32 and dt == "BF16":
                arr = bf16_to_float32(arr)
            else:
                arr = arr.copy()
        if is_float and f32 and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        out[name] = arr.reshape(shape)
    k = t["latents"][1][0]
    groups = out["groups"]
    if groups.size and int(groups.max()) >= k:
        raise BadRecordError("group id %d is not a kept token (K = %d)" % (int(groups.max()), k), **loc)
    out.update(_metadata(meta, loc))
    out["index"] = index
    out["dtypes"] = {name: v[0] for name, v in t.items()}
    return out


# Validated tensor layouts, keyed by (data length, tensor entries): every record of a cache has
# the same few layouts, so the checks of FORMAT 4.1 run once per layout, not once per record.
_LAYOUTS = {}
# The same layouts keyed by (data length, header text after the __metadata__ object), for headers
# that begin with it (both writers put it first): a record whose tensor entries are character for
# character those of a checked one needs only its metadata parsed. A tail is stored once its whole
# header has passed the full parse, which refuses a key named twice: so no stored tail names a key
# twice or __metadata__ at all, and a header made of a checked tail and a metadata object that
# names no key twice names none.
_TAILS = {}
_META_OPEN = '{"__metadata__":'
_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _parse_header(stored, loc):
    """Parses and checks the safetensors header (FORMAT 4.1). Returns ({"tensors": {name: (dtype,
    shape, (begin, end))}, "metadata": {...}}, data start)."""
    if len(stored) < 8:
        raise BadRecordError("payload of %d bytes" % len(stored), **loc)
    (hlen,) = struct.unpack_from("<Q", stored, 0)
    if hlen > len(stored) - 8:
        raise BadRecordError("header length %d exceeds the %d-byte payload" % (hlen, len(stored)), **loc)
    data_start = 8 + hlen
    data_len = len(stored) - data_start
    try:
        text = bytes(stored[8:8 + hlen]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecordError("header is not JSON: %s" % e, **loc) from e
    tail = None
    if text.startswith(_META_OPEN):
        try:
            meta, end = _JSON.raw_decode(text, len(_META_OPEN))
            tail = text[end:]
        except ValueError:
            pass  # the full parse below reports it
        tensors = _TAILS.get((data_len, tail)) if tail is not None else None
        if tensors is not None and type(meta) is dict and meta.get("mtok.format") == RECORD_FORMAT \
                and all(type(v) is str for v in meta.values()):
            return {"tensors": tensors, "metadata": meta}, data_start
    try:
        h = _JSON.decode(text)
    except _DuplicateKey as e:
        raise BadRecordError("header names the key %s twice in one object" % json.dumps(e.args[0]), **loc) from None
    except ValueError as e:
        raise BadRecordError("header is not JSON: %s" % e, **loc) from e
    if not isinstance(h, dict):
        raise BadRecordError("header is not a JSON object", **loc)
    meta = h.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise UnknownVersionError("no __metadata__ of strings", **loc) if meta is None else \
            BadRecordError("__metadata__ must map strings to strings", **loc)
    if meta.get("mtok.format") != RECORD_FORMAT:
        raise UnknownVersionError("record format %r, this reader knows %r" % (meta.get("mtok.format"), RECORD_FORMAT),
                                  **loc)
    try:
        key = (data_len,) + tuple((name, v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"]))
                                  for name, v in h.items())
        tensors = _LAYOUTS.get(key)
    except (KeyError, TypeError, AttributeError):
        key, tensors = None, None
    if tensors is None:
        tensors = _check_layout(h, data_len, loc)
        if key is not None and len(_LAYOUTS) < 1024:
            _LAYOUTS[key] = tensors
    if tail is not None and len(_TAILS) < 1024:
        _TAILS[(data_len, tail)] = tensors
        _learn_native(tail, data_len, tensors)
    return {"tensors": tensors, "metadata": meta}, data_start


# The C extension's layouts (_native.learn): its number -> {f32: [(name, dtype, shape)] of a
# batch's arrays}.
_NATIVE_LAYOUTS = {}
_KINDS = {"latents": 0, "logvar": 1, "indices": 2, "groups": 3}
_DTYPE_CODES = {"F32": 0, "F16": 1, "BF16": 2, "U32": 3, "U16": 4, "U8": 5}
if _accel.built() is not None:
    _accel.built().set_array_type(np.ndarray)


def _learn_native(tail, data_len, tensors):
    """Tells the C extension a record layout that the full parse above has checked: from now on
    it decodes records of exactly this layout itself (the fast path of FORMAT 4.1's checks),
    into the dict and arrays _decode makes."""
    native = _accel.built()  # also while not in use: use_native(True) may follow
    if native is None:
        return
    k = tensors["latents"][1][0]
    spec = tuple((_KINDS[name], _DTYPE_CODES[dt], (e - b) // DTYPES[dt][1], b) for name, (dt, shape, (b, e)) in tensors.items())
    single, batch = {}, {}
    for f32 in (False, True):
        at, single[f32], batch[f32] = 0, [], []
        for name, (dt, shape, (b, e)) in tensors.items():
            count = (e - b) // DTYPES[dt][1]
            out = np.dtype(np.float32) if f32 and name in ("latents", "logvar") else DTYPES[dt][0]
            at = -(-at // 64) * 64  # _native.c: each tensor at a multiple of 64 bytes
            single[f32].append((name, out, tuple(shape), at))
            at += count * out.itemsize
            wide = {"indices": np.dtype(np.uint32), "groups": np.dtype(np.uint16)}.get(name, out)
            batch[f32].append((name, wide, tuple(shape)))
    li = native.learn(tail.encode("utf-8"), data_len, k, spec, tuple(single[False]), tuple(single[True]),
                      {name: v[0] for name, v in tensors.items()})
    if li >= 0:
        _NATIVE_LAYOUTS[li] = batch


def _check_layout(h, data_len, loc):
    tensors = {}
    for name, v in h.items():
        if name not in TENSORS:
            raise BadRecordError("unexpected tensor %r" % name, **loc)
        try:
            dt, shape, (b, e) = v["dtype"], [_integer(d) for d in v["shape"]], v["data_offsets"]
        except (KeyError, TypeError, ValueError) as ex:
            raise BadRecordError("tensor %s: bad header entry (%s)" % (name, ex), **loc) from ex
        # Whole numbers only, as Swift's JSONValue.intValue: int() would make 169.5 a 169, "3" a 3.
        if None in shape:
            raise BadRecordError("tensor %s: shape %r is not a list of whole numbers" % (name, v["shape"]), **loc)
        if dt not in DTYPES:
            raise BadRecordError("tensor %s: unknown dtype %r" % (name, dt), **loc)
        if not (isinstance(b, int) and isinstance(e, int) and 0 <= b <= e <= data_len):
            raise BadRecordError("tensor %s: data_offsets %r outside %d bytes" % (name, [b, e], data_len), **loc)
        count = 1
        for d in shape:
            count *= d
        if any(d < 0 for d in shape) or count * DTYPES[dt][1] != e - b:
            raise BadRecordError("tensor %s: shape %s of %s does not fill %d bytes" % (name, shape, dt, e - b), **loc)
        tensors[name] = (dt, shape, (b, e))
    for req in ("latents", "indices", "groups"):
        if req not in tensors:
            raise BadRecordError("missing tensor %r" % req, **loc)
    ldt, lshape, _ = tensors["latents"]
    if ldt not in LATENT_DTYPES or len(lshape) != 2:
        raise BadRecordError("latents must be F32, F16 or BF16 [K, C], got %s %s" % (ldt, lshape), **loc)
    k = lshape[0]
    if "logvar" in tensors and tensors["logvar"][:2] != (ldt, lshape):
        raise BadRecordError("logvar must match latents", **loc)
    idt, ishape, _ = tensors["indices"]
    if idt not in ("U16", "U32") or ishape != [k]:
        raise BadRecordError("indices must be U16 or U32 [%d], got %s %s" % (k, idt, ishape), **loc)
    gdt, gshape, _ = tensors["groups"]
    if gdt not in ("U8", "U16") or len(gshape) != 1 or gshape[0] < k:
        raise BadRecordError("groups must be U8 or U16 [N] with N >= K = %d, got %s %s" % (k, gdt, gshape), **loc)
    # Tensors must tile the data section (safetensors): sorted by offset, no gaps, to the end.
    pos = 0
    for name, (dt, shape, (b, e)) in sorted(tensors.items(), key=lambda kv: kv[1][2][0]):
        if b != pos:
            raise BadRecordError("tensor %s starts at %d, expected %d" % (name, b, pos), **loc)
        pos = e
    if pos != data_len:
        raise BadRecordError("tensors cover %d of %d data bytes" % (pos, data_len), **loc)
    return tensors


def _unplane(stored, offset, n, size):
    """Element i = sum_j planes[j][i] << 8j, read from `size` byte planes of n bytes (FORMAT 4.2).
    Shift-and-or on whole planes is several times faster in NumPy than a transposing copy."""
    planes = np.frombuffer(stored, np.uint8, count=n * size, offset=offset).reshape(size, n)
    wide = {2: np.uint16, 4: np.uint32, 8: np.uint64}[size]
    out = planes[0].astype(wide)
    for j in range(1, size):
        out |= planes[j].astype(wide) << wide(8 * j)
    return out


def _bf16_planes_to_float32(lo, hi):
    """float32 values from the low and high byte planes of bf16 values (any matching shapes):
    the two bytes copied into the top of zeroed little-endian words. For a batch of 256 records
    this is about 5x faster in NumPy than widening, shifting and or-ing the planes."""
    out = np.zeros(lo.shape + (4,), np.uint8)
    out[..., 2] = lo
    out[..., 3] = hi
    return out.view(np.float32).reshape(lo.shape)


_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")


def _dec(text):
    """A decimal integer as FORMAT.md writes them: Python's int() would also take spaces and '_'."""
    if type(text) is str and text.isdigit() and text.isascii():  # the common case, without the regex
        return int(text)
    if not isinstance(text, str) or not _DECIMAL.match(text):
        raise ValueError("not a decimal integer: %r" % (text,))
    return int(text)


_INT_LISTS = {2: re.compile(r"[+]?[0-9]+,[+]?[0-9]+\Z"), 4: re.compile(r"(?:[+]?[0-9]+,){3}[+]?[0-9]+\Z")}


def _ints(text, count, name, loc):
    if type(text) is str:
        parts = text.split(",")
        # Plain digits between the commas: the common case, without the regex.
        if len(parts) == count and all(parts) and text.replace(",", "").isdigit() and text.isascii():
            return tuple(map(int, parts))
    if not isinstance(text, str) or not _INT_LISTS[count].match(text):
        raise BadRecordError("%s must be %d non-negative integers, got %r" % (name, count, text), **loc)
    return tuple(map(int, text.split(",")))


_OFFSET_TABLES = {}  # n -> struct.Struct of a chunk's n + 1 offsets
_CHUNK_KEY = struct.Struct(">Q").pack  # a chunk's key in a shard's records database (FORMAT 3.1)


def _chunk_offsets(chunk, records_per_chunk):
    """The n + 1 frame offsets of a chunk (FORMAT 3.2: u32 n, u32 offsets[n + 1], frames), checked
    as the format states them: n in 1 ... R, offsets[0] = 0, non-decreasing, offsets[n] = the
    bytes after the table. Then every frame lies inside the chunk and no two overlap. Raises
    ValueError."""
    size = len(chunk)
    if size < 8:
        raise ValueError("chunk of %d bytes is too short" % size)
    (n,) = struct.unpack_from("<I", chunk, 0)
    if not (1 <= n <= records_per_chunk) or 4 * (n + 2) > size:
        raise ValueError("chunk claims %d records in %d bytes" % (n, size))
    # Every read checks the whole table: a tuple is fastest for the usual few records per chunk,
    # NumPy for thousands.
    if n <= 64:
        table = _OFFSET_TABLES.get(n) or _OFFSET_TABLES.setdefault(n, struct.Struct("<%dI" % (n + 1)))
        offsets = table.unpack_from(chunk, 4)
        ordered = list(offsets) == sorted(offsets)
    else:
        offsets = np.frombuffer(chunk, "<u4", n + 1, 4)
        ordered = not (offsets[1:] < offsets[:-1]).any()
    if offsets[0] != 0:
        raise ValueError("frame offsets[0] = %d, not 0" % offsets[0])
    if not ordered:
        i = next(i for i in range(n) if offsets[i + 1] < offsets[i])
        raise ValueError("frame offsets decrease: offsets[%d] = %d, offsets[%d] = %d"
                         % (i, offsets[i], i + 1, offsets[i + 1]))
    if offsets[n] != size - 4 * (n + 2):
        raise ValueError("frame offsets end at %d, but %d bytes of frames follow them"
                         % (offsets[n], size - 4 * (n + 2)))
    return offsets


def _shapes(tensors):
    return {name: (v[0], tuple(v[1])) for name, v in tensors.items()}


def _metadata(meta, loc):
    try:
        view, label = _dec(meta["view"]), _dec(meta["label"])
        rid = meta["id"]
    except (KeyError, ValueError) as e:
        raise BadRecordError("metadata needs id, view and label (%s)" % e, **loc) from e
    if not 0 <= view <= 65535:
        raise BadRecordError("view %d outside 0 ... 65535" % view, **loc)
    if not -1 <= label <= LABEL_MAX:
        raise BadRecordError("label %d outside -1 ... %d" % (label, LABEL_MAX), **loc)
    return {"id": rid, "view": view, "label": label,
            "source_size": _ints(meta.get("source_size"), 2, "source_size", loc),
            "crop_box": _ints(meta.get("crop_box"), 4, "crop_box", loc),
            "source_sha256": meta.get("source_sha256", "")}
