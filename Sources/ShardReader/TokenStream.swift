import Foundation
import Synchronization

/// A rank's view of one epoch of a cache: batches in the order of Schemas/STREAM.md, read and
/// decompressed ahead of the consumer by a pool of threads.
///
/// The order depends only on (seed, epoch) and the cache's shard sizes; threads decode whole
/// batches and the consumer receives them in sequence, so the thread count changes speed, never
/// order. At most `prefetch` batches are claimed but not yet taken by `next()`, and at most as
/// many handed back by `recycle` wait for reuse, which bounds memory to about 2 × `prefetch` ×
/// batch size.
///
/// `next()` is meant for one consumer thread. Dropping the stream stops its threads after the
/// batches they are decoding.
///
/// ```swift
/// let cache = try TokenCache(path: "imagenet.mtok")
/// let stream = TokenStream(cache: cache, rank: 0, worldSize: 8, epoch: 3, seed: 42, batchSize: 256)
/// while let batch = try stream.next() {
///     train(batch.latents, batch.labels)
///     stream.recycle(batch)  // optional: the next batches reuse its memory
/// }
/// ```
public final class TokenStream: Sendable {
    public struct Options: Sendable {
        public var batchSize: Int = 256
        /// Decoding threads (at least 1).
        public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
        /// Batches decoded ahead of the consumer (default: 2 per thread).
        public var prefetch: Int?
        public var padding: StreamOrder.Padding = .pad
        public var shuffle = StreamOrder.Shuffle()
        public var latentFormat: LatentFormat = .float32
        /// Stop after this many samples of this rank (nil: the rest of the epoch).
        public var limit: Int?
        /// Ask the kernel for each chunk a batch needs, whole, when a thread starts the batch
        /// before it (`ChunkReadAhead`), while the stream is reading from storage: a cold cache
        /// is then read in parallel requests instead of one page fault at a time.
        public var readAhead = true

        public init() {}
    }

    public let cache: TokenCache
    /// Global record index of each remaining sample of this rank, in order.
    public let records: [Int]
    /// Number of batches the stream delivers.
    public let batchCount: Int
    let pipeline: Pipeline

    /// Prepares the stream of `rank` of `worldSize` for `epoch`, resuming at global position
    /// `start` (the number of samples the whole job consumed in this epoch). Reads no record
    /// before the decoding threads start.
    public init(cache: TokenCache, rank: Int, worldSize: Int, epoch: UInt64, seed: UInt64, start: Int = 0,
                options: Options = Options()) {
        precondition(options.batchSize >= 1 && options.threads >= 1, "batchSize and threads must be at least 1")
        self.cache = cache
        let order = StreamOrder(cache: cache, seed: seed, epoch: epoch, shuffle: options.shuffle)
        var mine = order.rankIndices(rank: rank, worldSize: worldSize, start: start, padding: options.padding)
        if let limit = options.limit, limit < mine.count { mine.removeLast(mine.count - max(0, limit)) }
        records = mine
        batchCount = (mine.count + options.batchSize - 1) / options.batchSize
        pipeline = Pipeline(cache: cache, records: mine, options: options, batchCount: batchCount)
        for _ in 0..<options.threads {
            let p = pipeline
            let t = Thread { p.work() }
            t.name = "mtok-stream"
            t.start()
        }
    }

    public convenience init(cache: TokenCache, rank: Int, worldSize: Int, epoch: UInt64, seed: UInt64, start: Int = 0,
                            batchSize: Int) {
        var options = Options()
        options.batchSize = batchSize
        self.init(cache: cache, rank: rank, worldSize: worldSize, epoch: epoch, seed: seed, start: start, options: options)
    }

    deinit { pipeline.stop() }

    /// The most batches that were ever decoded or decoding ahead of the consumer at once; never
    /// more than the prefetch depth (what bounds the stream's memory).
    package var peakPrefetched: Int { pipeline.peakOutstanding }

    /// Arrays of delivered batches that were decoded into recycled batches' memory.
    package var reusedArrays: Int { pipeline.reusedArrays.load(ordering: .relaxed) }

    /// The next batch in order, or nil at the end of the epoch.
    /// - Throws: the `CacheError` of the first record in the batch that could not be read.
    public func next() throws -> StreamBatch? {
        try pipeline.take()
    }

    /// Hands back a batch the caller is done with, so that a later batch is decoded into its
    /// arrays instead of fresh memory (which the kernel maps and zeroes page by page: about 6 %
    /// of a single-threaded float32 stream's CPU). Optional. Keep no copy of its arrays: a kept
    /// copy stays intact (copy-on-write) but then costs what reuse saves.
    public func recycle(_ batch: consuming StreamBatch) {
        var batch = Optional(batch)
        pipeline.spares.withLock { spares in
            if spares.count < pipeline.depth, let b = batch.take() { spares.append(b) }
        }
    }
}

/// Shared state of the decoding threads and the consumer.
final class Pipeline: @unchecked Sendable {  // every mutable field is guarded by `condition`
    let cache: TokenCache
    let records: [Int]
    let batchSize: Int
    let depth: Int
    let batchCount: Int
    let format: LatentFormat
    private let condition = NSCondition()
    private var claimed = 0
    private var delivered = 0
    private var ready: [Int: Result<StreamBatch, any Error>] = [:]
    private var stopped = false
    private let readAhead: ChunkReadAhead?
    /// Batches handed back by the consumer (`TokenStream.recycle`), at most `depth`.
    let spares = Mutex<[StreamBatch]>([])
    /// Arrays decoded into recycled memory so far (counted before each batch is delivered).
    let reusedArrays = Atomic<Int>(0)
    /// Largest number of batches claimed but not yet taken, ever (≤ depth; checked by tests).
    private var peak = 0

    init(cache: TokenCache, records: [Int], options: TokenStream.Options, batchCount: Int) {
        self.cache = cache
        self.records = records
        batchSize = options.batchSize
        depth = max(1, options.prefetch ?? 2 * options.threads)
        self.batchCount = batchCount
        format = options.latentFormat
        readAhead = options.readAhead ? ChunkReadAhead(cache: cache) : nil
    }

    /// A decoding thread: claims the next batch number while fewer than `depth` are outstanding.
    func work() {
        let decoder = BatchDecoder(cache: cache, format: format)
        while true {
            condition.lock()
            while !stopped && claimed < batchCount && claimed >= delivered + depth { condition.wait() }
            if stopped || claimed >= batchCount {
                condition.unlock()
                return
            }
            let k = claimed
            claimed += 1
            peak = max(peak, claimed - delivered)
            condition.unlock()

            // The next batch's chunks, so the kernel reads them while this batch decodes, and
            // this batch's own (already asked for unless it is the first or asking resumes).
            if let readAhead, readAhead.readingStorage() {
                for b in k...(k + 1) where b < batchCount {
                    readAhead.ask(records[(b * batchSize)..<min((b + 1) * batchSize, records.count)])
                }
            }
            let lo = k * batchSize
            let slice = Array(records[lo..<min(lo + batchSize, records.count)])
            // Moved, not copied, into the decoder: its arrays must be uniquely referenced there.
            var spare = spares.withLock { $0.popLast() }
            let reusedBefore = decoder.reusedArrays
            let result: Result<StreamBatch, any Error>
            do {
                result = .success(try decoder.batch(slice, firstSample: lo, reusing: spare.take()))
            } catch {
                result = .failure(error)
            }
            reusedArrays.add(decoder.reusedArrays - reusedBefore, ordering: .relaxed)

            condition.lock()
            ready[k] = result
            condition.broadcast()
            condition.unlock()
        }
    }

    func take() throws -> StreamBatch? {
        condition.lock()
        defer { condition.unlock() }
        guard delivered < batchCount, !stopped else { return nil }
        while ready[delivered] == nil { condition.wait() }
        let result = ready.removeValue(forKey: delivered)!
        delivered += 1
        condition.broadcast()
        return try result.get()
    }

    var peakOutstanding: Int {
        condition.lock()
        defer { condition.unlock() }
        return peak
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }
}

/// Asks the kernel for the chunks of upcoming records (`Shard.willNeed`), each once while it is
/// likely still in memory. The shuffle (STREAM.md) spreads a chunk's records over the batches of
/// one window, so remembering the last few windows' chunks keeps the lookups to about one per
/// chunk per epoch.
final class ChunkReadAhead: Sendable {
    let cache: TokenCache
    /// Chunks asked for: shard number << 40 | chunk number.
    private let asked = Mutex<Set<Int>>([])
    /// Forget them all past this many (a few windows' worth of chunks, about 1 GB of them).
    static let memory = 8 * StreamOrder.Shuffle.defaultWindowBlocks

    /// Major page faults (faults that waited for storage) of the process when last looked at,
    /// and the looks since they last grew. It counts from the faults the process already had
    /// (loading its own code, say) and asks for the first `firstLooks` batches only, unless they
    /// fault: a cache in memory hardly pays for asking, one in storage is asked for at once.
    private let faults: Mutex<(count: Int, quietLooks: Int)>
    static let firstLooks = 4
    /// Looks without a major fault after which a stream stops asking: in memory, asking costs
    /// a few percent of the stream's CPU (a lookup and a system call per chunk) and gains nothing.
    /// Stopped, the next batch read from storage faults again and asking resumes; from storage,
    /// one batch in this many is read page by page.
    static let quietLooks = 64

    init(cache: TokenCache) {
        self.cache = cache
        faults = Mutex((Self.majorFaults() ?? 0, Self.quietLooks - Self.firstLooks))
    }

    private static func majorFaults() -> Int? {
        var usage = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return nil }
        return Int(usage.ru_majflt)
    }

    /// Whether the stream is reading from storage, judged by the process's major page faults:
    /// true while they grew in the last `quietLooks` looks.
    func readingStorage() -> Bool {
        guard let count = Self.majorFaults() else { return true }
        return faults.withLock { f in
            if count > f.count {
                f = (count, 0)
            } else {
                f.quietLooks += 1
            }
            return f.quietLooks < Self.quietLooks
        }
    }

    func ask(_ indices: ArraySlice<Int>) {
        var fresh: [(shard: Int, chunk: Int)] = []
        asked.withLock { asked in
            if asked.count > Self.memory { asked.removeAll(keepingCapacity: true) }
            for index in indices {
                guard let (s, local) = try? cache.locate(index) else { continue }
                let chunk = local / cache.shards[s].recordsPerChunk
                if asked.insert(s << 40 | chunk).inserted { fresh.append((s, chunk)) }
            }
        }
        for f in fresh { cache.shards[f.shard].willNeed(chunk: f.chunk) }
    }
}
