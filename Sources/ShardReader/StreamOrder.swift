import TensorFiles

/// The order in which ranks see a cache's records during an epoch (Schemas/STREAM.md).
///
/// One global permutation per (seed, epoch), computed from the shard record counts alone, dealt
/// out round-robin: global position g goes to rank g mod worldSize. Because the permutation does
/// not depend on the world size, on thread counts or on loader workers, a job can resume at a
/// global position with another world size and continue the same sequence. Python's
/// `mtokcache.order` implements the same document; tests compare the two.
public struct StreamOrder: Sendable, Equatable {
    /// What happens when the record count is not a multiple of the world size.
    public enum Padding: String, Sendable, CaseIterable {
        /// Repeat records from the start of the permutation, as `DistributedSampler` does.
        case pad
        /// Drop the positions past the last full round.
        case drop
    }

    /// Shuffle parameters; defaults per Schemas/STREAM.md section 1.
    public struct Shuffle: Sendable, Equatable {
        /// Records per block (nil = the cache's records per chunk, so a block is one LMDB value).
        public var blockRecords: Int?
        /// Blocks per shuffle window.
        public var windowBlocks: Int
        /// False gives index order (P[g] = g).
        public var enabled: Bool

        public static let defaultWindowBlocks = 1024

        public init(blockRecords: Int? = nil, windowBlocks: Int = Shuffle.defaultWindowBlocks, enabled: Bool = true) {
            self.blockRecords = blockRecords
            self.windowBlocks = windowBlocks
            self.enabled = enabled
        }
    }

    public let seed: UInt64
    public let epoch: UInt64
    /// P: global position → global record index, for positions 0..<count.
    public let permutation: [Int]

    /// Computes the epoch's permutation for shards holding `shardRecords` records each.
    public init(shardRecords: [Int], seed: UInt64, epoch: UInt64, blockRecords: Int,
                windowBlocks: Int = Shuffle.defaultWindowBlocks, shuffle: Bool = true) {
        precondition(blockRecords >= 1 && windowBlocks >= 1, "blockRecords and windowBlocks must be at least 1")
        self.seed = seed
        self.epoch = epoch
        let n = shardRecords.reduce(0, +)
        guard shuffle else {
            permutation = Array(0..<n)
            return
        }
        // 1. Blocks: (first global index, length), shard by shard.
        var blocks: [(start: Int, count: Int)] = []
        var first = 0
        for records in shardRecords {
            var j = 0
            while j < records {
                blocks.append((first + j, min(blockRecords, records - j)))
                j += blockRecords
            }
            first += records
        }
        // 2. Block order by key; keys of distinct numbers never tie (STREAM.md section 2).
        let blockBase = Self.base(seed: seed, epoch: epoch, tag: 1)
        let blockOrder = (0..<blocks.count).map { (key: Self.key(base: blockBase, $0), block: $0) }
            .sorted { $0.key < $1.key }
        // 3–4. Windows of windowBlocks consecutive sorted blocks; records sorted by key inside.
        let recordBase = Self.base(seed: seed, epoch: epoch, tag: 2)
        var out: [Int] = []
        out.reserveCapacity(n)
        var window: [(key: UInt64, index: Int)] = []
        var w = 0
        while w < blockOrder.count {
            window.removeAll(keepingCapacity: true)
            for entry in blockOrder[w..<min(w + windowBlocks, blockOrder.count)] {
                let b = blocks[entry.block]
                for r in b.start..<(b.start + b.count) { window.append((Self.key(base: recordBase, r), r)) }
            }
            window.sort { $0.key < $1.key }
            for e in window { out.append(e.index) }
            w += windowBlocks
        }
        permutation = out
    }

    /// The permutation of `cache` with `shuffle`'s parameters.
    public init(cache: TokenCache, seed: UInt64, epoch: UInt64, shuffle: Shuffle = Shuffle()) {
        self.init(shardRecords: cache.manifest.shards.map(\.records), seed: seed, epoch: epoch,
                  blockRecords: shuffle.blockRecords ?? cache.manifest.recordsPerChunk,
                  windowBlocks: shuffle.windowBlocks, shuffle: shuffle.enabled)
    }

    /// Number of records N.
    public var count: Int { permutation.count }

    /// T: global positions in the epoch for `worldSize` ranks (a multiple of `worldSize`).
    public func epochPositions(worldSize: Int, padding: Padding) -> Int {
        precondition(worldSize >= 1, "worldSize must be at least 1")
        switch padding {
        case .drop: return count / worldSize * worldSize
        case .pad: return (count + worldSize - 1) / worldSize * worldSize
        }
    }

    /// Global record indices that `rank` reads, from global position `start` on, in order.
    ///
    /// `start` counts the samples the whole job consumed in this epoch; the result holds the
    /// positions g ≥ start with g mod worldSize = rank.
    public func rankIndices(rank: Int, worldSize: Int, start: Int = 0, padding: Padding = .pad) -> [Int] {
        precondition(worldSize >= 1 && (0..<worldSize).contains(rank), "need 0 ≤ rank < worldSize")
        precondition(start >= 0, "start must be ≥ 0")
        guard count > 0 else { return [] }
        let t = epochPositions(worldSize: worldSize, padding: padding)
        guard start < t else { return [] }  // (also keeps the arithmetic below from overflowing)
        // First position ≥ start congruent to rank.
        let steps = start > rank ? (start - rank + worldSize - 1) / worldSize : 0
        let first = rank + steps * worldSize
        guard first < t else { return [] }
        return stride(from: first, to: t, by: worldSize).map { permutation[$0 % count] }
    }
}

extension StreamOrder {
    static let golden = SplitMix64.golden

    @inline(__always)
    static func mix(_ value: UInt64) -> UInt64 { SplitMix64.mix(value) }

    /// base(seed, epoch, tag) of STREAM.md section 2 (public for checking other implementations).
    public static func base(seed: UInt64, epoch: UInt64, tag: UInt64) -> UInt64 {
        mix(mix(seed &+ golden) &+ (4 &* epoch &+ tag &+ 1) &* golden)
    }

    /// Output number `i` of SplitMix64 started at `base`: key(seed, epoch, tag, i) of STREAM.md.
    @inline(__always)
    public static func key(base: UInt64, _ i: Int) -> UInt64 {
        mix(base &+ (UInt64(i) &+ 1) &* golden)
    }
}
