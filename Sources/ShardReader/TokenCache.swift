import Foundation
public import ShardFormat
import Crypto
internal import ZstdCore

/// A finished token cache opened for reading.
///
/// Thread-safe: any number of threads may read at once. Shards are opened read-only without a
/// lock file (`MDB_NOLOCK`), so caches work on read-only and network file systems; the caller
/// guarantees that no writer is active. In a forked child, open the cache again (LMDB handles
/// must not cross `fork`).
public final class TokenCache: Sendable {
    public let root: String
    public let manifest: Manifest
    let shards: [Shard]
    /// Global index of each shard's first record, plus the total at the end.
    let bounds: [Int]
    let decompressors = DecompressorPool()

    /// Why `root` is not a cache; with a hint when it holds the unmerged parts of a scaled-out run.
    package static func noManifest(_ root: String) -> String {
        let parts = root + "/parts"
        return FileManager.default.fileExists(atPath: parts)
            ? "\(root) has no \(Manifest.fileName) yet, only the parts of a scaled-out run: join them with `mtok merge \(root)`"
            : "\(root) has no readable \(Manifest.fileName)"
    }

    /// Opens the cache at `root`.
    /// - Throws: `CacheError` (`.notACache`, `.unknownVersion`, `.missingShard`, `.shardMismatch`).
    public init(path root: String) throws(CacheError) {
        self.root = root
        let manifestPath = root + "/" + Manifest.fileName
        do {
            manifest = try Manifest.read(fromCache: root)
        } catch let error as FormatError {
            throw CacheError(error.kind == .unknownVersion ? .unknownVersion : .notACache, "\(manifestPath): \(error)")
        } catch {
            throw CacheError(.notACache, Self.noManifest(root))
        }
        var opened: [Shard] = []
        for entry in manifest.shards {
            opened.append(try Shard(root: root, entry: entry, recordsPerChunk: manifest.recordsPerChunk, shuffle: manifest.compression.shuffle))
        }
        shards = opened
        bounds = manifest.firstIndices + [manifest.shards.reduce(0) { $0 + $1.records }]
    }

    /// Number of records.
    public var count: Int { bounds.last ?? 0 }

    /// (shard number, local record number) of a global index.
    func locate(_ index: Int) throws(CacheError) -> (shard: Int, local: Int) {
        guard index >= 0, index < count else {
            throw CacheError(.outOfRange, "index \(index) not in 0..<\(count)", at: CacheLocation(index: index))
        }
        // Binary search: the last shard whose first index is <= index.
        var lo = 0
        var hi = shards.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if bounds[mid] <= index { lo = mid } else { hi = mid - 1 }
        }
        return (lo, index - bounds[lo])
    }

    /// The uncompressed payload (a safetensors blob) of record `index`; the zstd frame's
    /// checksum is verified.
    public func payload(at index: Int) throws -> [UInt8] {
        let (s, local) = try locate(index)
        let shard = shards[s]
        let shuffled = manifest.compression.shuffle == Manifest.byteShuffle
        return try shard.withFrame(local: local, globalIndex: index) { frame in
            try decompressors.withDecompressor { d in
                try Self.payload(fromFrame: frame, decompressor: d, shuffled: shuffled,
                                 at: CacheLocation(shard: shard.file, chunk: local / shard.recordsPerChunk, index: index))
            }
        }
    }

    /// Decompresses a frame (verifying its checksum) into the decompressor's buffer and undoes
    /// the byte shuffle while copying it out.
    static func payload(fromFrame frame: UnsafeRawBufferPointer, decompressor: ZstdDecompressor, shuffled: Bool,
                        at location: CacheLocation) throws(CacheError) -> [UInt8] {
        do {
            return try decompressor.withDecompressed(frame, maxSize: RecordCodec.maxPayloadBytes) { stored in
                shuffled ? try ByteShuffle.unshuffle(stored) : Array(stored)
            }
        } catch let e as ZstdError {
            throw CacheError(e.kind == .checksumMismatch ? .checksumMismatch : .corruptRecord, e.description, at: location)
        } catch let e as FormatError {
            throw CacheError(e, at: location)
        } catch {
            throw CacheError(.corruptRecord, "\(error)", at: location)
        }
    }

    /// Record `index`, decompressed (checksum verified) and schema-checked.
    public func record(at index: Int) throws -> TokenRecord {
        let (s, local) = try locate(index)
        let shard = shards[s]
        let shuffled = manifest.compression.shuffle == Manifest.byteShuffle
        let location = CacheLocation(shard: shard.file, chunk: local / shard.recordsPerChunk, index: index)
        return try shard.withFrame(local: local, globalIndex: index) { frame in
            try decompressors.withDecompressor { d in
                do {
                    return try d.withDecompressed(frame, maxSize: RecordCodec.maxPayloadBytes) { stored in
                        try RecordCodec.decode(stored, shuffled: shuffled)
                    }
                } catch let e as ZstdError {
                    throw CacheError(e.kind == .checksumMismatch ? .checksumMismatch : .corruptRecord, e.description, at: location)
                } catch let e as FormatError {
                    throw CacheError(e, at: location)
                }
            }
        }
    }

    /// Global index of (id, view), or nil if the cache does not hold it.
    public func index(of id: String, view: Int = 0) throws -> Int? {
        for (s, shard) in shards.enumerated() {
            if let local = try shard.localIndex(id: id, view: view) { return bounds[s] + local }
        }
        return nil
    }

    /// The record of (id, view), or nil if the cache does not hold it.
    ///
    /// - Throws: `CacheError.idIndexMismatch` when the id index points at a record of another
    ///   (id, view) (a damaged or forged index): never another image's record.
    public func record(id: String, view: Int = 0) throws -> TokenRecord? {
        guard let i = try index(of: id, view: view) else { return nil }
        let r = try record(at: i)
        try Self.checkLookup(r, id: id, view: view, index: i)
        return r
    }

    /// A read by id returns only the record that names that id and view itself.
    public static func checkLookup(_ r: TokenRecord, id: String, view: Int, index: Int) throws {
        guard r.id == id, r.view == view else {
            throw CacheError(.idIndexMismatch, "the id index points at record \(index), which is (\(r.id), view \(r.view))",
                             at: CacheLocation(index: index, id: id, view: view))
        }
    }

    /// Visits every record in index order.
    public func forEach(_ body: (Int, TokenRecord) throws -> Void) throws {
        for i in 0..<count { try body(i, try record(at: i)) }
    }
}

/// zstd decompression contexts are single-threaded; readers on several threads borrow one each.
final class DecompressorPool: @unchecked Sendable {  // `free` is only touched under `lock`
    private let lock = NSLock()
    private var free: [ZstdDecompressor] = []

    func withDecompressor<T>(_ body: (ZstdDecompressor) throws -> T) rethrows -> T {
        lock.lock()
        let d = free.popLast() ?? ZstdDecompressor()
        lock.unlock()
        defer {
            lock.lock()
            free.append(d)
            lock.unlock()
        }
        return try body(d)
    }
}
