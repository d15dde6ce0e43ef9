import Foundation
@testable import LMDBCore
import TestSupport
import Testing

/// `releaseMappedPages` drops the pages a process has read through LMDB's map from its resident
/// memory, and reading goes on giving the same bytes.
struct MappedPagesTests {
    #if os(Linux)
    /// Resident kilobytes of the mapping that starts at `start`, from /proc/self/smaps.
    func residentKiB(at start: UInt) throws -> Int {
        // /proc files report size 0: read to the end rather than by size.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            // A mapping's header starts "start-end perms ..."; its fields follow ("Rss: N kB").
            if let dash = line.firstIndex(of: "-"), let s = UInt(line[..<dash], radix: 16) {
                inside = s == start
            } else if inside, line.hasPrefix("Rss:") {
                return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
            }
        }
        return -1
    }

    @Test func releasedPagesLeaveResidentMemoryAndReadBackTheSame() throws {
        let path = try TestSupport.temporaryDirectory() + "/env.mdb"
        let value = (0..<4000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        do {
            let env = try LMDBEnvironment(path: path, options: .init(readOnly: false, mapSize: 64 << 20))
            try env.write { txn in
                let db = try #require(try txn.openDatabase("data", create: true))
                for i in 0..<1000 { try txn.put(db, key: withUnsafeBytes(of: UInt32(i).bigEndian, Array.init), value: value) }
            }
        }
        let env = try LMDBEnvironment(path: path, options: .readOnly)
        let db = try #require(try env.openDatabases(["data"]).first ?? nil)
        func readAll() throws -> Bool {
            try env.read { txn in
                try (0..<1000).allSatisfy { i in
                    try txn.get(db, key: withUnsafeBytes(of: UInt32(i).bigEndian, Array.init)) { Array($0) } == value
                }
            }
        }
        #expect(try readAll())
        let (start, size) = try #require(LMDBEnvironment.findMapping(of: path))
        #expect(size >= 4 << 20)
        let before = try residentKiB(at: start)
        #expect(before > 2000, "the values read should be mapped: \(before) KiB")
        env.releaseMappedPages()
        let after = try residentKiB(at: start)
        #expect(after < 100, "still \(after) KiB resident after release")
        #expect(try readAll(), "the bytes changed after release")
    }

    /// Pages of `bytes` in the page cache (`mincore`).
    func residentPages(_ bytes: UnsafeRawBufferPointer) -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = UInt(bitPattern: bytes.baseAddress!) & ~UInt(page - 1)
        let length = Int(UInt(bitPattern: bytes.baseAddress!) + UInt(bytes.count) - start)
        var vector = [UInt8](repeating: 0, count: (length + page - 1) / page)
        guard mincore(UnsafeMutableRawPointer(bitPattern: start), length, &vector) == 0 else { return -1 }
        return vector.reduce(0) { $0 + Int($1 & 1) }
    }

    /// `willNeed` reads a value's pages into memory without the reader touching them. The file
    /// lives under .build (a disk, not a tmpfs whose pages can never leave memory) and is evicted
    /// from the page cache first (POSIX_FADV_DONTNEED drops clean, unmapped pages).
    @Test func willNeedReadsAColdValueIntoMemory() throws {
        let dir = TestSupport.packageRoot + "/.build/willneed-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/env.mdb"
        let value = (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
        let key = [UInt8]("v".utf8)
        do {
            let env = try LMDBEnvironment(path: path, options: .init(readOnly: false, mapSize: 64 << 20))
            try env.write { txn in
                let db = try #require(try txn.openDatabase("data", create: true))
                try txn.put(db, key: key, value: value)
            }
            try env.sync()
        }
        let fd = open(path, O_RDONLY)
        #expect(fd >= 0 && posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_DONTNEED)) == 0)
        close(fd)

        let env = try LMDBEnvironment(path: path, options: .readOnly)
        let db = try #require(try env.openDatabases(["data"]).first ?? nil)
        try env.read { txn in
            _ = try txn.get(db, key: key) { bytes in
                let pages = (bytes.count + 4095) / 4096
                let before = residentPages(bytes)
                #expect(before >= 0 && before < pages / 4, "the file was not evicted: \(before) of \(pages) pages in memory")
                env.willNeed(bytes)
                // The kernel reads asynchronously: wait for it (seconds at most on any disk).
                var now = residentPages(bytes)
                for _ in 0..<200 where now < pages {
                    usleep(50_000)
                    now = residentPages(bytes)
                }
                #expect(now >= pages, "\(now) of \(pages) pages in memory after willNeed")
                #expect(Array(bytes) == value)
            }
        }
    }
    #endif
}
