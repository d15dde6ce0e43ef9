import Foundation
#if canImport(Glibc)
import Glibc
#endif
public import TensorFiles

/// `manifest.json` at the cache root (Schemas/manifest.schema.json).
///
/// The manifest is the table of contents: shards in global index order with their record
/// counts, sizes and (once sealed) SHA-256; the settings the cache was made with; totals; and,
/// once complete, the content digest. It is replaced atomically after every commit.
public struct Manifest: Codable, Sendable, Equatable {
    public static let formatName = "mtok.cache"
    public static let currentVersion = 1
    public static let fileName = "manifest.json"
    public static let byteShuffle = "byte-planes"

    public var format: String = Manifest.formatName
    public var formatVersion: Int = Manifest.currentVersion
    public var createdBy: String
    /// True once the writer finished: every shard sealed and `contentDigest` set.
    public var complete: Bool = false
    public var recordsPerChunk: Int
    public var compression: Compression
    public var shardCapBytes: Int
    /// What produced the records: model, preprocessing, views, latent dtype. A writer resuming a
    /// cache refuses different settings.
    public var settings: JSONValue
    /// Class names by label, when the dataset has labels.
    public var classes: [String]?
    /// For one rank's part of a scaled-out run: which part this is.
    public var part: Part?
    public var shards: [Shard] = []
    public var totals: Totals = Totals()
    /// "sha256:" + hex SHA-256 over the concatenated SHA-256 digests of every record's
    /// uncompressed payload, in global index order. Independent of sharding and compression.
    public var contentDigest: String?
    /// Inputs the writing program had fully processed at the last commit (its resume point).
    public var inputsDone: Int?
    /// Which arithmetic computed which records: consecutive runs of records in global index
    /// order, one per writing session (a run, a resume, a rank of a scaled-out run). Absent when
    /// the writer did not say (synthetic records, the Python writer).
    public var arithmetic: [ArithmeticSegment]?

    enum CodingKeys: String, CodingKey {
        case format, formatVersion = "format_version", createdBy = "created_by", complete
        case recordsPerChunk = "records_per_chunk", compression, shardCapBytes = "shard_cap_bytes", settings, classes
        case part, shards, totals, contentDigest = "content_digest", inputsDone = "inputs_done", arithmetic
    }

    /// What decides the last bits of computed records: the encoder's arithmetic revision and the
    /// BLAS build and kernel set that ran its products. Records made by two different ones are
    /// close but not bit-identical.
    public struct Arithmetic: Codable, Sendable, Hashable, CustomStringConvertible {
        /// The encoder's arithmetic revision (also in the settings, where a resume must match it).
        public var revision: Int
        /// The BLAS library and version, e.g. "OpenBLAS 0.3.21".
        public var blas: String
        /// The kernel set the BLAS picked for the CPU (OpenBLAS's core name, e.g. "Haswell").
        public var kernel: String
        public init(revision: Int, blas: String, kernel: String) {
            self.revision = revision
            self.blas = blas
            self.kernel = kernel
        }
        public var description: String { "\(blas) \(kernel) kernels, encoder arithmetic \(revision)" }
    }

    /// Records `firstRecord ..< firstRecord + records` and the arithmetic that computed them.
    public struct ArithmeticSegment: Codable, Sendable, Equatable {
        public var firstRecord: Int
        public var records: Int
        /// The rank whose part these records were, in a merged scaled-out run.
        public var rank: Int?
        /// nil: not recorded (records written before this cache's writers recorded it).
        public var madeBy: Arithmetic?
        enum CodingKeys: String, CodingKey { case firstRecord = "first_record", records, rank, madeBy = "made_by" }
        public init(firstRecord: Int, records: Int, rank: Int? = nil, madeBy: Arithmetic?) {
            self.firstRecord = firstRecord
            self.records = records
            self.rank = rank
            self.madeBy = madeBy
        }
    }

    public struct Compression: Codable, Sendable, Equatable {
        public var codec: String = "zstd"
        public var level: Int
        public var checksum: Bool = true
        /// "byte-planes" (`ByteShuffle`) or "none": the transform between payload and frame.
        public var shuffle: String = Manifest.byteShuffle
        /// How the writer coded zstd's literals: "huffman" (zstd's default) or "raw". Readers
        /// need not know (a frame decodes the same either way); a resumed writer keeps it, so a
        /// resumed cache has the bytes of an uninterrupted one. Absent in caches of early writers.
        public var literals: String?
        public init(level: Int, shuffle: Bool = true, compressLiterals: Bool = true) {
            self.level = level
            self.shuffle = shuffle ? Manifest.byteShuffle : "none"
            self.literals = compressLiterals ? "huffman" : "raw"
        }
    }

    public struct Part: Codable, Sendable, Equatable {
        public var rank: Int
        public var worldSize: Int
        enum CodingKeys: String, CodingKey { case rank, worldSize = "world_size" }
        public init(rank: Int, worldSize: Int) {
            self.rank = rank
            self.worldSize = worldSize
        }
    }

    public struct Shard: Codable, Sendable, Equatable {
        /// Path relative to the cache root.
        public var file: String
        public var records: Int
        public var payloadBytes: Int
        public var compressedBytes: Int
        /// File size; exact once sealed.
        public var bytes: Int
        public var sealed: Bool
        /// Hex SHA-256 of the sealed file.
        public var sha256: String?

        enum CodingKeys: String, CodingKey {
            case file, records, payloadBytes = "payload_bytes", compressedBytes = "compressed_bytes", bytes, sealed, sha256
        }

        public init(file: String, records: Int = 0, payloadBytes: Int = 0, compressedBytes: Int = 0,
                    bytes: Int = 0, sealed: Bool = false, sha256: String? = nil) {
            self.file = file
            self.records = records
            self.payloadBytes = payloadBytes
            self.compressedBytes = compressedBytes
            self.bytes = bytes
            self.sealed = sealed
            self.sha256 = sha256
        }
    }

    public struct Totals: Codable, Sendable, Equatable {
        public var records: Int = 0
        public var payloadBytes: Int = 0
        public var compressedBytes: Int = 0
        public var bytesOnDisk: Int = 0
        public init() {}
        enum CodingKeys: String, CodingKey {
            case records, payloadBytes = "payload_bytes", compressedBytes = "compressed_bytes", bytesOnDisk = "bytes_on_disk"
        }
    }

    public init(createdBy: String, recordsPerChunk: Int, compressionLevel: Int, shuffle: Bool = true,
                compressLiterals: Bool = true, shardCapBytes: Int, settings: JSONValue, classes: [String]? = nil,
                part: Part? = nil) {
        self.createdBy = createdBy
        self.recordsPerChunk = recordsPerChunk
        self.compression = Compression(level: compressionLevel, shuffle: shuffle, compressLiterals: compressLiterals)
        self.shardCapBytes = shardCapBytes
        self.settings = settings
        self.classes = classes
        self.part = part
    }

    /// Where `decode` hands `init(from:)` the settings it has parsed already.
    static let settingsKey = CodingUserInfoKey(rawValue: "mtok.manifest.settings")!

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.decode(String.self, forKey: .format)
        formatVersion = try c.decode(Int.self, forKey: .formatVersion)
        createdBy = try c.decode(String.self, forKey: .createdBy)
        complete = try c.decode(Bool.self, forKey: .complete)
        recordsPerChunk = try c.decode(Int.self, forKey: .recordsPerChunk)
        compression = try c.decode(Compression.self, forKey: .compression)
        shardCapBytes = try c.decode(Int.self, forKey: .shardCapBytes)
        if let parsed = decoder.userInfo[Self.settingsKey] as? JSONValue, c.contains(.settings) {
            settings = parsed
        } else {
            settings = try c.decode(JSONValue.self, forKey: .settings)
        }
        classes = try c.decodeIfPresent([String].self, forKey: .classes)
        part = try c.decodeIfPresent(Part.self, forKey: .part)
        shards = try c.decode([Shard].self, forKey: .shards)
        totals = try c.decode(Totals.self, forKey: .totals)
        contentDigest = try c.decodeIfPresent(String.self, forKey: .contentDigest)
        inputsDone = try c.decodeIfPresent(Int.self, forKey: .inputsDone)
        arithmetic = try c.decodeIfPresent([ArithmeticSegment].self, forKey: .arithmetic)
    }

    /// Recomputes `totals` from `shards`, and runs the last arithmetic segment to the last record:
    /// the session that wrote the last segment is the only one that can have committed records
    /// after it began (a writer records its segment before its first commit).
    public mutating func updateTotals() {
        totals.records = shards.reduce(0) { $0 + $1.records }
        totals.payloadBytes = shards.reduce(0) { $0 + $1.payloadBytes }
        totals.compressedBytes = shards.reduce(0) { $0 + $1.compressedBytes }
        totals.bytesOnDisk = shards.reduce(0) { $0 + $1.bytes }
        if let last = arithmetic?.indices.last {
            let (left, overflow) = totals.records.subtractingReportingOverflow(arithmetic![last].firstRecord)
            arithmetic![last].records = overflow ? 0 : max(0, left)
        }
    }

    /// The arithmetics that made the records, in order of first use, with how many records
    /// each made; nil for records whose arithmetic was not recorded. Empty when none was.
    public var arithmeticUse: [(madeBy: Arithmetic?, records: Int)] {
        var out: [(madeBy: Arithmetic?, records: Int)] = []
        for s in arithmetic ?? [] where s.records > 0 {
            if let i = out.firstIndex(where: { $0.madeBy == s.madeBy }) {
                let (sum, overflow) = out[i].records.addingReportingOverflow(s.records)
                out[i].records = overflow ? .max : sum  // only a forged manifest gets here
            } else {
                out.append((s.madeBy, s.records))
            }
        }
        return out
    }

    /// Why the arithmetic segments do not describe the records, or nil when they do (or are
    /// absent): they must run back to back from record 0 to the last record.
    public var arithmeticProblem: String? {
        guard let segments = arithmetic else { return nil }
        var next = 0
        for (i, s) in segments.enumerated() {
            let (end, overflow) = next.addingReportingOverflow(s.records)
            guard s.firstRecord == next, s.records >= 0, !overflow else {
                return "arithmetic[\(i)] covers \(s.records) records from \(s.firstRecord), expected a count from \(next)"
            }
            next = end
        }
        return next == totals.records ? nil : "arithmetic segments cover \(next) records, the cache holds \(totals.records)"
    }

    /// Global index of each shard's first record.
    public var firstIndices: [Int] {
        var out: [Int] = []
        var n = 0
        for s in shards {
            out.append(n)
            n += s.records
        }
        return out
    }
}

extension Manifest {
    static func makeEncoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return e
    }

    public func encoded() throws -> Data {
        var data = try Self.makeEncoder().encode(self)
        data.append(0x0A)
        return data
    }

    /// Parses and checks a manifest: format name and version first, so an unknown version is
    /// reported as such rather than as a missing field.
    public static func decode(_ data: Data) throws(FormatError) -> Manifest {
        let header: JSONValue
        do {
            header = try JSONValue.parse(Array(data))
        } catch {
            throw FormatError(.badContainer, "manifest is not JSON: \(error)")
        }
        guard header["format"]?.stringValue == formatName else {
            throw FormatError(.badContainer, "manifest format is not \(formatName)")
        }
        guard let field = header["format_version"] else {
            throw FormatError(.unknownVersion, "manifest has no format_version")
        }
        guard let version = field.intValue else {
            throw FormatError(.unknownVersion, "format_version must be an integer, got \(field.jsonText)")
        }
        guard version == currentVersion else {
            throw FormatError(.unknownVersion, "cache format version \(version), this build reads \(currentVersion)")
        }
        let d = JSONDecoder()
        // The settings are already parsed (header): decoding them again through Codable costs
        // about 20 µs a value, minutes for a manifest with large settings.
        if let settings = header["settings"] { d.userInfo[settingsKey] = settings }
        let m: Manifest
        do {
            m = try d.decode(Manifest.self, from: data)
        } catch {
            throw FormatError(.badContainer, "manifest: \(error)")
        }
        guard m.compression.codec == "zstd", [byteShuffle, "none"].contains(m.compression.shuffle) else {
            throw FormatError(.unknownVersion, "compression \(m.compression.codec)/\(m.compression.shuffle) is not known to this build")
        }
        guard m.recordsPerChunk > 0, m.recordsPerChunk <= 65536 else {
            throw FormatError(.badValue, "records_per_chunk \(m.recordsPerChunk) out of range")
        }
        for s in m.shards where s.records < 0 || s.file.contains("..") || s.file.hasPrefix("/") {
            throw FormatError(.badValue, "shard entry \(s.file) is invalid")
        }
        // The same file under two spellings ("shards/x", "./shards//x") is still one file.
        var files = Set<String>()
        for s in m.shards where !files.insert(s.file.split(separator: "/").filter { $0 != "." }.joined(separator: "/")).inserted {
            throw FormatError(.badValue, "shard \(s.file) is listed twice")
        }
        // FORMAT.md 2: a complete cache has every shard sealed and its content digest set.
        if m.complete {
            if m.contentDigest == nil { throw FormatError(.badValue, "complete, but no content_digest") }
            if let open = m.shards.first(where: { !$0.sealed || $0.sha256 == nil }) {
                throw FormatError(.badValue, "complete, but shard \(open.file) is not sealed")
            }
        }
        return m
    }

    /// Writes the manifest atomically: a temporary file, fsync, rename, fsync of the directory.
    public func write(toCache root: String) throws {
        let data = try encoded()
        try AtomicFile.write(data, to: root + "/" + Self.fileName)
    }

    /// Largest manifest read: about 4 KB a shard, so a billion-record cache of 1 GiB shards
    /// stays far below it; anything larger is no manifest this build wrote.
    public static let maximumBytes = 1 << 30

    /// Reads and decodes `root/manifest.json`, which must be a regular file (a FIFO would block
    /// the reader, a link to a device would feed it without end) of at most ``maximumBytes``.
    public static func read(fromCache root: String) throws -> Manifest {
        let path = root + "/" + fileName
        var st = stat()
        if stat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFREG else {
                throw FormatError(.badContainer, "\(fileName) is not a regular file")
            }
            guard st.st_size <= maximumBytes else {
                throw FormatError(.badValue, "\(fileName) is \(st.st_size) bytes, more than the \(maximumBytes >> 20) MiB a manifest may be")
            }
        }
        return try decode(try Data(contentsOf: URL(fileURLWithPath: path)))  // absent: the file error says so
    }
}
