/// A record or shard whose bytes do not follow Schemas/ (format v1).
public struct FormatError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Sendable {
        case unknownVersion = "unknown format version"
        case unknownDType = "unknown dtype"
        case badShape = "bad shape"
        case badMetadata = "bad metadata"
        case badValue = "bad value"
        case badContainer = "bad container"
    }

    public let kind: Kind
    public let reason: String

    public init(_ kind: Kind, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }

    public var description: String { "\(kind.rawValue): \(reason)" }
}
