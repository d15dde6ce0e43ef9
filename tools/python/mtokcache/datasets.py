"""PyTorch datasets over a cache (needs torch; the rest of mtokcache does not).

Both datasets keep only the path and a few integers until a process first reads: the LMDB
environments open lazily inside each DataLoader worker (after fork, or after unpickling under
spawn), read-only, lock=False, readahead=False (Schemas/FORMAT.md 3.3). No environment is ever
shared across fork.

- `CacheDataset`: map-style; use with any sampler, including `DistributedSampler`.
- `CacheIterableDataset`: the rank's stream of Schemas/STREAM.md. DataLoader worker k of K reads
  the batches k, k+K, ... of `batch_size` samples; DataLoader takes one batch from each worker in
  turn, so with DataLoader(batch_size=batch_size) the samples arrive in exactly the rank's stream
  order, each record once per epoch whatever the number of workers. With `batched=True` the
  dataset yields whole batches as contiguous tensors (use DataLoader(batch_size=None)): the
  same order without per-sample collation, which is the faster way.

Two options, named as in `Cache`, decide the tensors' types (either dataset, and `to_sample`):

- `latent_format`: "f32" (default) gives float32 latents (and logvar); "raw" keeps them as
  stored (torch.bfloat16 for bf16 caches, float16, float32), as `Cache(latent_format="raw")`.
- `index_dtype`: "int64" (default: what embedding lookups and gathers take) or "int32" for
  indices and groups.

`latent_format="raw", index_dtype="int32"` gives 10.5 instead of 20 KiB per ImageNet-256 record.
DataLoader workers hand every batch to the main process through shared memory, and that copy,
not decoding, is what bounds a DataLoader with workers (tools/bench_readers.py), so these
batches arrive about twice as fast. Convert on the GPU (`x.float()`, `i.long()`). (`compact=True`,
the older spelling of those two, still works and warns.)

Stream order (CacheIterableDataset, as `Cache.stream`; Schemas/STREAM.md): `seed` and the epoch
pick the permutation; `shuffle=False` keeps the records in cache order (each rank still reads
its own share, padded as `padding` says), for evaluation passes and checks that want the same
order every epoch; `block_records` and `window_blocks` tune the locality of the shuffle.
"""

import operator
import sys
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, get_worker_info

try:  # PyTorch >= 2.0: collate's registry of element types
    from torch.utils.data._utils.collate import collate, default_collate_fn_map
except ImportError:
    collate, default_collate_fn_map = None, None

from . import order as _order
from .reader import Cache

__all__ = ["CacheDataset", "CacheIterableDataset", "Sample", "to_sample"]


def _latents(a):
    """A latent array as a tensor: bf16 bit patterns (uint16, what latent_format="raw" gives)
    become torch.bfloat16 without a copy; float16 and float32 stay as they are."""
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == np.uint16 else torch.from_numpy(a)


_INDEX_DTYPES = {"int64": np.int64, "int32": np.int32}


def _ints(a, index_dtype):
    """Indices or groups as index_dtype ("int64" or "int32")."""
    return torch.from_numpy(a.astype(_INDEX_DTYPES[index_dtype]))


def _options(latent_format, index_dtype, compact):
    """(latent_format, index_dtype), checked; `compact` is the older spelling of ("raw", "int32")."""
    if compact is not None:
        warnings.warn("compact=True is now latent_format='raw', index_dtype='int32'", DeprecationWarning, stacklevel=3)
        if compact:
            latent_format, index_dtype = "raw", "int32"
    if latent_format not in ("f32", "raw"):
        raise ValueError("latent_format must be 'f32' or 'raw'")
    if index_dtype not in _INDEX_DTYPES:
        raise ValueError("index_dtype must be 'int64' or 'int32'")
    return latent_format, index_dtype


def to_sample(record, index_dtype="int64", compact=None):
    """A record dict (from a Cache of either latent_format) as DataLoader-friendly values: the
    latents as tensors (bf16 bit patterns as torch.bfloat16), indices and groups as
    `index_dtype`, and the identity fields."""
    if compact is not None:
        _, index_dtype = _options("raw", index_dtype, compact)
    out = {"latents": _latents(record["latents"]), "indices": _ints(record["indices"], index_dtype),
           "groups": _ints(record["groups"], index_dtype),
           "label": record["label"], "index": record["index"], "id": record["id"], "view": record["view"]}
    if "logvar" in record:
        out["logvar"] = _latents(record["logvar"])
    return out


class _Lazy:
    """Holds the path and opens the cache on first use in the current process."""

    def __init__(self, path, latent_format, index_dtype, compact):
        self.path = str(path)
        self.latent_format, self.index_dtype = _options(latent_format, index_dtype, compact)
        # Reads only manifest.json, so __len__ works in the parent without opening LMDB.
        self._cache = Cache(self.path, latent_format=self.latent_format)

    @property
    def cache(self):
        return self._cache  # Cache itself reopens its environments per process


class CacheDataset(Dataset, _Lazy):
    """Map-style dataset: `ds[i]` is record i as `to_sample` gives it."""

    def __init__(self, path, transform=to_sample, latent_format="f32", index_dtype="int64", compact=None):
        _Lazy.__init__(self, path, latent_format, index_dtype, compact)
        self.transform = transform

    def __len__(self):
        return len(self._cache)

    def __getitem__(self, i):
        return _apply(self, self._cache[int(i)])

    def __getitems__(self, indices):
        """What DataLoader's fetcher calls for a whole batch of indices (PyTorch >= 2.1): decodes
        them together, vectorized, then splits them into samples."""
        if self.transform is not to_sample:
            return [self[i] for i in indices]
        return _rows(_batch_to_torch(self._cache.batch(indices), self.index_dtype))


class CacheIterableDataset(IterableDataset, _Lazy):
    """The stream of one rank (Schemas/STREAM.md), split across DataLoader workers by batches.

    rank and world_size default to torch.distributed's when it is initialised, else 0 and 1.
    Call `set_epoch(e)` before each epoch (as with DistributedSampler) and `set_start(g)` to
    resume at global position g (samples consumed by the whole job in this epoch), both before
    the epoch's `iter(loader)`. Epoch and start live in a shared-memory tensor that each worker
    reads when an epoch's iteration starts, so these calls reach persistent workers
    (persistent_workers=True) too.

    `order_args` go to `Cache.stream_indices`: `shuffle=False` reads the records in cache order
    (the same every epoch; each rank its share), `block_records` and `window_blocks` set the
    shuffle's locality (STREAM.md 3).
    """

    def __init__(self, path, seed=0, batch_size=256, rank=None, world_size=None, padding="pad", epoch=0, start=0,
                 transform=to_sample, batched=False, latent_format="f32", index_dtype="int64", compact=None,
                 **order_args):
        _Lazy.__init__(self, path, latent_format, index_dtype, compact)
        if rank is None or world_size is None:
            if dist.is_available() and dist.is_initialized():
                rank, world_size = dist.get_rank(), dist.get_world_size()
            else:
                rank, world_size = 0, 1
        self.rank, self.world_size = rank, world_size
        self.seed, self.batch_size, self.padding = seed, batch_size, padding
        # [epoch, start]. Persistent workers keep the copy of the dataset they were given, but a
        # shared-memory tensor stays shared in it (after fork, and pickled for spawn through
        # torch.multiprocessing), so what set_epoch and set_start write reaches them.
        self._progress = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.epoch, self.start = epoch, start
        self.transform = transform
        self.batched = batched
        self.order_args = order_args

    # The shared tensor is int64; epochs are unsigned 64-bit (STREAM.md), so they are stored as
    # their two's-complement bits, and a start past 2**63 - 1 is past any epoch's end anyway.
    def _epoch_and_start(self):
        """(epoch, start) as set_epoch and set_start left them, read together."""
        epoch, start = self._progress.tolist()
        return epoch & (2**64 - 1), start

    @property
    def epoch(self):
        return self._epoch_and_start()[0]

    @epoch.setter
    def epoch(self, epoch):
        epoch = operator.index(epoch)
        if not 0 <= epoch < 2**64:
            raise ValueError("epoch must be 0 ... 2**64 - 1, got %d" % epoch)
        self._progress[0] = epoch - 2**64 if epoch >= 2**63 else epoch

    @property
    def start(self):
        return self._epoch_and_start()[1]

    @start.setter
    def start(self, start):
        start = operator.index(start)
        if start < 0:
            raise ValueError("start is a global position in the epoch, 0 or more; got %d" % start)
        self._progress[1] = min(start, 2**63 - 1)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.start = 0

    def set_start(self, start):
        self.start = start

    def indices(self):
        """The rank's global record indices for the current epoch and start."""
        epoch, start = self._epoch_and_start()  # once: a worker calls this when its epoch starts
        return self._cache.stream_indices(self.rank, self.world_size, epoch, self.seed, start, self.padding,
                                          **self.order_args)

    def __len__(self):
        # Arithmetic, not the permutation: DataLoader asks for the length often.
        return _order.rank_count(len(self._cache), self.rank, self.world_size, self.start, self.padding)

    def __iter__(self):
        info = get_worker_info()
        k, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        _check_loader_batches(self, sys._getframe(1), workers)
        idx = self.indices()
        b = self.batch_size
        for lo in range(k * b, len(idx), workers * b):
            if self.batched:
                yield _batch_to_torch(self._cache.batch(idx[lo:lo + b]), self.index_dtype)
                continue
            if self.transform is to_sample:
                # Decode the worker's batch at once (vectorized), then hand out its rows.
                yield from _rows(_batch_to_torch(self._cache.batch(idx[lo:lo + b]), self.index_dtype))
                continue
            for i in idx[lo:lo + b]:
                yield _apply(self, self._cache[int(i)])


def _check_loader_batches(ds, caller, workers):
    """Refuses a DataLoader whose batches would not follow the rank's stream order.

    DataLoader workers take turns batch by batch: with K > 1 workers each yielding the dataset's
    blocks of `batch_size`, the loader's batches are the stream in order only when it collates
    exactly `batch_size` samples (and, with batched=True, when it collates nothing). The loader
    is not visible from here; what a batch of it asks for is: the first sample is requested by
    PyTorch's iterable-dataset fetcher with the batch's index list in its frame. Where that frame
    looks otherwise (another PyTorch, a plain loop), nothing is checked."""
    asked = caller.f_locals.get("possibly_batched_index") if caller is not None else None
    fetcher = caller.f_locals.get("self") if caller is not None else None
    if asked is None or fetcher is None or not hasattr(fetcher, "auto_collation"):
        return
    collates = len(asked) if fetcher.auto_collation else None
    if ds.batched and collates is not None:
        raise ValueError("CacheIterableDataset(batched=True) yields whole batches: use DataLoader(batch_size=None)")
    if not ds.batched and workers > 1 and collates != ds.batch_size:
        raise ValueError("DataLoader collates %s samples a batch but the dataset's batch_size is %d: with %d workers the "
                         "samples would leave the rank's stream order; use DataLoader(batch_size=%d) (or batched=True "
                         "with DataLoader(batch_size=None))" % (collates if collates is not None else "no", ds.batch_size,
                                                                 workers, ds.batch_size))


def _apply(ds, record):
    """The dataset's transform of one record (to_sample honours the dataset's `index_dtype`)."""
    if ds.transform is to_sample:
        return to_sample(record, ds.index_dtype)
    return ds.transform(record) if ds.transform else record


class Sample(Mapping):
    """One sample of a decoded batch: reads as the dict `to_sample` gives (latents, indices,
    groups and logvar as tensors, label, index and view as ints, id as str), its values taken
    from the batch's tensors when asked for.

    Samples exist so that DataLoader's default collate does not undo a batch the dataset decoded
    whole: the collate function registered for this type (PyTorch's documented extension point,
    `default_collate_fn_map`) hands the batch's tensors on when it is given all the samples of
    one batch in order, as DataLoader does with these datasets; anything else is collated as
    the samples' dicts would be, with the same result."""

    __slots__ = ("_batch", "_row")

    def __init__(self, batch, row):
        self._batch, self._row = batch, row

    def __getitem__(self, key):
        value = self._batch[key][self._row]
        return value if key in _TENSORS or key == "id" else int(value)

    def __iter__(self):
        return iter(self._batch)

    def __len__(self):
        return len(self._batch)

    def __repr__(self):
        return "Sample(%r)" % dict(self)


_TENSORS = ("latents", "logvar", "indices", "groups")


def _rows(t):
    """A `_batch_to_torch` batch as its samples."""
    return [Sample(t, row) for row in range(len(t["id"]))]


def _collate_samples(batch, *, collate_fn_map=None):
    """DataLoader's collate of Samples: the batch's own tensors when `batch` is all the samples
    of one decoded batch in order (label, index and view as int64, as collating ints makes them),
    else the samples collated as dicts."""
    whole = batch[0]._batch
    if len(batch) == len(whole["id"]) and all(s._batch is whole and s._row == i for i, s in enumerate(batch)):
        return {key: v.long() if key in ("label", "index", "view") else v for key, v in whole.items()}
    return collate([dict(s) for s in batch], collate_fn_map=collate_fn_map)


if default_collate_fn_map is not None:
    default_collate_fn_map[Sample] = _collate_samples


def _batch_to_torch(b, index_dtype="int64"):
    """cache.batch() output as tensors: one contiguous array per field, no per-sample collation."""
    out = {"latents": _latents(b["latents"]), "indices": _ints(b["indices"], index_dtype),
           "groups": _ints(b["groups"], index_dtype), "label": torch.from_numpy(b["labels"]),
           "index": torch.from_numpy(b["records"]), "id": b["ids"], "view": torch.from_numpy(b["views"])}
    if "logvar" in b:
        out["logvar"] = _latents(b["logvar"])
    return out
