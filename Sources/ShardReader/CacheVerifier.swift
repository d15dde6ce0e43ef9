import Crypto
import TensorFiles
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
public import Foundation
internal import LMDBCore
public import ShardFormat
internal import ZstdCore

/// One problem `CacheVerifier` found, with its location.
public struct VerifyFault: Codable, Sendable, Equatable, CustomStringConvertible {
    public var kind: CacheError.Kind
    public var message: String
    public var shard: String?
    public var chunk: Int?
    public var index: Int?
    public var id: String?
    public var view: Int?

    init(_ error: CacheError) {
        kind = error.kind
        message = error.message
        shard = error.location.shard
        chunk = error.location.chunk
        index = error.location.index
        id = error.location.id
        view = error.location.view
    }

    public var description: String {
        CacheError(kind, message, at: CacheLocation(shard: shard, chunk: chunk, index: index, id: id, view: view)).description
    }
}

/// What `CacheVerifier.verify` checked and found.
public struct VerifyReport: Encodable, Sendable {
    public var path: String
    public var deep: Bool
    public var records: Int = 0
    public var shards: Int = 0
    public var recordsChecked: Int = 0
    public var payloadBytesChecked: Int = 0
    public var contentDigest: String?
    public var seconds: Double = 0
    public var faults: [VerifyFault] = []
    /// Which arithmetics made the records (from the manifest), in order of first use. More
    /// than one is not a fault, but those records are not bit-identical to a one-kernel run.
    public var arithmetic: [ArithmeticUse] = []
    /// Shards whose files live outside the cache folder (symbolic links, to shared storage say):
    /// not a fault, but the cache is then only as sound as those places.
    public var shardsElsewhere: [ShardElsewhere] = []
    /// Set when the writer has not finished (interrupted, or still running): not a fault, as the
    /// same command resumes it, but not a finished cache either. Says what to do.
    public var unfinished: String?
    public var isClean: Bool { faults.isEmpty && unfinished == nil }

    public struct ShardElsewhere: Encodable, Sendable, Equatable {
        public var shard: String
        /// The real path of the file the shard's link leads to.
        public var path: String
    }

    public struct ArithmeticUse: Encodable, Sendable, Equatable {
        /// nil: not recorded.
        public var madeBy: Manifest.Arithmetic?
        public var records: Int
        enum CodingKeys: String, CodingKey { case madeBy = "made_by", records }
    }

    enum CodingKeys: String, CodingKey {
        case path, deep, records, shards, recordsChecked = "records_checked", payloadBytesChecked = "payload_bytes_checked"
        case contentDigest = "content_digest", seconds, faults, arithmetic, shardsElsewhere = "shards_elsewhere", unfinished, isClean = "clean"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(path, forKey: .path)
        try c.encode(deep, forKey: .deep)
        try c.encode(records, forKey: .records)
        try c.encode(shards, forKey: .shards)
        try c.encode(recordsChecked, forKey: .recordsChecked)
        try c.encode(payloadBytesChecked, forKey: .payloadBytesChecked)
        try c.encode(contentDigest, forKey: .contentDigest)
        try c.encode(seconds, forKey: .seconds)
        try c.encode(faults, forKey: .faults)
        try c.encode(arithmetic, forKey: .arithmetic)
        try c.encode(shardsElsewhere, forKey: .shardsElsewhere)
        try c.encode(unfinished, forKey: .unfinished)
        try c.encode(isClean, forKey: .isClean)
    }
}

/// Checks a cache against its manifest (fast) and, with `deep`, every record.
///
/// Fast: the manifest parses; every listed shard exists, opens, and holds the listed count;
/// sealed shards have the listed size and SHA-256; no unlisted shard files; the cache is complete.
/// Deep, in addition: every chunk present and full; every record decompresses (zstd checksum),
/// matches its stored SHA-256, and follows the schema; the id index maps each (id, view) to its
/// record and nothing else (a bijection); no (id, view) twice in the cache; the content digest
/// from the stored digests equals the manifest's. With `rehash`, each payload's SHA-256 is
/// recomputed and compared with its stored digest, and the content digest is recomputed from the
/// payloads themselves (about twice the work: the zstd checksum already proves every payload byte
/// is what was written).
public enum CacheVerifier {
    public static func verify(path root: String, deep: Bool, rehash: Bool = false,
                              threads: Int = ProcessInfo.processInfo.activeProcessorCount) -> VerifyReport {
        let started = Date()
        var report = check(root, deep: deep, rehash: rehash, threads: threads)
        report.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// A finished cache's `stats.json`, when it has one, must describe its records: the same
    /// content digest (fast), and with `deep` the same figures when recomputed.
    static func statisticsFaults(_ root: String, deep: Bool) -> [CacheError] {
        guard isPresent(root + "/" + CacheStatistics.fileName),
              let cache = try? TokenCache(path: root) else { return [] }
        do {
            guard let stored = try CacheStatistics.stored(in: cache), deep else { return [] }
            let fresh = try CacheStatistics.compute(cache, codebookSize: CacheStatistics.codebookSize(settings: cache.manifest.settings))
            return stored == fresh ? [] : [CacheError(.checksumMismatch, "\(CacheStatistics.fileName) differs from the statistics of the records: `mtok stats CACHE --recompute --write` rewrites it")]
        } catch let e as CacheError {
            return [e]  // its message names the file
        } catch {
            return [CacheError(.badRecord, "\(CacheStatistics.fileName): \(error)")]
        }
    }

    /// Whether anything (a link too) is at `path`.
    static func isPresent(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    static func check(_ root: String, deep: Bool, rehash: Bool, threads: Int) -> VerifyReport {
        var report = VerifyReport(path: root, deep: deep)
        let manifest: Manifest
        do {
            manifest = try Manifest.read(fromCache: root)
        } catch let e as FormatError {
            report.faults.append(VerifyFault(CacheError(e.kind == .unknownVersion ? .unknownVersion : .notACache, "\(root)/\(Manifest.fileName): \(e)")))
            return report
        } catch {
            report.faults.append(VerifyFault(CacheError(.notACache, TokenCache.noManifest(root))))
            return report
        }
        report.records = manifest.shards.reduce(0) { $0 + $1.records }
        report.shards = manifest.shards.count
        report.contentDigest = manifest.contentDigest
        var faults: [CacheError] = []
        if !manifest.complete {
            let records = manifest.totals.records
            report.unfinished = manifest.part.map {
                "rank \($0.rank) of \($0.worldSize) has not finished (\(records) records committed so far): run its `mtok tokenize` command again to resume it"
            } ?? "its writer has not finished (\(records) records committed so far): run the same `mtok tokenize` command again to resume it"
        }
        var sums = Manifest.Totals()
        for s in manifest.shards {
            sums.records += s.records
            sums.payloadBytes += s.payloadBytes
            sums.compressedBytes += s.compressedBytes
            sums.bytesOnDisk += s.bytes
        }
        if sums != manifest.totals {
            faults.append(CacheError(.shardMismatch, "manifest totals disagree with its shard list"))
        }
        if let problem = manifest.arithmeticProblem {
            faults.append(CacheError(.shardMismatch, "manifest: \(problem)"))
        }
        report.arithmetic = manifest.arithmeticUse.map { VerifyReport.ArithmeticUse(madeBy: $0.madeBy, records: $0.records) }
        let listed = Set(manifest.shards.map { $0.file })
        let onDisk = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/shards")) ?? [])
            .filter { $0.hasSuffix(".mdb") }.map { "shards/" + $0 }
        for file in onDisk.sorted() where !listed.contains(file) {
            faults.append(CacheError(.shardMismatch, "shard file is not listed in the manifest", at: CacheLocation(shard: file)))
        }

        // Sealed files are hashed on threads of their own while the shards open and, when deep,
        // their records are checked: the two read different things and neither waits for the
        // other. SHA-256 of one file is sequential, so files are hashed side by side: on all the
        // threads for a fast check, on about a third of them beside a deep one (hashing a file
        // costs about a third of decoding and checking its records). Faults are still listed in
        // shard order.
        let sizes: [Result<Int, CacheError>] = manifest.shards.map { entry in
            Result { () throws(CacheError) in try Shard.fileSize(root + "/" + entry.file, at: CacheLocation(shard: entry.file)) }
        }
        let rootReal = realPath(root).map { $0.hasSuffix("/") ? $0 : $0 + "/" }
        for entry in manifest.shards {
            if let rootReal, let real = realPath(root + "/" + entry.file), !real.hasPrefix(rootReal) {
                report.shardsElsewhere.append(VerifyReport.ShardElsewhere(shard: entry.file, path: real))
            }
        }
        let toHash = manifest.shards.indices.filter { manifest.shards[$0].sealed && (try? sizes[$0].get()) == manifest.shards[$0].bytes }
        let hashes = FileHashes(count: manifest.shards.count)
        let hashing = DispatchGroup()
        let hashThreads = min(toHash.count, max(1, deep ? (threads + 1) / 3 : threads))
        for _ in 0..<hashThreads {
            DispatchQueue.global().async(group: hashing) {
                while let i = hashes.claim(from: toHash) {
                    hashes.set(i, Result { try sha256(ofFile: root + "/" + manifest.shards[i].file).hex })
                }
            }
        }
        var shardFaults: [[CacheError]] = Array(repeating: [], count: manifest.shards.count)
        var opened: [(Int, Shard)] = []
        var first = 0
        for (i, entry) in manifest.shards.enumerated() {
            defer { first += entry.records }
            let loc = CacheLocation(shard: entry.file)
            let size: Int
            switch sizes[i] {
            case let .success(s): size = s
            case let .failure(fault):
                shardFaults[i].append(fault)
                continue
            }
            // A sealed shard that changed is reported, and still deep-checked when it opens, so
            // the damaged records are located too.
            if entry.sealed && size != entry.bytes {
                shardFaults[i].append(CacheError(.shardMismatch, "file is \(size) bytes, manifest says \(entry.bytes)", at: loc))
            }
            do {
                opened.append((first, try Shard(root: root, entry: entry, recordsPerChunk: manifest.recordsPerChunk, shuffle: manifest.compression.shuffle)))
            } catch {
                shardFaults[i].append(error)
            }
        }
        func collectShardFaults() {
            hashing.wait()
            for (i, entry) in manifest.shards.enumerated() {
                let loc = CacheLocation(shard: entry.file)
                switch hashes.get(i) {
                case nil: break
                case let .success(hex)?:
                    if hex != entry.sha256 {
                        faults.append(CacheError(.checksumMismatch, "SHA-256 \(hex) differs from the manifest's \(entry.sha256 ?? "none")", at: loc))
                    }
                case let .failure(error)?:
                    faults.append(CacheError(.io, "\(error)", at: loc))
                }
                faults += shardFaults[i]
            }
        }

        var deepFaults: [CacheError] = []
        if deep && opened.count == manifest.shards.count {
            var hasher = SHA256()
            var seen = Set<IdHash>()
            let shuffled = manifest.compression.shuffle == Manifest.byteShuffle
            // The layout every record must share: the first record's (when it reads; if it does
            // not, its own fault says so).
            let layout = opened.first { $0.1.count > 0 }.flatMap { _, shard in try? shard.firstRecordLayout(shuffled: shuffled) } ?? nil
            for (firstIndex, shard) in opened {
                let result = checkRecords(shard, firstIndex: firstIndex, shuffled: shuffled, layout: layout,
                                          rehash: rehash, threads: max(1, threads))
                deepFaults += result.faults
                report.recordsChecked += result.checked
                report.payloadBytesChecked += result.payloadBytes
                result.digests.withUnsafeBytes { hasher.update(bufferPointer: $0) }
                for (h, loc) in result.idHashes where !seen.insert(h).inserted {
                    deepFaults.append(CacheError(.duplicateId, "(id, view) is stored more than once in the cache", at: loc))
                }
            }
            let digest = "sha256:" + hex(hasher.finalize())
            if manifest.complete, manifest.contentDigest != digest {
                deepFaults.append(CacheError(.checksumMismatch, "content digest of the records is \(digest), manifest says \(manifest.contentDigest ?? "none")"))
            }
        } else if deep {
            deepFaults.append(CacheError(.shardMismatch, "records not checked: every shard must open for the deep checks (see the faults above)"))
        }
        collectShardFaults()
        faults += deepFaults
        if manifest.complete && faults.isEmpty { faults += statisticsFaults(root, deep: deep) }
        report.faults = faults.map(VerifyFault.init)
        return report
    }

    /// Results of the hashing threads, one slot per shard; read after the threads are joined.
    final class FileHashes: @unchecked Sendable {  // each slot is written once, by the thread that claimed it
        private var slots: [Result<String, any Error>?]
        private let next = Atomic<Int>(0)
        init(count: Int) { slots = Array(repeating: nil, count: count) }
        /// The next shard of `list` no thread has taken yet.
        func claim(from list: [Int]) -> Int? {
            let k = next.add(1, ordering: .relaxed).oldValue
            return k < list.count ? list[k] : nil
        }
        func set(_ i: Int, _ r: Result<String, any Error>) { slots.withUnsafeMutableBufferPointer { $0[i] = r } }
        func get(_ i: Int) -> Result<String, any Error>? { slots[i] }
    }

    struct IdHash: Hashable {
        let a: UInt64
        let b: UInt64
    }

    struct ShardResult {
        var faults: [CacheError] = []
        var checked = 0
        var payloadBytes = 0
        var digests: [UInt8] = []
        var idHashes: [(IdHash, CacheLocation)] = []
    }

    /// Checks every record of one shard, chunks spread over `threads` threads.
    static func checkRecords(_ shard: Shard, firstIndex: Int, shuffled: Bool, layout: RecordLayout?, rehash: Bool,
                             threads: Int) -> ShardResult {
        let rpc = shard.recordsPerChunk
        let chunks = (shard.count + rpc - 1) / rpc
        let digests = DigestSlots(count: shard.count)
        let parts = (0..<threads).map { _ in PartResult(digests: digests) }
        let box = PartsBox(parts)
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let part = box.parts[t]
            let decompressor = ZstdDecompressor()
            let checker = RecordChecker()
            var chunk = t
            while chunk < chunks {
                checkChunk(shard, chunk: chunk, firstIndex: firstIndex, shuffled: shuffled, layout: layout, rehash: rehash,
                           decompressor: decompressor, checker: checker, into: part)
                chunk += threads
            }
        }
        var out = ShardResult()
        out.digests = digests.bytes
        for part in parts {
            out.faults += part.faults
            out.checked += part.checked
            out.payloadBytes += part.payloadBytes
            out.idHashes += part.idHashes
        }
        // Chunk keys beyond the count, and the id index's size (with every record's key found
        // pointing at it, equal sizes make the index a bijection).
        do {
            try shard.env.read { txn in
                // An unsealed shard may run ahead of the manifest: more, never fewer.
                let stored = try txn.count(shard.records)
                if stored != chunks && (shard.sealed || stored < chunks) {
                    out.faults.append(CacheError(.shardMismatch, "\(stored) chunks stored, \(chunks) expected for \(shard.count) records",
                                                 at: CacheLocation(shard: shard.file)))
                }
                let idCount = try txn.count(shard.ids)
                if idCount != shard.count && (shard.sealed || idCount < shard.count) {
                    out.faults.append(CacheError(.idIndexMismatch, "id index has \(idCount) entries for \(shard.count) records",
                                                 at: CacheLocation(shard: shard.file)))
                }
            }
        } catch {
            out.faults.append(CacheError(.io, "\(error)", at: CacheLocation(shard: shard.file)))
        }
        out.faults.sort { ($0.location.index ?? -1) < ($1.location.index ?? -1) }
        return out
    }

    final class PartResult: @unchecked Sendable {  // each instance is used by one thread
        var faults: [CacheError] = []
        var checked = 0
        var payloadBytes = 0
        /// Where the digest of each record that decompresses goes (shared: records are disjoint).
        let digests: DigestSlots
        var idHashes: [(IdHash, CacheLocation)] = []
        init(digests: DigestSlots) { self.digests = digests }
    }

    /// 32 bytes per record of a shard, zero until a thread stores that record's digest; each
    /// record belongs to one chunk, checked by one thread, and the bytes are read after the
    /// threads are joined.
    final class DigestSlots: @unchecked Sendable {
        private(set) var bytes: [UInt8]
        init(count: Int) { bytes = [UInt8](repeating: 0, count: 32 * count) }
        func set(_ local: Int, _ digest: UnsafeRawBufferPointer) {
            precondition(digest.count == 32)
            bytes.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: 32 * local).copyMemory(from: digest.baseAddress!, byteCount: 32) }
        }
    }

    struct PartsBox: @unchecked Sendable {  // thread t touches only parts[t]
        let parts: [PartResult]
        init(_ parts: [PartResult]) { self.parts = parts }
    }

    static func checkChunk(_ shard: Shard, chunk: Int, firstIndex: Int, shuffled: Bool, layout: RecordLayout?, rehash: Bool,
                           decompressor: ZstdDecompressor, checker: RecordChecker, into part: PartResult) {
        let rpc = shard.recordsPerChunk
        let expected = min(rpc, shard.count - chunk * rpc)
        let chunkLoc = CacheLocation(shard: shard.file, chunk: chunk, index: firstIndex + chunk * rpc)
        do {
            try shard.env.read { txn in
                let key = ShardLayout.chunkKey(chunk)
                guard let storedDigests = try txn.get(shard.digests, key: key, { Array($0) }) else {
                    part.faults.append(CacheError(.corruptRecord, "digests of chunk \(chunk) are missing", at: chunkLoc))
                    return
                }
                let found: Void? = try txn.get(shard.records, key: key) { value in
                    let n: Int
                    do { n = try Chunk.count(value) } catch let e as FormatError {
                        part.faults.append(CacheError(.corruptRecord, e.description, at: chunkLoc))
                        return
                    }
                    // A shard being written may hold records past its manifest entry (FORMAT.md
                    // 6.2): those are not the cache's yet and are not checked.
                    guard n == expected || (!shard.sealed && n > expected), storedDigests.count == 32 * n else {
                        part.faults.append(CacheError(.corruptRecord, "chunk holds \(n) records (\(storedDigests.count / 32) digests), expected \(expected)", at: chunkLoc))
                        return
                    }
                    for slot in 0..<expected {
                        let local = chunk * rpc + slot
                        let loc = CacheLocation(shard: shard.file, chunk: chunk, index: firstIndex + local)
                        // The content digest is made of the stored digests (FORMAT.md 5), so a
                        // record that cannot be read is reported once, as itself, and does not
                        // also make the digest look wrong.
                        storedDigests.withUnsafeBytes { part.digests.set(local, UnsafeRawBufferPointer(rebasing: $0[(slot * 32)..<(slot * 32 + 32)])) }
                        do {
                            let frame = try Chunk.frame(value, slot: slot)
                            let (id, view, size) = try decompressor.withDecompressed(frame, maxSize: RecordCodec.maxPayloadBytes) { stored in
                                if rehash {
                                    let payload = shuffled ? try ByteShuffle.unshuffle(stored) : Array(stored)
                                    let digest = SHA256.hash(data: payload)
                                    guard digest.elementsEqual(storedDigests[(slot * 32)..<(slot * 32 + 32)]) else {
                                        throw CacheError(.checksumMismatch, "payload SHA-256 differs from the stored digest", at: loc)
                                    }
                                }
                                let (id, view, own) = try checker.check(stored: stored, shuffled: shuffled)
                                if let layout, let d = own.difference(from: layout) {
                                    var at = loc
                                    (at.id, at.view) = (id, view)
                                    throw CacheError(.badRecord, "has \(d), unlike the cache's first record: a cache keeps one dtype and shape per tensor", at: at)
                                }
                                return (id, view, stored.count)
                            }
                            part.payloadBytes += size
                            part.checked += 1
                            var idLoc = loc
                            idLoc.id = id
                            idLoc.view = view
                            let idKey = try ShardLayout.idKey(id: id, view: view)
                            let mapped = try txn.get(shard.ids, key: idKey) { ShardLayout.localIndex(fromValue: $0) }
                            if mapped == nil {
                                part.faults.append(CacheError(.idIndexMismatch, "(id, view) is missing from the id index", at: idLoc))
                            } else if mapped! != local {
                                part.faults.append(CacheError(.idIndexMismatch, "id index points at local record \(mapped!.map(String.init) ?? "?"), not \(local)", at: idLoc))
                            }
                            let h = SHA256.hash(data: idKey).withUnsafeBytes {
                                IdHash(a: $0.loadUnaligned(as: UInt64.self), b: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                            }
                            part.idHashes.append((h, idLoc))
                        } catch let e as ZstdError {
                            part.faults.append(CacheError(e.kind == .checksumMismatch ? .checksumMismatch : .corruptRecord, e.description, at: loc))
                        } catch let e as CacheError {
                            part.faults.append(e)
                        } catch let e as FormatError {
                            part.faults.append(CacheError(e, at: loc))
                        }
                    }
                }
                if found == nil { part.faults.append(CacheError(.corruptRecord, "chunk \(chunk) is missing", at: chunkLoc)) }
            }
        } catch {
            part.faults.append(CacheError(.io, "\(error)", at: chunkLoc))
        }
    }

    /// Lower-case hexadecimal of `bytes`.
    public static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// SHA-256 and size of a file, read in 256 KiB blocks into one reused buffer: hashing a 1 GiB
    /// shard must not add 1 GiB of mapped pages to the process's resident memory, and a block
    /// that stays in cache hashes as fast as a larger one (measured: 4 MiB blocks were no faster)
    /// while adding less to the writer's peak memory when it seals.
    public static func sha256(ofFile path: String) throws -> (hex: String, size: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CacheError(.io, "\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let blockSize = 256 << 10
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 64)
        defer { buffer.deallocate() }
        var hasher = SHA256()
        var size = 0
        while true {
            let n = read(fd, buffer, blockSize)
            if n < 0 {
                if errno == EINTR { continue }
                throw CacheError(.io, "\(path): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(start: buffer, count: n))
            size += n
        }
        return (hex(hasher.finalize()), size)
    }
}

/// The canonical path of `path` (every link resolved), or nil when it does not resolve.
private func realPath(_ path: String) -> String? {
    guard let r = realpath(path, nil) else { return nil }
    defer { free(r) }
    return String(cString: r)
}
