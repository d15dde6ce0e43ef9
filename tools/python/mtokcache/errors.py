"""Errors raised by mtokcache; each names what failed and where (shard, chunk, index, id)."""


class CacheError(Exception):
    """Base class. `location` holds whichever of shard, chunk, index, id, view are known."""

    kind = "cache error"

    def __init__(self, message, **location):
        self.message = message
        self.location = {k: v for k, v in location.items() if v is not None}
        where = ", ".join("%s %s" % (k, v) for k, v in self.location.items())
        super().__init__("%s at %s: %s" % (self.kind, where, message) if where else "%s: %s" % (self.kind, message))


class NotACacheError(CacheError):
    kind = "not a cache"


class UnknownVersionError(CacheError):
    kind = "unknown format version"


class SettingsMismatchError(CacheError):
    """A writer asked to continue a cache that was written with other settings or as another part."""

    kind = "settings differ"


class InUseError(CacheError, RuntimeError):
    """A shard file that this process holds open in a way that rules out the use asked for: a
    Writer resuming a cache while a Cache of it, open in the same process, reads the shard the
    Writer would write."""

    kind = "in use"


class MissingShardError(CacheError):
    kind = "missing shard"


class CacheIOError(CacheError, OSError):
    """A file of the cache that the system does not let this process read: no permission, a loop
    of symbolic links, too many open files."""

    kind = "I/O error"


class ShardMismatchError(CacheError):
    kind = "shard does not match the manifest"


class CorruptRecordError(CacheError):
    """A stored record that cannot be read: bad chunk, bad zstd frame, checksum mismatch."""

    kind = "corrupt record"


class BadRecordError(CorruptRecordError):
    """A payload that decompressed but does not follow Schemas/FORMAT.md section 4.1."""

    kind = "record does not follow the schema"


class ShapeMismatchError(CacheError):
    kind = "records differ in shape"
