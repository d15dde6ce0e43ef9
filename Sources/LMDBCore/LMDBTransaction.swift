internal import CLMDB

/// A named database within an environment (an `MDB_dbi`).
public struct LMDBDatabase: Sendable, Hashable {
    let dbi: MDB_dbi
}

/// A transaction, valid only inside the closure that received it; never store it or pass it to
/// another thread. Byte buffers handed to callbacks point into the memory map and are valid only
/// during the callback.
public struct LMDBTransaction {
    let txn: OpaquePointer
    /// Where values may lie (read-only environments): see `MapBounds`.
    var bounds: MapBounds? = nil

    /// The bytes of an `MDB_val`, refused when they run past the end of the file.
    @inline(__always)
    func bytes(_ v: MDB_val, _ function: String) throws(LMDBError) -> UnsafeRawBufferPointer {
        let bytes = UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size)
        if let bounds, !bounds.contains(bytes) {
            throw LMDBError(code: LMDBError.corruptedCode, function: function,
                            detail: "a value of \(v.mv_size) bytes runs past the end of the file (a damaged or forged page)")
        }
        return bytes
    }

    /// Opens a named database (`mdb_dbi_open`), creating it when `create` is set (write txns only).
    /// Returns nil when it does not exist and `create` is false.
    public func openDatabase(_ name: String, create: Bool = false) throws(LMDBError) -> LMDBDatabase? {
        var dbi: MDB_dbi = 0
        let rc = mdb_dbi_open(txn, name, create ? UInt32(MDB_CREATE) : 0, &dbi)
        if rc == MDB_NOTFOUND { return nil }
        try check(rc, "mdb_dbi_open(\(name))")
        return LMDBDatabase(dbi: dbi)
    }

    /// Looks up `key` and passes the value's bytes (inside the map) to `body`; nil if absent.
    public func get<T>(_ db: LMDBDatabase, key: UnsafeRawBufferPointer,
                       _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        var k = MDB_val(mv_size: key.count, mv_data: UnsafeMutableRawPointer(mutating: key.baseAddress))
        var v = MDB_val()
        let rc = mdb_get(txn, db.dbi, &k, &v)
        if rc == MDB_NOTFOUND { return nil }
        try check(rc, "mdb_get")
        return try body(try bytes(v, "mdb_get"))
    }

    public func get<T>(_ db: LMDBDatabase, key: [UInt8], _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T? {
        try key.withUnsafeBytes { k in try get(db, key: k, body) }
    }

    /// Stores `value` under `key`. `append` uses `MDB_APPEND` (keys must arrive in sorted order);
    /// `noOverwrite` uses `MDB_NOOVERWRITE` and throws `LMDBError` with `isKeyExists` on a duplicate.
    public func put(_ db: LMDBDatabase, key: [UInt8], value: UnsafeRawBufferPointer,
                    append: Bool = false, noOverwrite: Bool = false) throws(LMDBError) {
        var flags: UInt32 = 0
        if append { flags |= UInt32(MDB_APPEND) }
        if noOverwrite { flags |= UInt32(MDB_NOOVERWRITE) }
        let rc: Int32 = key.withUnsafeBytes { k in
            var kv = MDB_val(mv_size: k.count, mv_data: UnsafeMutableRawPointer(mutating: k.baseAddress))
            var vv = MDB_val(mv_size: value.count, mv_data: UnsafeMutableRawPointer(mutating: value.baseAddress))
            return mdb_put(txn, db.dbi, &kv, &vv, flags)
        }
        try check(rc, "mdb_put")
    }

    public func put(_ db: LMDBDatabase, key: [UInt8], value: [UInt8],
                    append: Bool = false, noOverwrite: Bool = false) throws(LMDBError) {
        let result: Result<Void, LMDBError> = value.withUnsafeBytes { v in
            Result { () throws(LMDBError) in try put(db, key: key, value: v, append: append, noOverwrite: noOverwrite) }
        }
        try result.get()
    }

    /// Stores a value of `count` bytes under `key` that `fill` writes in place (`MDB_RESERVE`:
    /// LMDB hands out the space in its page, saving a copy of the value). `fill` must write all
    /// `count` bytes and must not touch the transaction.
    public func reserve(_ db: LMDBDatabase, key: [UInt8], count: Int,
                        _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws(LMDBError) {
        var vv = MDB_val(mv_size: count, mv_data: nil)
        let rc: Int32 = key.withUnsafeBytes { k in
            var kv = MDB_val(mv_size: k.count, mv_data: UnsafeMutableRawPointer(mutating: k.baseAddress))
            return mdb_put(txn, db.dbi, &kv, &vv, UInt32(MDB_RESERVE))
        }
        try check(rc, "mdb_put(MDB_RESERVE)")
        fill(UnsafeMutableRawBufferPointer(start: vv.mv_data, count: count))
    }

    /// Deletes `key`; returns false if it was absent.
    @discardableResult
    public func delete(_ db: LMDBDatabase, key: [UInt8]) throws(LMDBError) -> Bool {
        let rc: Int32 = key.withUnsafeBytes { k in
            var kv = MDB_val(mv_size: k.count, mv_data: UnsafeMutableRawPointer(mutating: k.baseAddress))
            return mdb_del(txn, db.dbi, &kv, nil)
        }
        if rc == MDB_NOTFOUND { return false }
        try check(rc, "mdb_del")
        return true
    }

    /// Number of entries in `db` (`mdb_stat`).
    public func count(_ db: LMDBDatabase) throws(LMDBError) -> Int {
        var st = MDB_stat()
        try check(mdb_stat(txn, db.dbi, &st), "mdb_stat")
        return st.ms_entries
    }

    /// Overflow pages used by `db` (values too large for a leaf page).
    public func overflowPages(_ db: LMDBDatabase) throws(LMDBError) -> Int {
        var st = MDB_stat()
        try check(mdb_stat(txn, db.dbi, &st), "mdb_stat")
        return st.ms_overflow_pages
    }

    /// Visits every entry of `db` in key order; `body` returns false to stop early.
    public func forEach(_ db: LMDBDatabase,
                        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool) throws {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, db.dbi, &cursor), "mdb_cursor_open")
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val()
        var v = MDB_val()
        var op = MDB_FIRST
        while true {
            let rc = mdb_cursor_get(cursor, &k, &v, op)
            if rc == MDB_NOTFOUND { return }
            try check(rc, "mdb_cursor_get")
            let goOn = try body(try bytes(k, "mdb_cursor_get"), try bytes(v, "mdb_cursor_get"))
            if !goOn { return }
            op = MDB_NEXT
        }
    }
}

/// Transactions are bound to the thread that began them.
@available(*, unavailable)
extension LMDBTransaction: Sendable {}
