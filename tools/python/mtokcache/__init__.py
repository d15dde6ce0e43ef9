"""Read and write MergeTok token caches (Schemas/FORMAT.md) and stream them in the order of
Schemas/STREAM.md. Depends on numpy, lmdb and zstandard; `mtokcache.datasets` (the PyTorch datasets) needs PyTorch.

    import mtokcache
    cache = mtokcache.open("imagenet.mtok")
    rec = cache[0]                      # dict of numpy arrays and metadata
    for batch in cache.stream(rank=0, world_size=8, epoch=3, seed=42, batch_size=256): ...
"""

from .errors import (BadRecordError, CacheError, CacheIOError, CorruptRecordError, InUseError, MissingShardError,
                     NotACacheError, SettingsMismatchError, ShapeMismatchError, ShardMismatchError,
                     UnknownVersionError)
from .reader import Cache, open
from .writer import Writer
from . import order

__all__ = ["Cache", "open", "Writer", "order", "CacheError", "NotACacheError", "UnknownVersionError",
           "MissingShardError", "ShardMismatchError", "CorruptRecordError", "BadRecordError", "ShapeMismatchError",
           "SettingsMismatchError", "InUseError", "CacheIOError"]
__version__ = "0.1.0"
