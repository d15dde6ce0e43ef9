import Crypto
import Foundation
internal import LMDBCore
import ShardFormat
internal import ZstdCore

/// One shard opened read-only (no lock file, no readahead), with its named databases.
///
/// Thread-safe: every call runs in its own short read transaction.
package final class Shard: Sendable {
    package let file: String
    let env: LMDBEnvironment
    let records: LMDBDatabase
    let ids: LMDBDatabase
    let digests: LMDBDatabase
    let recordsPerChunk: Int
    package let count: Int
    /// Sealed: no writer will touch the file again, so its map never changes under a reader.
    let sealed: Bool

    /// - Parameter shuffle: the manifest's `compression.shuffle`; a shard that records its own
    ///   (`meta.shuffle`, written since it was added) must agree, so an edited manifest cannot
    ///   make every record decode to other values.
    package init(root: String, entry: Manifest.Shard, recordsPerChunk: Int, shuffle: String? = nil) throws(CacheError) {
        file = entry.file
        let path = root + "/" + entry.file
        let fileSize = try Self.fileSize(path, at: CacheLocation(shard: entry.file))
        // LMDB's own error for a file too short to hold its two meta pages is "Bad file
        // descriptor"; say what is wrong instead.
        guard fileSize >= 2 * 4096 else {
            throw CacheError(.shardMismatch, "file is truncated: \(fileSize) bytes, too short for an LMDB file", at: CacheLocation(shard: entry.file))
        }
        do {
            env = try LMDBEnvironment(path: path, options: .readOnly)
            // A truncated file still opens (its meta pages come first), but touching a mapped page
            // past its end would kill the process with SIGBUS: refuse it here instead. The pages
            // needed are read before the size: a writer extends the file before it commits the
            // meta page naming the new pages, so a live shard never looks truncated. The size is
            // the open file's: the path may already name a compacted copy renamed over it.
            let needed = env.usedBytes
            let size = env.openFileSize ?? 0
            guard size >= needed else {
                throw CacheError(.shardMismatch, "file is truncated: \(size) bytes, its pages need \(needed)",
                                 at: CacheLocation(shard: entry.file))
            }
            let dbs = try env.openDatabases([ShardLayout.recordsDatabase, ShardLayout.idsDatabase,
                                             ShardLayout.digestsDatabase, ShardLayout.metaDatabase])
            guard let r = dbs[0], let i = dbs[1], let d = dbs[2], let m = dbs[3] else {
                throw CacheError(.shardMismatch, "not an mtok shard (named databases missing)", at: CacheLocation(shard: entry.file))
            }
            var meta: [String: String] = [:]
            try env.read { txn in
                try txn.forEach(m) { k, v in
                    meta[String(decoding: k, as: UTF8.self)] = String(decoding: v, as: UTF8.self)
                    return true
                }
            }
            guard meta["format"] == ShardLayout.shardFormat else {
                throw CacheError(.unknownVersion, "shard format \(meta["format"] ?? "none"), expected \(ShardLayout.shardFormat)",
                                 at: CacheLocation(shard: entry.file))
            }
            if let own = meta["shuffle"], let shuffle, own != shuffle {
                throw CacheError(.shardMismatch, "written with shuffle \(own), the manifest says \(shuffle)",
                                 at: CacheLocation(shard: entry.file))
            }
            guard let rpc = meta["records_per_chunk"].flatMap(Int.init), rpc == recordsPerChunk else {
                throw CacheError(.shardMismatch, "records_per_chunk \(meta["records_per_chunk"] ?? "none") differs from the manifest's \(recordsPerChunk)",
                                 at: CacheLocation(shard: entry.file))
            }
            // A shard being written commits each batch before the manifest is replaced, so its
            // count may run ahead of the manifest's by a batch: the manifest's count is what the
            // reader serves (FORMAT.md 6.2). Fewer records than listed is a fault either way.
            guard let n = meta["count"].flatMap(Int.init), n == entry.records || (!entry.sealed && n > entry.records) else {
                throw CacheError(.shardMismatch, "holds \(meta["count"] ?? "no count") records, manifest says \(entry.records)",
                                 at: CacheLocation(shard: entry.file))
            }
            records = r
            ids = i
            digests = d
            self.recordsPerChunk = rpc
            count = entry.records
            sealed = entry.sealed
            if meta["shuffle"] == nil, let shuffle { try checkShuffle(shuffle) }
        } catch let e as CacheError {
            throw e
        } catch {
            throw CacheError(.shardMismatch, "cannot open as LMDB: \(error)", at: CacheLocation(shard: entry.file))
        }
    }

    /// For a shard that does not record its shuffle setting (written before `meta.shuffle`
    /// existed, or with the key removed): record 0, read with the manifest's setting, must be
    /// the payload whose SHA-256 the shard stores. Otherwise a manifest edited to the other
    /// setting would make every record decode to other values with every checksum intact.
    private func checkShuffle(_ shuffle: String) throws {
        guard count > 0 else { return }
        let loc = CacheLocation(shard: file, chunk: 0, index: 0)
        let payload = try? withFrame(local: 0, globalIndex: 0) { frame in
            try TokenCache.payload(fromFrame: frame, decompressor: ZstdDecompressor(),
                                   shuffled: shuffle == Manifest.byteShuffle, at: loc)
        }
        // A record that does not decode at all is a damaged record, which reading it reports.
        guard let payload else { return }
        let stored = try env.read { txn in try txn.get(digests, key: ShardLayout.chunkKey(0)) { Array($0.prefix(32)) } }
        guard let stored, stored == Array(SHA256.hash(data: payload)) else {
            throw CacheError(.shardMismatch, "its first record does not read back as stored with shuffle \(shuffle): the manifest's shuffle setting is not the one this shard was written with",
                             at: CacheLocation(shard: file))
        }
    }

    /// The size of the shard file at `path`, following symbolic links (shards may be links to
    /// files on other disks); a missing, unreadable or non-regular file is refused, saying which.
    package static func fileSize(_ path: String, at location: CacheLocation) throws(CacheError) -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let reason = errno
            if reason == ENOENT {
                var link = stat()
                let dangling = lstat(path, &link) == 0
                throw CacheError(.missingShard, dangling ? "\(path) is a symbolic link to a file that does not exist" : "\(path) does not exist",
                                 at: location)
            }
            throw CacheError(.io, "cannot read \(path): \(String(cString: strerror(reason)))", at: location)
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw CacheError(.shardMismatch, "\(path) is \(st.st_mode & S_IFMT == S_IFDIR ? "a directory" : "not a regular file"), not a shard file",
                             at: location)
        }
        guard access(path, R_OK) == 0 else {
            throw CacheError(.io, "cannot read \(path): \(String(cString: strerror(errno)))", at: location)
        }
        return Int(st.st_size)
    }

    /// Passes the compressed frame of local record `local` to `body`, inside the read transaction.
    func withFrame<T>(local: Int, globalIndex: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        let chunk = local / recordsPerChunk
        let loc = CacheLocation(shard: file, chunk: chunk, index: globalIndex)
        let result: T?
        do {
            // ShardLayout.chunkKey, without an array per read.
            result = try withUnsafeBytes(of: UInt64(chunk).bigEndian) { key in try env.read { txn in
                try txn.get(records, key: key) { value in
                    let frame: UnsafeRawBufferPointer
                    do {
                        frame = try Chunk.frame(value, slot: local % recordsPerChunk, recordsPerChunk: recordsPerChunk)
                    } catch let error as FormatError {
                        throw CacheError(.corruptRecord, error.description, at: loc)
                    }
                    return try body(frame)
                }
            } }
        } catch let e as CacheError {
            throw e
        } catch let e as LMDBError where e.isCorrupted {
            throw CacheError(.corruptRecord, "\(e)", at: loc)
        } catch {
            throw CacheError(.io, "\(error)", at: loc)
        }
        guard let result else { throw CacheError(.corruptRecord, "chunk \(chunk) is missing", at: loc) }
        return result
    }

    /// Asks the kernel to read chunk `chunk` ahead (`LMDBEnvironment.willNeed`). Looking the
    /// chunk up touches only B-tree pages: LMDB finds a large value's address from its leaf node
    /// without reading the value's own pages.
    func willNeed(chunk: Int) {
        if let value = mappedChunk(chunk) { env.willNeed(value) }
    }

    /// The stored chunk `chunk` of a sealed shard, or nil when the shard is not sealed or has no
    /// such chunk. The bytes are LMDB's map of a file nobody writes, valid while this shard is
    /// open, so a reader may find many records' frames first and decode them after.
    func sealedChunk(_ chunk: Int) -> UnsafeRawBufferPointer? {
        sealed ? mappedChunk(chunk) : nil
    }

    /// Where chunk `chunk`'s value lies in the map (nil if there is none). The address outlives
    /// the read transaction: only a sealed shard's stays meaningful for reading.
    private func mappedChunk(_ chunk: Int) -> UnsafeRawBufferPointer? {
        try? withUnsafeBytes(of: UInt64(chunk).bigEndian) { key in try env.read { txn in
            try txn.get(records, key: key) { $0 }
        } } ?? nil
    }

    /// The layout of local record 0 (the reference every record of a cache must match), or nil
    /// when the shard is empty.
    package func firstRecordLayout(shuffled: Bool) throws -> RecordLayout? {
        guard count > 0 else { return nil }
        return try withFrame(local: 0, globalIndex: 0) { frame in
            try ZstdDecompressor().withDecompressed(frame, maxSize: RecordCodec.maxPayloadBytes) {
                try RecordCodec.check(stored: $0, shuffled: shuffled).layout
            }
        }
    }

    /// Local record number of (id, view), or nil.
    /// Unmaps the pages lookups have touched (`LMDBEnvironment.releaseMappedPages`): a writer
    /// checks every new id against each sealed shard, and over a long run those pages would
    /// otherwise keep growing its resident memory.
    package func releaseMappedPages() { env.releaseMappedPages() }

    package func localIndex(id: String, view: Int) throws -> Int? {
        let key: [UInt8]
        do { key = try ShardLayout.idKey(id: id, view: view) } catch { return nil }
        let local = try env.read { txn in
            try txn.get(ids, key: key) { value in ShardLayout.localIndex(fromValue: value) }
        } ?? nil
        // Records a live writer committed past the manifest's count are not served yet.
        guard let local, local < count else { return nil }
        return local
    }
}

extension Shard {
    /// Visits every `ids` key (see `ShardLayout.idKey`).
    package func forEachIdKey(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        try env.read { txn in
            try txn.forEach(ids) { key, _ in
                try body(key)
                return true
            }
        }
    }

    /// Visits the stored payload digests (32 bytes per record) in record order.
    package func forEachDigest(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        try env.read { txn in
            try txn.forEach(digests) { _, value in
                try body(value)
                return true
            }
        }
    }
}
