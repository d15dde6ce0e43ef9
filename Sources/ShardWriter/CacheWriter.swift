import Crypto
import Dispatch
import Foundation
internal import LMDBCore
import Synchronization
public import ShardFormat
import ShardReader
public import TensorFiles
internal import ZstdCore
#if canImport(Glibc)
import Glibc
#endif

/// Appends records to a cache: compresses them in parallel, writes them in batches (one LMDB
/// transaction each), seals shards as they fill, and keeps the manifest current.
///
/// Crash safety: each `append` commits one transaction, syncs the shard, then replaces the
/// manifest atomically. Opening a cache that a killed writer left behind continues after the
/// last committed batch; nothing committed is lost. Only one writer may hold a cache (an
/// advisory `flock` on `.writer.lock`). Not thread-safe: call from one thread.
public final class CacheWriter {
    public struct Options: Sendable {
        /// A shard is sealed once its data reaches this size (it may exceed it by one batch).
        public var shardCapBytes: Int = 1 << 30
        /// Records packed into one LMDB value; fixed for the life of a cache.
        public var recordsPerChunk: Int = 16
        public var compressionLevel: Int = 3
        /// Huffman-code zstd literals; nil (the default) stores them raw with byte planes and
        /// Huffman-codes them without. With byte planes raw literals make frames about 3% larger
        /// and decoding about 1.8× faster; without, they made frames 26% larger
        /// (Schemas/FORMAT.md, section 7). Readers need not know: a frame decodes the same either way.
        public var compressLiterals: Bool? = nil
        /// Byte-plane shuffle of tensors before compression (`ByteShuffle`).
        public var shuffle: Bool = true
        /// Whether the frames Huffman-code their literals: `compressLiterals`, or its default.
        public var literalsCompressed: Bool { compressLiterals ?? !shuffle }
        /// A sealed shard is compacted only when its free pages exceed this many bytes (and 1%
        /// of it): compacting reads the whole file through LMDB's map, raising peak memory by the
        /// file's size, which a few free pages do not pay for...
        public var compactionFloorBytes: Int = 16 << 20
        /// ...unless the shard is smaller than this: mapping it costs little, and a small cache's
        /// free pages are a large share of it.
        public var compactSmallerThanBytes: Int = 4 << 20
        /// Threads for encoding, hashing and compressing a batch.
        public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
        public var createdBy: String = "mtok"
        public init() {}
    }

    public let root: String
    public private(set) var manifest: Manifest
    let options: Options
    var current: WritableShard?
    var sealed: [Shard] = []
    let lockFD: Int32
    let workers: [EncodeWorker]

    /// Opens the cache at `path` for appending, creating it if needed.
    ///
    /// - Parameters:
    ///   - settings: what produced the records (model, preprocessing, ...). An existing cache
    ///     made with other settings is refused with `CacheError.settingsMismatch`.
    ///   - classes: class names by label, if the dataset has labels.
    ///   - part: for one rank of a scaled-out run.
    ///   - arithmetic: what computes the records this writer appends, recorded in the manifest
    ///     (`Manifest.arithmetic`) as a segment of its own; nil records nothing.
    /// - Parameter growing: `settings` may differ from an existing cache's in its `appends`
    ///   list alone, which must extend the cache's (`mtok tokenize --append`): the cache adopts
    ///   them and is unfinished until `finish()`.
    public init(path: String, settings: JSONValue, classes: [String]? = nil, part: Manifest.Part? = nil,
                arithmetic: Manifest.Arithmetic? = nil, growing: Bool = false, options: Options = Options()) throws {
        root = path
        self.arithmetic = arithmetic
        let fm = FileManager.default
        guard (1...65536).contains(options.recordsPerChunk) else {
            throw CacheError(.settingsMismatch, "records per chunk must be 1...65536, got \(options.recordsPerChunk)")
        }
        try Self.checkOutputDirectory(path)
        try OwnFiles.makeDirectory(path + "/shards")
        let fd = try OwnFiles.open(path + "/.writer.lock", O_RDWR | O_CREAT)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw CacheError(.busy, "another process is writing \(path)")
        }
        lockFD = fd
        var opts = options
        if fm.fileExists(atPath: path + "/" + Manifest.fileName) {
            var existing: Manifest
            do {
                try OwnFiles.checkFile(path + "/" + Manifest.fileName)
                existing = try Manifest.read(fromCache: path)
            } catch let e as FormatError {
                throw CacheError(e.kind == .unknownVersion ? .unknownVersion : .notACache, "\(path)/\(Manifest.fileName): \(e)")
            }
            if let d = existing.settings.describeFirstDifference(from: settings, here: "now") {
                guard growing, Self.onlyAppendsGrew(from: existing.settings, to: settings) else {
                    throw CacheError(.settingsMismatch, "\(path) was written with other settings: \(d); use another output or the same settings")
                }
                existing.settings = settings
                existing.complete = false
                existing.contentDigest = nil
            }
            guard existing.part == part else {
                throw CacheError(.settingsMismatch, "\(path) is a different part (rank/world size) of a scaled-out run")
            }
            // The layout of an existing cache wins over the options.
            opts.recordsPerChunk = existing.recordsPerChunk
            opts.compressionLevel = existing.compression.level
            opts.shuffle = existing.compression.shuffle == Manifest.byteShuffle
            opts.shardCapBytes = existing.shardCapBytes
            opts.compressLiterals = existing.compression.literals != "raw"
            manifest = existing
        } else {
            manifest = Manifest(createdBy: opts.createdBy, recordsPerChunk: opts.recordsPerChunk,
                                compressionLevel: opts.compressionLevel, shuffle: opts.shuffle,
                                compressLiterals: opts.literalsCompressed, shardCapBytes: opts.shardCapBytes,
                                settings: settings, classes: classes, part: part)
        }
        self.options = opts
        workers = (0..<max(1, opts.threads)).map { _ in
            EncodeWorker(compressor: ZstdCompressor(level: Int32(opts.compressionLevel), compressLiterals: opts.literalsCompressed))
        }
        try recover()
        if arithmetic != nil, manifest.arithmetic == nil, manifest.totals.records > 0 {
            // Records of a writer that did not record its arithmetic.
            manifest.arithmetic = [Manifest.ArithmeticSegment(firstRecord: 0, records: manifest.totals.records, madeBy: nil)]
        }
    }

    /// Whether `new` is `old` with entries added to its `appends` list and nothing else changed.
    static func onlyAppendsGrew(from old: JSONValue, to new: JSONValue) -> Bool {
        guard case let .object(a) = old, case let .object(b) = new else { return false }
        func list(_ v: JSONValue?) -> [JSONValue] { if case let .array(items)? = v { return items } else { return [] } }
        let before = list(old["appends"]), after = list(new["appends"])
        return JSONValue.object(a.filter { $0.0 != "appends" }) == JSONValue.object(b.filter { $0.0 != "appends" })
            && after.count > before.count && Array(after.prefix(before.count)) == before
    }

    /// What computes the records this writer appends (see `init`).
    public let arithmetic: Manifest.Arithmetic?
    private var segmentBegun = false

    /// Records this writer's arithmetic segment in the manifest before its first commit, so a
    /// crash after the commit still attributes the records to it (`Manifest.updateTotals`).
    private func beginSegment() throws {
        guard let arithmetic, !segmentBegun else { return }
        var segments = manifest.arithmetic ?? []
        if let last = segments.last, last.records == 0 { segments.removeLast() }  // a session that committed nothing
        segments.append(Manifest.ArithmeticSegment(firstRecord: manifest.totals.records, records: 0, madeBy: arithmetic))
        manifest.arithmetic = segments
        try manifest.write(toCache: root)
        segmentBegun = true
    }

    /// Names a writer leaves in a cache directory before its first manifest exists (a run killed
    /// that early must still resume).
    static let ownNames: Set<String> = ["shards", ".writer.lock", Manifest.fileName + ".tmp", "failures.jsonl"]

    /// Refuses an output that is a file, or a directory that holds something other than a cache:
    /// writing there would mix the cache into someone's files (the input dataset, say).
    /// `alsoAllowed`: other names that may be there (a scaled-out run's root holds `parts`).
    public static func checkOutputDirectory(_ path: String, alsoAllowed: Set<String> = []) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return }
        guard isDirectory.boolValue else { throw CacheError(.notACache, "\(path) exists and is not a directory") }
        try OwnFiles.checkDirectory(path + "/shards")  // before listing it: a link would list another folder
        if FileManager.default.fileExists(atPath: path + "/" + Manifest.fileName) { return }
        var entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        // A writer's own shards folder holds only shard files and their LMDB and compaction leftovers.
        let shardNames = (try? FileManager.default.contentsOfDirectory(atPath: path + "/shards")) ?? []
        entries += shardNames.filter { name in
            !(name.hasPrefix("shard-") && (name.hasSuffix(".mdb") || name.hasSuffix(".mdb-lock") || name.hasSuffix(".mdb.compact")))
        }.map { "shards/" + $0 }
        if let other = entries.sorted().first(where: { !ownNames.contains($0) && !alsoAllowed.contains($0) }) {
            let hint = other == CacheMerger.partsDirectory
                ? " (the parts of a scaled-out run: give the same --world-size, or join them with `mtok merge`)"
                : "; write to a new or empty directory"
            throw CacheError(.notACache, "\(path) is not empty and holds no cache (it has \(other))\(hint)")
        }
    }

    deinit {
        current = nil
        close(lockFD)  // releases the flock
    }

    /// Records committed so far.
    public var count: Int { manifest.shards.reduce(0) { $0 + $1.records } }

    // MARK: Recovery

    /// Brings the directory in line with what was committed: removes temporary files of an
    /// interrupted seal or manifest write, adopts a shard created just before a crash, and
    /// reopens the unsealed shard, whose own `count` (committed with its data) is the truth.
    func recover() throws {
        let fm = FileManager.default
        let shardDir = root + "/shards"
        for name in (try? fm.contentsOfDirectory(atPath: shardDir)) ?? [] where name.hasSuffix(".compact") {
            try? fm.removeItem(atPath: shardDir + "/" + name)
        }
        try? fm.removeItem(atPath: root + "/" + Manifest.fileName + ".tmp")

        let next = Self.shardFile(manifest.shards.count)
        if fm.fileExists(atPath: root + "/" + next) {
            manifest.shards.append(Manifest.Shard(file: next))
        }
        for (i, entry) in manifest.shards.enumerated() {
            if entry.sealed {
                sealed.append(try Shard(root: root, entry: entry, recordsPerChunk: manifest.recordsPerChunk, shuffle: manifest.compression.shuffle))
                continue
            }
            guard i == manifest.shards.count - 1 else {
                throw CacheError(.shardMismatch, "only the last shard may be unsealed", at: CacheLocation(shard: entry.file))
            }
            let shard = try WritableShard(root: root, file: entry.file, recordsPerChunk: manifest.recordsPerChunk,
                                          shuffle: manifest.compression.shuffle,
                                          mapSize: mapSize(forBatchBytes: 0))
            current = shard
            manifest.shards[i] = shard.entry
            // The shard's own marker was committed with its data; the manifest may lag it.
            if let done = shard.inputsDone { manifest.inputsDone = max(manifest.inputsDone ?? 0, done) }
        }
        if manifest.complete, current != nil || manifest.shards.contains(where: { !$0.sealed }) {
            manifest.complete = false
        }
        manifest.updateTotals()
        try manifest.write(toCache: root)
        if let c = current, c.estimatedBytes >= options.shardCapBytes { try sealCurrent() }
    }

    static func shardFile(_ n: Int) -> String { String(format: "shards/shard-%05d.mdb", n) }

    func mapSize(forBatchBytes batch: Int) -> Int {
        // A virtual reservation: the shard's data never exceeds the cap plus one batch.
        2 * options.shardCapBytes + 4 * batch + (64 << 20)
    }

    // MARK: Appending

    /// How many inputs the caller had fully processed at the last commit (a progress marker
    /// committed atomically with the records it covers), or nil if never set.
    public var inputsDone: Int? { manifest.inputsDone }

    /// The layout of this writer's first record; every later one must match.
    private var layout: RecordLayout?

    /// Appends `records` after the last committed one, as one or more committed transactions
    /// (one per shard touched). On return they are durable and listed in the manifest.
    ///
    /// - Parameter inputsDone: a progress marker stored with the last transaction (or alone in the
    ///   manifest when `records` is empty), read back by `inputsDone` after a crash.
    /// - Throws: `CacheError.badRecord` for a record that breaks the schema,
    ///   `CacheError.duplicateId` for an (id, view) already in the cache or twice in the batch;
    ///   nothing of the batch is written then.
    public func append(_ records: [TokenRecord], inputsDone: Int? = nil) throws {
        guard !records.isEmpty else {
            if let inputsDone {
                manifest.inputsDone = inputsDone
                try manifest.write(toCache: root)
            }
            return
        }
        var keys: [[UInt8]] = []
        keys.reserveCapacity(records.count)
        var seen = Set<[UInt8]>()
        var batchLayout = layout  // kept once the batch is written
        for r in records {
            let loc = CacheLocation(id: r.id, view: r.view)
            let key: [UInt8]
            do throws(FormatError) {
                try RecordCodec.validate(latents: r.latents, logvar: r.logvar, indices: r.indices, groups: r.groups)
                key = try ShardLayout.idKey(id: r.id, view: r.view)
                guard RecordCodec.labelRange.contains(r.label) else {
                    throw FormatError(.badMetadata, "label \(r.label) is not in \(RecordCodec.labelRange)")
                }
                // One dtype per tensor in a cache (FORMAT.md 4.1). Checked against this writer's
                // first record: a resumed cache had to match the settings, which fix the layout.
                let own = RecordLayout(r)
                if let batchLayout, let d = own.difference(from: batchLayout) {
                    throw FormatError(.badShape, "has \(d), unlike the cache's other records: a cache keeps one dtype and shape per tensor")
                }
                if batchLayout == nil { batchLayout = own }
            } catch {
                throw CacheError(error, at: loc)
            }
            guard seen.insert(key).inserted else { throw CacheError(.duplicateId, "appears twice in one batch", at: loc) }
            for s in sealed {
                if try s.localIndex(id: r.id, view: r.view) != nil {
                    throw CacheError(.duplicateId, "already stored in \(s.file)", at: loc)
                }
            }
            keys.append(key)
        }
        for s in sealed { s.releaseMappedPages() }
        let encoded = try encode(records)
        manifest.complete = false
        manifest.contentDigest = nil
        try beginSegment()
        var start = 0
        while start < records.count {
            if current == nil { try openNewShard(batchBytes: encoded.totalCompressed) }
            let shard = current!
            // Take records until this shard reaches its cap.
            var end = start
            var estimate = shard.estimatedBytes
            while end < records.count && (end == start || estimate < options.shardCapBytes) {
                estimate += encoded.frames[end].count + WritableShard.perRecordOverhead
                end += 1
            }
            try shard.write(frames: Array(encoded.frames[start..<end]), digests: Array(encoded.digests[(32 * start)..<(32 * end)]),
                            payloadBytes: Array(encoded.payloadSizes[start..<end]), idKeys: Array(keys[start..<end]),
                            ids: records[start..<end].map { ($0.id, $0.view) },
                            inputsDone: end == records.count ? inputsDone : nil)
            if end == records.count, let inputsDone { manifest.inputsDone = inputsDone }
            manifest.shards[manifest.shards.count - 1] = shard.entry
            manifest.updateTotals()
            try manifest.write(toCache: root)
            if shard.estimatedBytes >= options.shardCapBytes { try sealCurrent() }
            start = end
        }
        layout = batchLayout
    }

    struct Encoded {
        var frames: [[UInt8]]
        /// The payloads' SHA-256s, 32 bytes per record.
        var digests: [UInt8]
        var payloadSizes: [Int]
        var totalCompressed: Int
    }

    /// Serializes, hashes and compresses records on up to `options.threads` threads. Threads
    /// take the next block of records as they become free (another process may hold a core);
    /// each record's bytes depend on the record alone, so the output is the same for any
    /// thread count.
    func encode(_ records: [TokenRecord]) throws -> Encoded {
        let n = records.count
        let slots = EncodeSlots(count: n)
        let threads = min(workers.count, (n + Self.encodeBlock - 1) / Self.encodeBlock)
        let work = UncheckedBox((records, workers))
        let shuffle = options.shuffle
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let (records, workers) = work.value
            let worker = workers[t]
            while true {
                let first = slots.next.add(Self.encodeBlock, ordering: .relaxed).oldValue
                if first >= n { break }
                for i in first..<min(n, first + Self.encodeBlock) {
                    let digest = RecordCodec.encodeForStorage(records[i], shuffled: shuffle, into: &worker.stored)
                    do {
                        let frame = try worker.stored.withUnsafeBytes { try worker.compressor.compress($0) }
                        slots.set(i, frame: frame, digest: digest, payloadSize: worker.stored.count)
                    } catch {
                        slots.fail(i, error)
                    }
                }
            }
        }
        return try slots.result()
    }

    /// Records a thread takes at a time: enough to keep the shared counter cold, few enough to
    /// even out the threads' loads.
    static let encodeBlock = 8

    func openNewShard(batchBytes: Int) throws {
        let file = Self.shardFile(manifest.shards.count)
        let shard = try WritableShard(root: root, file: file, recordsPerChunk: options.recordsPerChunk,
                                      shuffle: manifest.compression.shuffle,
                                      mapSize: mapSize(forBatchBytes: batchBytes))
        current = shard
        manifest.shards.append(shard.entry)
        manifest.updateTotals()
        try manifest.write(toCache: root)
    }

    // MARK: Sealing and finishing

    /// Seals the open shard: a compacted copy replaces it when its free pages are more than 1% of
    /// it and either more than `compactionFloorBytes` or the shard is under
    /// `compactSmallerThanBytes` (appends leave few free pages: those of partial chunks rewritten
    /// in the last batches), the lock file goes, its SHA-256 enters the manifest, and the file becomes
    /// read-only. An empty shard is removed.
    func sealCurrent() throws {
        guard let shard = current else { return }
        let file = shard.file
        let path = root + "/" + file
        let isEmpty = shard.count == 0
        // Compacting reads every page through LMDB's map, so the process's peak memory grows by
        // the file's size: past a few MiB it runs only when it gives back a real amount of disk
        // (measured: compacting every shard, tokenizing 4,000 images peaked 22% above 1,000; with
        // the floor, 5%).
        let free = shard.freeBytes(), used = shard.env.usedBytes
        let compacts = !isEmpty && Double(free) > 0.01 * Double(used)
            && (free > options.compactionFloorBytes || used < options.compactSmallerThanBytes)
        if compacts { try shard.compact(to: path + ".compact") } else if !isEmpty {
            do { try shard.env.sync() } catch { throw CacheError(.io, "\(error)", at: CacheLocation(shard: file)) }
        }
        current = nil  // closes the environment before the file is replaced
        let fm = FileManager.default
        try? fm.removeItem(atPath: path + "-lock")
        if isEmpty {
            try fm.removeItem(atPath: path)
            manifest.shards.removeLast()
            manifest.updateTotals()
            try manifest.write(toCache: root)
            return
        }
        if compacts {
            guard rename(path + ".compact", path) == 0 else {
                throw CacheError(.io, "rename: \(String(cString: strerror(errno)))", at: CacheLocation(shard: file))
            }
        }
        AtomicFile.syncDirectory(of: path)
        let (digest, size) = try CacheVerifier.sha256(ofFile: path)
        var entry = manifest.shards[manifest.shards.count - 1]
        entry.sealed = true
        entry.sha256 = digest
        entry.bytes = size
        manifest.shards[manifest.shards.count - 1] = entry
        manifest.updateTotals()
        try manifest.write(toCache: root)
        chmod(path, 0o444)
        sealed.append(try Shard(root: root, entry: entry, recordsPerChunk: manifest.recordsPerChunk, shuffle: manifest.compression.shuffle))
    }

    /// Seals every shard, computes the content digest, and marks the cache complete.
    @discardableResult
    public func finish() throws -> Manifest {
        try sealCurrent()
        var hasher = SHA256()
        for shard in sealed {
            try shard.forEachDigest { hasher.update(bufferPointer: $0) }
            shard.releaseMappedPages()
        }
        manifest.contentDigest = "sha256:" + CacheVerifier.hex(hasher.finalize())
        manifest.complete = true
        manifest.updateTotals()
        try manifest.write(toCache: root)
        return manifest
    }
}

/// Per-index results of `CacheWriter.encode`, filled from several threads: each index is
/// written by exactly one thread (the one that claimed its block from `next`), and read only
/// after `concurrentPerform` returns.
final class EncodeSlots: @unchecked Sendable {
    let next = Atomic<Int>(0)
    private let count: Int
    private let frames: UnsafeMutableBufferPointer<[UInt8]>
    private let digests: UnsafeMutableRawBufferPointer
    private let sizes: UnsafeMutableBufferPointer<Int>
    private let lock = NSLock()
    private var firstFailure: (index: Int, error: any Error)?

    init(count: Int) {
        self.count = count
        frames = .allocate(capacity: count)
        frames.initialize(repeating: [])
        digests = .allocate(byteCount: 32 * count, alignment: 8)
        sizes = .allocate(capacity: count)
        sizes.initialize(repeating: 0)
    }

    deinit {
        frames.deinitialize().deallocate()
        digests.deallocate()
        sizes.deallocate()
    }

    func set(_ i: Int, frame: [UInt8], digest: SHA256Digest, payloadSize: Int) {
        frames[i] = frame
        digest.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: digests[(32 * i)..<(32 * i + 32)]).copyMemory(from: $0) }
        sizes[i] = payloadSize
    }

    /// Keeps the failure of the lowest index, so the error reported does not depend on timing.
    func fail(_ i: Int, _ error: any Error) {
        lock.lock()
        if firstFailure == nil || i < firstFailure!.index { firstFailure = (i, error) }
        lock.unlock()
    }

    func result() throws -> CacheWriter.Encoded {
        if let firstFailure { throw firstFailure.error }
        return CacheWriter.Encoded(frames: Array(frames), digests: Array(digests), payloadSizes: Array(sizes),
                                   totalCompressed: frames.reduce(0) { $0 + $1.count })
    }
}

/// A thread's own zstd context and serialization buffer, reused for every record it encodes.
final class EncodeWorker {
    let compressor: ZstdCompressor
    var stored: [UInt8] = []
    init(compressor: ZstdCompressor) { self.compressor = compressor }
}

/// Hands values to `concurrentPerform`; each thread uses only its own worker.
struct UncheckedBox<T>: @unchecked Sendable {  // thread t uses only workers[t]
    let value: T
    init(_ value: T) { self.value = value }
}
