import TensorFiles

/// Key and value layouts inside a shard (Schemas/FORMAT.md, "Shard").
///
/// A shard is a single-file LMDB environment with four named databases:
/// - `records`: key = chunk number (8-byte big-endian), value = a chunk of up to
///   `recordsPerChunk` zstd frames (see `Chunk`). Packing several records per value keeps
///   LMDB's overflow-page slack (up to 4 KiB per value) small relative to the data.
/// - `ids`: key = UTF-8 id, a 0x00 byte, view as 2-byte big-endian; value = local record
///   number (4-byte little-endian).
/// - `digests`: key = chunk number; value = the SHA-256 of each record's payload, 32 bytes each.
/// - `meta`: ASCII keys and values: `format`, `records_per_chunk`, `count`.
public enum ShardLayout {
    public static let shardFormat = "mtok.shard/1"
    public static let recordsDatabase = "records"
    public static let idsDatabase = "ids"
    public static let digestsDatabase = "digests"
    public static let metaDatabase = "meta"
    /// LMDB's default maximum key size is 511 bytes; 3 bytes go to the separator and the view.
    public static let maxIdBytes = 508

    public static func chunkKey(_ chunk: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt64(chunk).bigEndian) { Array($0) }
    }

    public static func chunkNumber(fromKey key: UnsafeRawBufferPointer) -> Int? {
        guard key.count == 8 else { return nil }
        return Int(UInt64(bigEndian: key.loadUnaligned(as: UInt64.self)))
    }

    /// The `ids` key of (id, view). Ids must be valid non-empty UTF-8 without NUL, at most
    /// `maxIdBytes` bytes; views fit in 16 bits.
    public static func idKey(id: String, view: Int) throws(FormatError) -> [UInt8] {
        let bytes = Array(id.utf8)
        guard !bytes.isEmpty, bytes.count <= maxIdBytes, !bytes.contains(0) else {
            throw FormatError(.badMetadata, "id must be 1...\(maxIdBytes) UTF-8 bytes without NUL: \(JSONValue.quoted(String(id.prefix(80))))")
        }
        guard RecordCodec.viewRange.contains(view) else { throw FormatError(.badMetadata, "view \(view) out of range") }
        return bytes + [0, UInt8(view >> 8), UInt8(view & 0xFF)]
    }

    /// Splits an `ids` key back into (id, view).
    public static func parseIdKey(_ key: UnsafeRawBufferPointer) -> (id: String, view: Int)? {
        guard key.count >= 4, key[key.count - 3] == 0 else { return nil }
        let id = String(decoding: UnsafeRawBufferPointer(rebasing: key[0..<(key.count - 3)]), as: UTF8.self)
        return (id, Int(key[key.count - 2]) << 8 | Int(key[key.count - 1]))
    }

    public static func localIndexValue(_ n: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt32(n).littleEndian) { Array($0) }
    }

    public static func localIndex(fromValue value: UnsafeRawBufferPointer) -> Int? {
        guard value.count == 4 else { return nil }
        return Int(UInt32(littleEndian: value.loadUnaligned(as: UInt32.self)))
    }
}

/// A packed group of compressed records: `u32 count`, `u32 offsets[count + 1]` (little-endian,
/// relative to the first frame; offsets[0] = 0, non-decreasing, offsets[count] = frames length),
/// then the frames back to back.
public enum Chunk {
    /// Bytes of the chunk holding `frames`.
    public static func packedSize(_ frames: [[UInt8]]) -> Int {
        4 * (frames.count + 2) + frames.reduce(0) { $0 + $1.count }
    }

    /// Writes the chunk holding `frames` into `out`, which must be `packedSize(frames)` bytes.
    public static func pack(_ frames: [[UInt8]], into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count == packedSize(frames))
        out.storeBytes(of: UInt32(frames.count).littleEndian, as: UInt32.self)
        out.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        var offset = 0
        var at = 4 * (frames.count + 2)
        for (i, f) in frames.enumerated() {
            f.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[at..<(at + $0.count)]).copyMemory(from: $0) }
            at += f.count
            offset += f.count
            out.storeBytes(of: UInt32(offset).littleEndian, toByteOffset: 4 * (i + 2), as: UInt32.self)
        }
    }

    /// Number of frames in a chunk, checked against the chunk's size.
    public static func count(_ chunk: UnsafeRawBufferPointer) throws(FormatError) -> Int {
        guard chunk.count >= 8 else { throw FormatError(.badContainer, "chunk of \(chunk.count) bytes is too short") }
        let n = Int(UInt32(littleEndian: chunk.loadUnaligned(as: UInt32.self)))
        guard n > 0, 4 * (n + 2) <= chunk.count else { throw FormatError(.badContainer, "chunk claims \(n) records in \(chunk.count) bytes") }
        return n
    }

    /// The bytes of frame `slot`, bounds-checked.
    /// `recordsPerChunk`: the shard's R, when known: a chunk never holds more.
    public static func frame(_ chunk: UnsafeRawBufferPointer, slot: Int, recordsPerChunk: Int = .max) throws(FormatError) -> UnsafeRawBufferPointer {
        let n = try count(chunk)
        guard n <= recordsPerChunk else { throw FormatError(.badContainer, "chunk claims \(n) records, more than records_per_chunk \(recordsPerChunk)") }
        guard slot >= 0, slot < n else { throw FormatError(.badContainer, "slot \(slot) not in a chunk of \(n)") }
        let base = 4 * (n + 2)
        func offset(_ i: Int) -> Int { Int(UInt32(littleEndian: chunk.loadUnaligned(fromByteOffset: 4 * (1 + i), as: UInt32.self))) }
        // The whole table, as FORMAT.md 3.2 states it (as the Python reader checks it): every
        // record of a chunk whose table is damaged is refused, not only some.
        var previous = offset(0)
        guard previous == 0, offset(n) == chunk.count - base else {
            throw FormatError(.badContainer, "chunk offsets \(offset(0))...\(offset(n)) do not span its \(chunk.count - base) frame bytes")
        }
        for i in 1...n {
            let next = offset(i)
            guard next >= previous else { throw FormatError(.badContainer, "chunk offsets decrease at frame \(i)") }
            previous = next
        }
        return UnsafeRawBufferPointer(rebasing: chunk[(base + offset(slot))..<(base + offset(slot + 1))])
    }
}
