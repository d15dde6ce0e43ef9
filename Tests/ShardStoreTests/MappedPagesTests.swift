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
    #endif
}
