public import ShardFormat

/// Where in a cache a fault was found. Every field that is known is filled.
public struct CacheLocation: Sendable, Equatable, CustomStringConvertible {
    public var shard: String?
    public var chunk: Int?
    public var index: Int?
    public var id: String?
    public var view: Int?

    public init(shard: String? = nil, chunk: Int? = nil, index: Int? = nil, id: String? = nil, view: Int? = nil) {
        self.shard = shard
        self.chunk = chunk
        self.index = index
        self.id = id
        self.view = view
    }

    public var description: String {
        var parts: [String] = []
        if let shard { parts.append("shard \(shard)") }
        if let chunk { parts.append("chunk \(chunk)") }
        if let index { parts.append("index \(index)") }
        if let id { parts.append("id \(id)" + (view.map { " view \($0)" } ?? "")) }
        return parts.joined(separator: ", ")
    }
}

/// An error reading, writing or verifying a cache, with the fault's location.
public struct CacheError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Sendable, Codable {
        case notACache = "not a cache"
        case unknownVersion = "unknown format version"
        case missingShard = "missing shard"
        case shardMismatch = "shard does not match the manifest"
        case corruptRecord = "corrupt record"
        case checksumMismatch = "checksum mismatch"
        case badRecord = "record does not follow the schema"
        case duplicateId = "duplicate id"
        case idIndexMismatch = "id index mismatch"
        case unknownId = "unknown id"
        case outOfRange = "index out of range"
        case settingsMismatch = "settings differ"
        case shapeMismatch = "records differ in shape"
        case io = "I/O error"
        case busy = "cache is being written"
        /// Not a fault: a writer (or a rank) has not finished yet; the same command resumes it.
        case unfinished = "not finished yet"
    }

    public let kind: Kind
    public let message: String
    public let location: CacheLocation

    public init(_ kind: Kind, _ message: String, at location: CacheLocation = CacheLocation()) {
        self.kind = kind
        self.message = message
        self.location = location
    }

    public var description: String {
        let loc = location.description
        return loc.isEmpty ? "\(kind.rawValue): \(message)" : "\(kind.rawValue) at \(loc): \(message)"
    }

    /// Maps a record-format error to a cache error at `location`.
    public init(_ error: FormatError, at location: CacheLocation) {
        switch error.kind {
        case .unknownVersion: self.init(.unknownVersion, error.description, at: location)
        default: self.init(.badRecord, error.description, at: location)
        }
    }
}
