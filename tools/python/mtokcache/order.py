"""The stream order of Schemas/STREAM.md, vectorised with NumPy.

Everything is computed from the shard record counts and the arguments; no record is read.
All arithmetic is on uint64 arrays, which wrap modulo 2**64 as the document requires.
"""

import numpy as np

G = 0x9E3779B97F4A7C15
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1

DEFAULT_WINDOW_BLOCKS = 1024


def mix_int(z):
    """SplitMix64's finaliser on one Python int (reference for the array version)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _mix(z):
    # NumPy uint64 arrays wrap silently on overflow, which is the modular arithmetic we want.
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def base(seed, epoch, tag):
    return mix_int((mix_int(seed + G) + (4 * epoch + tag + 1) * G) & _MASK)


def keys(seed, epoch, tag, indices):
    """key(seed, epoch, tag, i) for every i in `indices` (an integer array)."""
    b = np.uint64(base(seed, epoch, tag))
    i = np.asarray(indices, dtype=np.uint64)
    return _mix(b + (i + np.uint64(1)) * np.uint64(G))


def blocks(shard_records, block_records):
    """(first global index, length) of every block, in block-number order (STREAM.md 3.1)."""
    starts, lengths = [], []
    first = 0
    for n in shard_records:
        n = int(n)
        s = np.arange(0, n, block_records, dtype=np.int64)
        starts.append(first + s)
        lengths.append(np.minimum(block_records, n - s))
        first += n
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lengths)


def permutation(shard_records, seed, epoch, block_records, window_blocks=DEFAULT_WINDOW_BLOCKS, shuffle=True):
    """P: the epoch's global permutation (int64 array of global indices), STREAM.md section 3."""
    if block_records < 1 or window_blocks < 1:
        raise ValueError("block_records and window_blocks must be at least 1")
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch are unsigned")
    n = int(sum(int(x) for x in shard_records))
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    starts, lengths = blocks(shard_records, block_records)
    nb = len(starts)
    b = np.arange(nb, dtype=np.int64)
    # lexsort sorts by the last key first: (key, index) ascending.
    order = np.lexsort((b, keys(seed, epoch, 1, b)))
    s, ln = starts[order], lengths[order]
    # Q: the records of the sorted blocks, concatenated.
    offs = np.repeat(np.cumsum(ln) - ln, ln)
    q = np.repeat(s, ln) + (np.arange(n, dtype=np.int64) - offs)
    # Windows are consecutive runs of Q; keys of distinct indices never tie (STREAM.md 2), so a
    # plain argsort per window is the (key, index) order.
    k = keys(seed, epoch, 2, q)
    edges = np.concatenate([[0], np.cumsum(ln)[window_blocks - 1::window_blocks], [n]])
    out = np.empty(n, dtype=np.int64)
    for a, z in zip(edges[:-1], edges[1:]):
        if z > a:
            out[a:z] = q[a:z][np.argsort(k[a:z])]
    return out


def epoch_positions(n, world_size, padding):
    """T, the number of global positions in an epoch (STREAM.md section 4)."""
    if padding == "drop":
        return (n // world_size) * world_size
    if padding == "pad":
        return -(-n // world_size) * world_size
    raise ValueError("padding must be 'pad' or 'drop'")


def rank_count(n, rank, world_size, start=0, padding="pad"):
    """How many samples `rank_indices` returns, without computing the permutation."""
    if n == 0:
        return 0
    t = epoch_positions(n, world_size, padding)
    first = rank + world_size * max(0, -(-(start - rank) // world_size))
    return max(0, -(-(t - first) // world_size))


def rank_indices(perm, rank, world_size, start=0, padding="pad"):
    """Global record indices that `rank` reads from global position `start` on, in order."""
    if not (0 <= rank < world_size):
        raise ValueError("need 0 <= rank < world_size")
    if start < 0:
        raise ValueError("start is a global position in the epoch, 0 or more; got %s" % (start,))
    n = len(perm)
    t = epoch_positions(n, world_size, padding)
    first = rank + world_size * max(0, -(-(start - rank) // world_size))
    if first >= t:  # past the epoch (or an empty cache): np.arange cannot take a start past int64
        return np.zeros(0, np.int64)
    g = np.arange(first, t, world_size, dtype=np.int64)
    return perm[g % n]


if __name__ == "__main__":
    print("base(0, 0, 1) = 0x%016x" % base(0, 0, 1))
    print("key(0, 0, 1, 0..3) =", ["0x%016x" % int(k) for k in keys(0, 0, 1, np.arange(4))])
    print("P for shards [5, 7], L=4, W_b=2, seed 0, epoch 0:", permutation([5, 7], 0, 0, 4, 2).tolist())
