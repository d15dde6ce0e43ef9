internal import CLMDB
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An LMDB environment: one memory-mapped file (always opened with `MDB_NOSUBDIR`).
///
/// Owns the `MDB_env` handle and closes it in `deinit`. Open each file once per process
/// (lmdb.h: "Do not have open an LMDB database twice in the same process at the same time").
/// Read transactions may run on several threads at once; write transactions must be serialized
/// by the caller (one writer per environment).
public final class LMDBEnvironment: @unchecked Sendable {  // MDB_env is thread-safe for read txns with MDB_NOTLS
    public struct Options: Sendable {
        /// `MDB_RDONLY | MDB_NOLOCK | MDB_NORDAHEAD`: no lock file, no reader table, so caches
        /// open on read-only and network file systems. The caller guarantees no concurrent writer.
        public static let readOnly = Options(readOnly: true, mapSize: 0)

        public var readOnly: Bool
        /// Virtual address space reserved for the map, in bytes (0 = the file's current size).
        public var mapSize: Int
        /// Write with `MDB_NOSYNC`: commits are not flushed; `sync()` must be called before the
        /// data is relied on. Used for bulk writes where the caller syncs at checkpoints.
        public var noSync: Bool = false
        public var maxDatabases: UInt32 = 4

        public init(readOnly: Bool, mapSize: Int, noSync: Bool = false) {
            self.readOnly = readOnly
            self.mapSize = mapSize
            self.noSync = noSync
        }
    }

    public let path: String
    let env: OpaquePointer
    /// Read transactions of a read-only environment, reset (`mdb_txn_reset`) and kept for reuse
    /// (`mdb_txn_renew`): a random read then costs no transaction allocation. `MDB_NOTLS` lets
    /// any thread renew one; each is used by one thread at a time.
    private let idleReaders = Mutex<[IdleTransaction]>([])
    private let reusesReaders: Bool

    public init(path: String, options: Options) throws(LMDBError) {
        self.path = path
        var handle: OpaquePointer?
        try check(mdb_env_create(&handle), "mdb_env_create")
        guard let handle else { throw LMDBError(code: -1, function: "mdb_env_create") }
        do {
            try check(mdb_env_set_maxdbs(handle, options.maxDatabases), "mdb_env_set_maxdbs")
            if options.mapSize > 0 {
                try check(mdb_env_set_mapsize(handle, options.mapSize), "mdb_env_set_mapsize")
            }
            var flags = UInt32(MDB_NOSUBDIR) | UInt32(MDB_NOTLS)
            if options.readOnly {
                flags |= UInt32(MDB_RDONLY) | UInt32(MDB_NOLOCK) | UInt32(MDB_NORDAHEAD)
            } else if options.noSync {
                flags |= UInt32(MDB_NOSYNC)
            }
            try check(mdb_env_open(handle, path, flags, options.readOnly ? 0o444 : 0o644), "mdb_env_open")
        } catch {
            mdb_env_close(handle)  // a half-built handle must not leak
            throw error
        }
        env = handle
        reusesReaders = options.readOnly
        if options.readOnly {
            var fd: mdb_filehandle_t = -1
            if mdb_env_get_fd(handle, &fd) == 0, fd >= 0 { bounds = MapBounds(path: path, fd: fd) }
        }
    }

    /// Checks every value a read transaction hands out (read-only environments only: a writer
    /// reads what it wrote itself).
    private var bounds: MapBounds?

    deinit {
        // lmdb.h: every transaction must end before the environment closes.
        idleReaders.withLock { for t in $0 { mdb_txn_abort(t.txn) } }
        mdb_env_close(env)
    }

    /// Grows (or sets) the map size. lmdb.h: may only be called when no transaction is active in
    /// this process.
    public func setMapSize(_ bytes: Int) throws(LMDBError) {
        try check(mdb_env_set_mapsize(env, bytes), "mdb_env_set_mapsize")
        mappedRange.withLock { $0 = (false, (0, 0)) }
    }

    public var mapSize: Int {
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        return info.me_mapsize
    }

    /// Bytes of the file in use: (last page number + 1) × page size.
    public var usedBytes: Int {
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        var st = MDB_stat()
        mdb_env_stat(env, &st)
        return (info.me_last_pgno + 1) * Int(st.ms_psize)
    }

    /// Size in bytes of the file this environment has open (not of whatever the path names now:
    /// a sealing writer may have renamed a compacted copy over it), or nil if unknown.
    public var openFileSize: Int? {
        var fd: mdb_filehandle_t = -1
        guard mdb_env_get_fd(env, &fd) == 0, fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return Int(st.st_size)
    }

    /// Drops this process's mappings of the file's pages (`madvise(MADV_DONTNEED)` over the map):
    /// the pages stay in the page cache and map back in on the next touch. LMDB maps the file
    /// read-only and shared here (no `MDB_WRITEMAP`), so nothing can be lost; a writer that reads
    /// B-tree pages through the map only to update them keeps its resident memory flat instead
    /// of growing with the file. LMDB does not say where its map is (`me_mapaddr` is set only
    /// with `MDB_FIXEDMAP`), so it is looked up in /proc/self/maps; elsewhere this does nothing.
    public func releaseMappedPages() {
        let (start, size) = mappedRange.withLock { state -> (UInt, Int) in
            if !state.looked { state = (true, Self.findMapping(of: path) ?? (0, 0)) }
            return state.range
        }
        guard size > 0, let address = UnsafeMutableRawPointer(bitPattern: start) else { return }
        _ = madvise(address, size, MADV_DONTNEED)
    }

    /// Asks the kernel to start reading the pages that hold `bytes` (a value inside this
    /// environment's map) now, all at once: `madvise(MADV_WILLNEED)`. Readers open the map with
    /// `MDB_NORDAHEAD` (right for random reads of caches bigger than memory), so a cold value of
    /// 25 pages is otherwise read one page fault, and one disk or network round trip, at a time.
    /// Pages already in memory cost a lookup each. Advice only: nothing fails if it is ignored.
    public func willNeed(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let start = UInt(bitPattern: base) & ~(Self.systemPageSize - 1)
        let end = UInt(bitPattern: base) + UInt(bytes.count)
        _ = madvise(UnsafeMutableRawPointer(bitPattern: start), Int(end - start), MADV_WILLNEED)
    }

    private static let systemPageSize = UInt(max(4096, sysconf(Int32(_SC_PAGESIZE))))

    /// Where this file is mapped (address, bytes; 0 when not found), looked up once per map
    /// (`setMapSize` maps it anew).
    private let mappedRange = Mutex<(looked: Bool, range: (UInt, Int))>((false, (0, 0)))

    /// The address range of the mapping of `path` (the one holding `address` if given, else the
    /// largest), from /proc/self/maps.
    static func findMapping(of path: String, containing address: UInt? = nil) -> (UInt, Int)? {
        #if os(Linux)
        var st = stat()
        guard stat(path, &st) == 0, let maps = fopen("/proc/self/maps", "r") else { return nil }
        defer { fclose(maps) }
        var best: (UInt, Int)?
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), maps) != nil {
            // "start-end perms offset dev inode path": match by inode and device (paths may differ
            // by symbolic links).
            let text = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 5, let inode = UInt64(fields[4]), inode == UInt64(st.st_ino) else { continue }
            let dev = fields[3].split(separator: ":").compactMap { UInt32($0, radix: 16) }
            // glibc's encoding of dev_t (major/minor are macros Swift cannot import).
            let d = UInt64(st.st_dev)
            let major = UInt32(truncatingIfNeeded: ((d >> 8) & 0xfff) | ((d >> 32) & ~0xfff))
            let minor = UInt32(truncatingIfNeeded: (d & 0xff) | ((d >> 12) & ~0xff))
            guard dev.count == 2, dev[0] == major, dev[1] == minor else { continue }
            let bounds = fields[0].split(separator: "-").compactMap { UInt(String($0), radix: 16) }
            guard bounds.count == 2, bounds[1] > bounds[0] else { continue }
            let size = Int(bounds[1] - bounds[0])
            if let address {
                if address >= bounds[0] && address < bounds[1] { return (bounds[0], size) }
            } else if size > (best?.1 ?? 0) {
                best = (bounds[0], size)
            }
        }
        return best
        #else
        return nil
        #endif
    }

    /// Pages on LMDB's freelist: space a compacting copy would give back. Each freelist record
    /// (in the free database, handle 0) is an ID list whose first word is its page count.
    public func freePageCount() throws -> Int {
        try read { txn in
            var total = 0
            try txn.forEach(LMDBDatabase(dbi: 0)) { _, value in
                if value.count >= MemoryLayout<Int>.size { total += value.loadUnaligned(as: Int.self) }
                return true
            }
            return total
        }
    }

    /// The page size of the environment.
    public var pageSize: Int {
        var st = MDB_stat()
        mdb_env_stat(env, &st)
        return Int(st.ms_psize)
    }

    /// Flushes written data to disk (`mdb_env_sync` with force).
    public func sync() throws(LMDBError) {
        try check(mdb_env_sync(env, 1), "mdb_env_sync")
    }

    /// Writes a compacted copy (`mdb_env_copy2` with `MDB_CP_COMPACT`): free pages are omitted
    /// and the B-trees are rewritten in order.
    public func copyCompacted(to destination: String) throws(LMDBError) {
        try check(mdb_env_copy2(env, destination, UInt32(MDB_CP_COMPACT)), "mdb_env_copy2")
    }

    /// Opens named databases in a read-only transaction that is committed, so the handles stay
    /// valid for the environment's lifetime (lmdb.h: handles opened in an aborted transaction
    /// are closed with it). Returns nil for a name that does not exist.
    public func openDatabases(_ names: [String]) throws(LMDBError) -> [LMDBDatabase?] {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "mdb_txn_begin")
        let transaction = LMDBTransaction(txn: txn!)
        var out: [LMDBDatabase?] = []
        do {
            for name in names { out.append(try transaction.openDatabase(name)) }
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try check(mdb_txn_commit(txn), "mdb_txn_commit")
        return out
    }

    /// Runs `body` in a read-only transaction, which ends when `body` returns.
    public func read<T>(_ body: (LMDBTransaction) throws -> T) throws -> T {
        if reusesReaders {
            let reused = idleReaders.withLock { $0.popLast() }
            let txn: OpaquePointer
            if let reused {
                txn = reused.txn
                let rc = mdb_txn_renew(txn)
                if rc != 0 { mdb_txn_abort(txn) }
                try check(rc, "mdb_txn_renew")
            } else {
                var fresh: OpaquePointer?
                try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &fresh), "mdb_txn_begin")
                txn = fresh!
            }
            defer {
                mdb_txn_reset(txn)
                idleReaders.withLock { $0.append(IdleTransaction(txn: txn)) }
            }
            return try body(LMDBTransaction(txn: txn, bounds: bounds))
        }
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "mdb_txn_begin")
        let transaction = LMDBTransaction(txn: txn!, bounds: bounds)
        defer { mdb_txn_abort(txn) }
        return try body(transaction)
    }

    /// Runs `body` in a write transaction, committed when `body` returns and aborted when it throws.
    public func write<T>(_ body: (LMDBTransaction) throws -> T) throws -> T {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, 0, &txn), "mdb_txn_begin")
        let transaction = LMDBTransaction(txn: txn!)
        let result: T
        do {
            result = try body(transaction)
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try check(mdb_txn_commit(txn), "mdb_txn_commit")
        return result
    }
}

/// A reset read transaction waiting in `LMDBEnvironment.idleReaders`; owned by the pool while
/// there, so it may be handed to another thread (`MDB_NOTLS`).
struct IdleTransaction: @unchecked Sendable {
    let txn: OpaquePointer
}

/// The part of a read-only environment's map that the file backs. LMDB hands out a value as a
/// pointer into its map with the size its leaf node claims; a damaged or forged node can claim
/// more than the file holds, and touching a mapped page past the end of a file kills the process
/// with SIGBUS. So every value must lie inside [map start, map start + file size). The map's
/// address comes from /proc/self/maps (LMDB does not say it) on the first value that is not
/// already known to be inside; the file size is read again before refusing, since a live shard
/// grows while it is read. Where the map cannot be found (not Linux), values are not checked.
final class MapBounds: Sendable {
    private let path: String
    private let fd: Int32
    /// Map start (0 until looked up, 1 when not found) and end of the file-backed part.
    private let start = Atomic<UInt>(0)
    private let end = Atomic<UInt>(0)

    init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    @inline(__always)
    func contains(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        let lo = UInt(bitPattern: base)
        let (hi, overflow) = lo.addingReportingOverflow(UInt(bytes.count))
        if !overflow, lo >= start.load(ordering: .relaxed), hi <= end.load(ordering: .relaxed) { return true }
        return slowContains(lo, hi, overflow)
    }

    private func slowContains(_ lo: UInt, _ hi: UInt, _ overflow: Bool) -> Bool {
        if overflow { return false }
        if start.load(ordering: .acquiring) == 0 {
            // The mapping holding this value's first byte is this environment's map (the same
            // file may be mapped again by a writer in this process).
            let found = LMDBEnvironment.findMapping(of: path, containing: lo)
            start.store(found?.0 ?? 1, ordering: .releasing)
        }
        let s = start.load(ordering: .acquiring)
        if s == 1 { return true }  // map not found: nothing to check against
        var st = stat()
        guard fstat(fd, &st) == 0 else { return true }
        let e = s &+ UInt(st.st_size)
        end.store(e, ordering: .releasing)
        return lo >= s && hi <= e
    }
}
