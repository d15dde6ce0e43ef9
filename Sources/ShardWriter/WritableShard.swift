import Foundation
internal import LMDBCore
import ShardFormat
import ShardReader

/// The one shard of a cache open for writing; owns its LMDB environment.
///
/// The last chunk of a shard may be partial: its frames stay in memory (`pendingFrames`) and the
/// chunk is rewritten whole at every commit until it is full, so each commit leaves a valid shard.
final class WritableShard {
    /// Estimated bytes a record adds beyond its frame: id key, digest, chunk offsets, page slack.
    static let perRecordOverhead = 160

    let file: String
    let env: LMDBEnvironment
    let records: LMDBDatabase
    let ids: LMDBDatabase
    let digests: LMDBDatabase
    let meta: LMDBDatabase
    let recordsPerChunk: Int
    private(set) var count = 0
    private(set) var payloadBytes = 0
    private(set) var compressedBytes = 0
    private(set) var estimatedBytes = 0
    /// The caller's progress marker committed with the last batch (see `CacheWriter.inputsDone`).
    private(set) var inputsDone: Int?
    private var pendingFrames: [[UInt8]] = []
    private var pendingDigests: [UInt8] = []

    /// - Parameter shuffle: the cache's `compression.shuffle`, recorded in a new shard's `meta`
    ///   so readers can tell when a manifest says otherwise.
    init(root: String, file: String, recordsPerChunk: Int, shuffle: String, mapSize: Int) throws {
        self.file = file
        self.recordsPerChunk = recordsPerChunk
        let loc = CacheLocation(shard: file)
        // LMDB opens (and creates) the data and lock files itself, following links: refuse them first.
        try OwnFiles.checkFile(root + "/" + file)
        try OwnFiles.checkFile(root + "/" + file + "-lock")
        var opts = LMDBEnvironment.Options(readOnly: false, mapSize: mapSize, noSync: true)
        opts.maxDatabases = 4
        do {
            env = try LMDBEnvironment(path: root + "/" + file, options: opts)
        } catch {
            throw CacheError(.io, "cannot open for writing: \(error)", at: loc)
        }
        let state = try env.write { txn -> (LMDBDatabase, LMDBDatabase, LMDBDatabase, LMDBDatabase, [String: String]) in
            let r = try txn.openDatabase(ShardLayout.recordsDatabase, create: true)!
            let i = try txn.openDatabase(ShardLayout.idsDatabase, create: true)!
            let d = try txn.openDatabase(ShardLayout.digestsDatabase, create: true)!
            let m = try txn.openDatabase(ShardLayout.metaDatabase, create: true)!
            var values: [String: String] = [:]
            try txn.forEach(m) { k, v in
                values[String(decoding: k, as: UTF8.self)] = String(decoding: v, as: UTF8.self)
                return true
            }
            if values.isEmpty {
                values = ["format": ShardLayout.shardFormat, "records_per_chunk": String(recordsPerChunk),
                          "count": "0", "payload_bytes": "0", "compressed_bytes": "0", "shuffle": shuffle]
                for (k, v) in values { try txn.put(m, key: Array(k.utf8), value: Array(v.utf8)) }
            }
            return (r, i, d, m, values)
        }
        (records, ids, digests, meta) = (state.0, state.1, state.2, state.3)
        let values = state.4
        guard values["format"] == ShardLayout.shardFormat else {
            throw CacheError(.unknownVersion, "shard format \(values["format"] ?? "none")", at: loc)
        }
        if let own = values["shuffle"], own != shuffle {
            throw CacheError(.shardMismatch, "shard was written with shuffle \(own), the manifest says \(shuffle)", at: loc)
        }
        guard values["records_per_chunk"] == String(recordsPerChunk),
              let n = values["count"].flatMap(Int.init), let p = values["payload_bytes"].flatMap(Int.init),
              let c = values["compressed_bytes"].flatMap(Int.init) else {
            throw CacheError(.shardMismatch, "shard metadata does not match the manifest", at: loc)
        }
        count = n
        payloadBytes = p
        compressedBytes = c
        estimatedBytes = env.usedBytes
        inputsDone = values["inputs_done"].flatMap(Int.init)
        if n % recordsPerChunk != 0 {
            // Reload the partial last chunk so the next commit can extend it.
            let chunk = n / recordsPerChunk
            try env.read { txn in
                _ = try txn.get(records, key: ShardLayout.chunkKey(chunk)) { value in
                    let k = try Chunk.count(value)
                    pendingFrames = try (0..<k).map { Array(try Chunk.frame(value, slot: $0)) }
                }
                _ = try txn.get(digests, key: ShardLayout.chunkKey(chunk)) { value in pendingDigests = Array(value) }
            }
            guard pendingFrames.count == n % recordsPerChunk, pendingDigests.count == 32 * pendingFrames.count else {
                throw CacheError(.shardMismatch, "partial chunk \(chunk) holds \(pendingFrames.count) records, count says \(n % recordsPerChunk)",
                                 at: CacheLocation(shard: file, chunk: chunk))
            }
        }
    }

    var entry: Manifest.Shard {
        Manifest.Shard(file: file, records: count, payloadBytes: payloadBytes, compressedBytes: compressedBytes,
                       bytes: env.usedBytes, sealed: false)
    }

    /// Writes records in one transaction, then syncs the file. State changes only after the
    /// commit, so a failed write leaves this object as it was.
    /// `digests`: the payloads' SHA-256s, 32 bytes per frame.
    func write(frames: [[UInt8]], digests newDigests: [UInt8], payloadBytes sizes: [Int], idKeys: [[UInt8]],
               ids: [(String, Int)], inputsDone: Int?) throws {
        while true {
            do {
                try writeOnce(frames: frames, digests: newDigests, sizes: sizes, idKeys: idKeys, ids: ids, inputsDone: inputsDone)
                break
            } catch let e as LMDBError where e.isMapFull {
                try env.setMapSize(env.mapSize * 2)
            }
        }
        do { try env.sync() } catch { throw CacheError(.io, "\(error)", at: CacheLocation(shard: file)) }
        // The pages this commit read through the map (B-tree paths, the old overflow page of a
        // rewritten partial chunk) are not needed again soon; mapped, they would count against
        // the writer's memory for the life of the shard.
        env.releaseMappedPages()
    }

    private func writeOnce(frames: [[UInt8]], digests newDigests: [UInt8], sizes: [Int], idKeys: [[UInt8]],
                           ids: [(String, Int)], inputsDone done: Int?) throws {
        var n = count
        var frameBuffer = pendingFrames
        var digestBuffer = pendingDigests
        var estimate = estimatedBytes
        try env.write { txn in
            for j in frames.indices {
                do {
                    try txn.put(self.ids, key: idKeys[j], value: ShardLayout.localIndexValue(n), noOverwrite: true)
                } catch let e as LMDBError where e.isKeyExists {
                    throw CacheError(.duplicateId, "already stored in \(file)", at: CacheLocation(id: ids[j].0, view: ids[j].1))
                }
                frameBuffer.append(frames[j])
                digestBuffer += newDigests[(32 * j)..<(32 * j + 32)]
                estimate += frames[j].count + Self.perRecordOverhead
                n += 1
                if frameBuffer.count == recordsPerChunk {
                    try putChunk((n - 1) / recordsPerChunk, frameBuffer, digestBuffer, txn)
                    frameBuffer.removeAll(keepingCapacity: true)
                    digestBuffer.removeAll(keepingCapacity: true)
                }
            }
            if !frameBuffer.isEmpty { try putChunk(n / recordsPerChunk, frameBuffer, digestBuffer, txn) }
            let p = payloadBytes + sizes.reduce(0, +)
            let c = compressedBytes + frames.reduce(0) { $0 + $1.count }
            for (k, v) in [("count", n), ("payload_bytes", p), ("compressed_bytes", c)] {
                try txn.put(meta, key: Array(k.utf8), value: Array(String(v).utf8))
            }
            if let done { try txn.put(meta, key: Array("inputs_done".utf8), value: Array(String(done).utf8)) }
        }
        if let done { inputsDone = done }
        payloadBytes += sizes.reduce(0, +)
        compressedBytes += frames.reduce(0) { $0 + $1.count }
        count = n
        pendingFrames = frameBuffer
        pendingDigests = digestBuffer
        estimatedBytes = estimate
    }

    private func putChunk(_ chunk: Int, _ frames: [[UInt8]], _ digestBytes: [UInt8], _ txn: LMDBTransaction) throws {
        // Packed straight into the page LMDB reserves for it: no intermediate chunk buffer.
        try txn.reserve(records, key: ShardLayout.chunkKey(chunk), count: Chunk.packedSize(frames)) { Chunk.pack(frames, into: $0) }
        try txn.put(digests, key: ShardLayout.chunkKey(chunk), value: digestBytes)
    }

    /// Bytes of the file's free pages (what compaction would give back); all of it when LMDB
    /// cannot say.
    func freeBytes() -> Int {
        guard let free = try? env.freePageCount() else { return env.usedBytes }
        return free * env.pageSize
    }

    func compact(to path: String) throws {
        try? FileManager.default.removeItem(atPath: path)
        do { try env.copyCompacted(to: path) } catch { throw CacheError(.io, "\(error)", at: CacheLocation(shard: file)) }
    }
}
