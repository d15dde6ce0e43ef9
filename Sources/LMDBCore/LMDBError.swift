internal import CLMDB

/// An error returned by a liblmdb call: the C function, its return code, and LMDB's message.
public struct LMDBError: Error, CustomStringConvertible, Sendable, Equatable {
    public let code: Int32
    public let function: String

    /// `MDB_MAP_FULL`: the environment's map size is reached; grow it and retry the transaction.
    public static let mapFullCode: Int32 = -30792
    /// `MDB_KEYEXIST`: `MDB_NOOVERWRITE` found the key.
    public static let keyExistsCode: Int32 = -30799

    /// `MDB_CORRUPTED`: also what a value that runs past the end of its file raises (`MapBounds`).
    public static let corruptedCode: Int32 = -30796

    public var isMapFull: Bool { code == Self.mapFullCode }
    public var isKeyExists: Bool { code == Self.keyExistsCode }
    public var isCorrupted: Bool { code == Self.corruptedCode }

    /// What went wrong, when LMDB's own message for `code` would not say it.
    let detail: String?

    init(code: Int32, function: String, detail: String? = nil) {
        self.code = code
        self.function = function
        self.detail = detail
    }

    public var message: String { detail ?? String(cString: mdb_strerror(code)) }
    public var description: String { "\(function): \(message) (\(code))" }
}

/// The single place where LMDB return codes become Swift errors.
@inline(__always)
func check(_ rc: Int32, _ function: String) throws(LMDBError) {
    if rc != 0 { throw LMDBError(code: rc, function: function) }
}
