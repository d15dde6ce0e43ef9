import Foundation
import LMDBCore
import ShardFormat
import ShardReader
import ShardWriter
import TestSupport
import Testing

/// Caches damaged in the ways real ones are: each fault must be found by verify, located, and
/// refused by the reader with a typed error — never a crash or silently wrong data.
struct CorruptionTests {
    let gen = synthetic()

    func freshCache(count: Int = 40, cap: Int = 40 << 10) throws -> (String, Manifest) {
        let dir = try TestSupport.temporaryDirectory()
        let m = try writeCache(dir, gen, count: count, batch: 13, options: smallOptions(cap: cap))
        #expect(CacheVerifier.verify(path: dir, deep: true).isClean)
        return (dir, m)
    }

    func patch(_ path: String, _ edit: (inout Data) -> Void) throws {
        chmod(path, 0o644)
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        edit(&data)
        try data.write(to: URL(fileURLWithPath: path))
    }

    @Test func flippedByteInARecordIsFoundLocatedAndRefused() throws {
        let (dir, m) = try freshCache()
        let file = m.shards[0].file
        try patch(dir + "/" + file) { data in
            // The third zstd frame in the file: flip a byte well inside it.
            let magic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]
            var found = 0
            var at = 0
            for i in 0..<(data.count - 4) where Array(data[i..<(i + 4)]) == magic {
                found += 1
                if found == 3 { at = i; break }
            }
            data[at + 60] ^= 0x5A
        }
        let fast = CacheVerifier.verify(path: dir, deep: false)
        #expect(fast.faults.contains { $0.kind == .checksumMismatch && $0.shard == file })
        let deep = CacheVerifier.verify(path: dir, deep: true)
        let recordFaults = deep.faults.filter { $0.index != nil }
        #expect(recordFaults.count == 1)
        let fault = try #require(recordFaults.first)
        #expect(fault.shard == file && fault.chunk != nil)
        #expect([.checksumMismatch, .corruptRecord].contains(fault.kind))
        let cache = try TokenCache(path: dir)
        do {
            _ = try cache.record(at: fault.index!)
            Issue.record("corrupt record \(fault.index!) was read")
        } catch let e as CacheError {
            #expect(e.location.shard == file && e.location.index == fault.index)
        }
        // Every other record still reads.
        for i in 0..<m.totals.records where i != fault.index! { #expect(try cache.record(at: i) == gen.record(i)) }
    }

    /// Shard files are hashed side by side; each damaged one is still named, in shard order,
    /// whatever the thread count.
    @Test(arguments: [1, 3, 8])
    func damagedShardFilesAreNamedInOrder(threads: Int) throws {
        let (dir, m) = try freshCache(count: 60, cap: 24 << 10)
        let sealed = m.shards.filter(\.sealed)
        try #require(sealed.count >= 4)
        let damaged = [sealed[1].file, sealed[3].file]
        for file in damaged {
            try patch(dir + "/" + file) { data in data[data.count - 100] ^= 0x01 }  // a free or unused byte
        }
        for deep in [false, true] {
            let report = CacheVerifier.verify(path: dir, deep: deep, threads: threads)
            let named = report.faults.filter { $0.kind == .checksumMismatch && $0.index == nil }.compactMap(\.shard)
            #expect(named == damaged, "deep \(deep), \(threads) threads: \(report.faults)")
        }
    }

    /// A leaf node that claims a chunk of 2 GiB, far past the end of the file (a forged or
    /// damaged page): every reader refuses that chunk with a located error instead of dying with
    /// SIGBUS when it touches the missing pages; the other chunks still read.
    @Test func valueRunningPastTheFileIsRefusedNotFatal() throws {
        let (dir, m) = try freshCache()
        let file = m.shards[0].file
        let path = dir + "/" + file
        let env = try LMDBEnvironment(path: path, options: .readOnly)
        let records = try #require(try env.openDatabases([ShardLayout.recordsDatabase])[0])
        let size = try #require(try env.read { txn in try txn.get(records, key: ShardLayout.chunkKey(1)) { $0.count } })
        // The node of chunk 1: data size (lo, hi 16-bit words), flags F_BIGDATA, key size 8, key.
        var pattern: [UInt8] = [UInt8(size & 0xFF), UInt8(size >> 8 & 0xFF), UInt8(size >> 16 & 0xFF), UInt8(size >> 24 & 0xFF),
                                0x01, 0x00, 0x08, 0x00]
        pattern += ShardLayout.chunkKey(1)
        var patched = 0
        try patch(path) { data in
            for i in 0..<(data.count - pattern.count) where data[i] == pattern[0] && Array(data[i..<(i + pattern.count)]) == pattern {
                data[i + 2] = 0xFF; data[i + 3] = 0x7F  // 2 GiB
                patched += 1
            }
        }
        #expect(patched == 1, "found the node of chunk 1 \(patched) times (value of \(size) bytes)")
        let cache = try TokenCache(path: dir)
        do {
            _ = try cache.record(at: 4)
            Issue.record("a 2 GiB value was read")
        } catch let e as CacheError {
            #expect(e.kind == .corruptRecord && e.location.chunk == 1 && e.message.contains("past the end of the file"), "\(e)")
        }
        #expect(try cache.record(at: 0) == gen.record(0))
        #expect(throws: CacheError.self) { _ = try cache.batch([0, 5]) }
        let deep = CacheVerifier.verify(path: dir, deep: true)
        #expect(deep.faults.contains { $0.shard == file && $0.message.contains("past the end") }, "\(deep.faults)")
        for command in [["get", dir, "--index", "5"], ["get", dir, gen.record(5).id], ["verify", dir, "--deep"], ["stream", dir]] {
            let r = try TestSupport.mtok(command)
            #expect(r.status == 1, "\(command): status \(r.status) (a signal is 128+): \(r.stderr)")
        }
        if let python = TestSupport.python {
            let script = """
                import sys; sys.path.insert(0, sys.argv[2])
                import mtokcache
                c = mtokcache.open(sys.argv[1])
                c[0]
                for read in (lambda: c[5], lambda: c.get(sys.argv[3]), lambda: c.batch([0, 5])):
                    try:
                        read()
                        print("read")
                    except mtokcache.CorruptRecordError as e:
                        print("refused" if "past the end of the file" in str(e) else "other: %s" % e)
                """
            let r = try TestSupport.run(python, ["-c", script, dir, TestSupport.packageRoot + "/tools/python", gen.record(5).id])
            #expect(r.status == 0 && r.stdout == "refused\nrefused\nrefused\n", "status \(r.status): \(r.stdout) \(r.stderr)")
        }
    }

    /// The same forged node written into a shard being written after the Python reader opened
    /// (and walked) it: the reader looks at a live shard's leaf node before asking py-lmdb for
    /// the value, so it refuses instead of dying inside py-lmdb.
    @Test func valueForgedIntoALiveShardIsRefusedInPython() throws {
        guard let python = TestSupport.python else { return }
        let (dir, _) = try freshCache()
        let path = dir + "/" + Manifest.fileName
        var m = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        m["shards"] = (m["shards"] as! [[String: Any]]).map { var e = $0; e["sealed"] = false; e["sha256"] = nil; return e }
        m["complete"] = false
        m["content_digest"] = NSNull()
        try JSONSerialization.data(withJSONObject: m).write(to: URL(fileURLWithPath: path))
        let script = """
            import os, struct, sys; sys.path.insert(0, sys.argv[2])
            import mtokcache
            c = mtokcache.open(sys.argv[1])
            c[0]  # opened and walked while the shard was sound
            shard = os.path.join(sys.argv[1], "shards", "shard-00000.mdb")
            data = bytearray(open(shard, "rb").read())
            size = len(c._open()[0].get(struct.pack(">Q", 1), "records"))
            at = data.find(struct.pack("<I", size) + b"\\x01\\x00\\x08\\x00" + struct.pack(">Q", 1))
            os.chmod(shard, 0o644)
            with open(shard, "r+b") as f:
                f.seek(at + 2); f.write(b"\\xff\\x7f")  # 2 GiB, in place
            try:
                c[5]; print("read")
            except mtokcache.CorruptRecordError as e:
                print("refused" if "past the end of the file" in str(e) else "other: %s" % e)
            """
        let r = try TestSupport.run(python, ["-c", script, dir, TestSupport.packageRoot + "/tools/python"])
        #expect(r.status == 0 && r.stdout == "refused\n", "status \(r.status): \(r.stdout) \(r.stderr)")
    }

    /// A shuffled cache whose shards lost their own `meta.shuffle` and whose manifest then says
    /// `shuffle: none`: refused in both languages instead of every record reading scrambled. With
    /// the manifest left alone, such shards (as early writers made them) still read.
    @Test func manifestShuffleThatShardsWereNotWrittenWithIsRefused() throws {
        let (dir, m) = try freshCache()
        for entry in m.shards {
            chmod(dir + "/" + entry.file, 0o644)
            let env = try LMDBEnvironment(path: dir + "/" + entry.file, options: .init(readOnly: false, mapSize: 64 << 20))
            try env.write { txn in
                let meta = try #require(try txn.openDatabase(ShardLayout.metaDatabase))
                #expect(try txn.delete(meta, key: Array("shuffle".utf8)))
            }
            try? FileManager.default.removeItem(atPath: dir + "/" + entry.file + "-lock")
        }
        #expect(try TokenCache(path: dir).record(at: 7) == gen.record(7), "without the key, the manifest's setting is used")
        let path = dir + "/" + Manifest.fileName
        var edited = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        var compression = edited["compression"] as! [String: Any]
        compression["shuffle"] = "none"
        edited["compression"] = compression
        try JSONSerialization.data(withJSONObject: edited).write(to: URL(fileURLWithPath: path))
        do {
            _ = try TokenCache(path: dir)
            Issue.record("a cache whose manifest names the other shuffle was opened")
        } catch {
            #expect(error.kind == .shardMismatch && error.message.contains("shuffle"), "\(error)")
        }
        #expect(CacheVerifier.verify(path: dir, deep: true).faults.contains { $0.message.contains("shuffle") })
        if let python = TestSupport.python {
            let script = """
                import sys; sys.path.insert(0, sys.argv[2])
                import mtokcache
                try:
                    print(mtokcache.open(sys.argv[1])[0]["id"])
                except mtokcache.ShardMismatchError as e:
                    print("refused" if "shuffle" in str(e) else "other: %s" % e)
                """
            let r = try TestSupport.run(python, ["-c", script, dir, TestSupport.packageRoot + "/tools/python"])
            #expect(r.stdout == "refused\n", "\(r.stdout) \(r.stderr)")
        }
    }

    /// An id index with two records' entries swapped: a read by id refuses instead of returning
    /// the other image's record (library, `mtok get` and Python), and deep verify locates it.
    @Test func swappedIdIndexNeverReturnsAnotherRecord() throws {
        let (dir, m) = try freshCache()
        let file = m.shards[0].file
        let (a, b) = (gen.record(2), gen.record(5))
        chmod(dir + "/" + file, 0o644)
        do {
            let env = try LMDBEnvironment(path: dir + "/" + file, options: .init(readOnly: false, mapSize: 64 << 20))
            try env.write { txn in
                let db = try #require(try txn.openDatabase(ShardLayout.idsDatabase))
                let (ka, kb) = (try ShardLayout.idKey(id: a.id, view: a.view), try ShardLayout.idKey(id: b.id, view: b.view))
                let va = try #require(try txn.get(db, key: ka) { Array($0) })
                let vb = try #require(try txn.get(db, key: kb) { Array($0) })
                try txn.put(db, key: ka, value: vb)
                try txn.put(db, key: kb, value: va)
            }
        }
        try? FileManager.default.removeItem(atPath: dir + "/" + file + "-lock")
        let cache = try TokenCache(path: dir)
        #expect(throws: CacheError.self) { _ = try cache.record(id: a.id, view: a.view) }
        do {
            _ = try cache.record(id: b.id, view: b.view)
        } catch let e as CacheError {
            #expect(e.kind == .idIndexMismatch && e.location.id == b.id, "\(e)")
        }
        #expect(try cache.record(id: gen.record(3).id) == gen.record(3))
        let get = try TestSupport.mtok(["get", dir, a.id])
        #expect(get.status == 1 && get.stderr.contains("id index points at record 5"), "\(get.stdout) \(get.stderr)")
        #expect(CacheVerifier.verify(path: dir, deep: true).faults.contains { $0.kind == .idIndexMismatch })
        if let python = TestSupport.python {
            let script = """
                import sys; sys.path.insert(0, sys.argv[2])
                import mtokcache
                try:
                    print(mtokcache.open(sys.argv[1]).get(sys.argv[3])["id"])
                except mtokcache.CorruptRecordError as e:
                    print("refused:", e)
                """
            let r = try TestSupport.run(python, ["-c", script, dir, TestSupport.packageRoot + "/tools/python", a.id])
            #expect(r.stdout.hasPrefix("refused:") && r.stdout.contains("points at record 5"), "\(r.stdout) \(r.stderr)")
        }
    }

    @Test func wrongStoredDigestIsFoundByRehash() throws {
        let (dir, m) = try freshCache()
        let file = m.shards[0].file
        chmod(dir + "/" + file, 0o644)
        do {
            let env = try LMDBEnvironment(path: dir + "/" + file, options: .init(readOnly: false, mapSize: 64 << 20))
            try env.write { txn in
                let db = try #require(try txn.openDatabase(ShardLayout.digestsDatabase))
                var value = try #require(try txn.get(db, key: ShardLayout.chunkKey(1)) { Array($0) })
                value[40] ^= 1  // second record of chunk 1
                try txn.put(db, key: ShardLayout.chunkKey(1), value: value)
            }
        }
        try? FileManager.default.removeItem(atPath: dir + "/" + file + "-lock")
        // The file changed: its size or its SHA-256 no longer matches the manifest.
        #expect(CacheVerifier.verify(path: dir, deep: false).faults.contains { $0.shard == file })
        let rehashed = CacheVerifier.verify(path: dir, deep: true, rehash: true)
        let located = rehashed.faults.filter { $0.index != nil }
        #expect(located.count == 1, "\(rehashed.faults)")
        #expect(located.count == 1 && located.first?.index == 4 * 1 + 1 && located.first?.kind == .checksumMismatch)
        // Without rehash the content digest, rebuilt from the stored digests, no longer matches.
        let plain = CacheVerifier.verify(path: dir, deep: true)
        #expect(plain.faults.contains { $0.kind == .checksumMismatch && $0.message.contains("content digest") })
    }

    @Test func truncatedShardIsRefused() throws {
        let (dir, m) = try freshCache()
        let file = m.shards[1].file
        try patch(dir + "/" + file) { $0 = $0.prefix($0.count / 2) }
        let report = CacheVerifier.verify(path: dir, deep: true)
        #expect(report.faults.contains { $0.shard == file && $0.kind == .shardMismatch })
        do {
            _ = try TokenCache(path: dir)
            Issue.record("truncated shard opened")
        } catch {
            #expect(error.kind == .shardMismatch && error.location.shard == file)
        }
    }

    @Test func missingShardIsRefused() throws {
        let (dir, m) = try freshCache()
        try FileManager.default.removeItem(atPath: dir + "/" + m.shards[1].file)
        let report = CacheVerifier.verify(path: dir, deep: true)
        #expect(report.faults.contains { $0.kind == .missingShard && $0.shard == m.shards[1].file })
        do { _ = try TokenCache(path: dir); Issue.record("opened") } catch { #expect(error.kind == .missingShard) }
    }

    @Test func manifestThatDisagreesIsRefused() throws {
        let (dir, m) = try freshCache()
        var edited = m
        edited.shards[0].records -= 1
        edited.updateTotals()
        try edited.write(toCache: dir)
        let report = CacheVerifier.verify(path: dir, deep: false)
        #expect(report.faults.contains { $0.kind == .shardMismatch && $0.shard == m.shards[0].file })
        do { _ = try TokenCache(path: dir); Issue.record("opened") } catch { #expect(error.kind == .shardMismatch) }
        // A stray shard file that the manifest does not list.
        try m.write(toCache: dir)
        try FileManager.default.copyItem(atPath: dir + "/" + m.shards[0].file, toPath: dir + "/shards/shard-09999.mdb")
        #expect(CacheVerifier.verify(path: dir, deep: false).faults.contains { $0.shard == "shards/shard-09999.mdb" })
    }

    /// A manifest edited to say the records are not byte-shuffled would make every value decode
    /// wrong while every checksum still holds: each shard records its own setting.
    @Test func manifestWithAnotherShuffleIsRefused() throws {
        let (dir, m) = try freshCache()
        var edited = m
        edited.compression.shuffle = "none"
        try edited.write(toCache: dir)
        let report = CacheVerifier.verify(path: dir, deep: true)
        #expect(report.faults.contains { $0.kind == .shardMismatch && $0.message.contains("shuffle") })
        do { _ = try TokenCache(path: dir); Issue.record("opened") } catch { #expect(error.kind == .shardMismatch) }
    }

    /// A one-shard cache of `gen`'s first `count` records with a second shard, written on its
    /// own from `second`, spliced in: what a bad merge would make. Returns its path.
    func spliced(count: Int, second: [TokenRecord]) throws -> String {
        let a = try TestSupport.temporaryDirectory(), b = try TestSupport.temporaryDirectory()
        let ma = try writeCache(a, gen, count: count, batch: count, options: smallOptions(cap: 1 << 30))
        let wb = try CacheWriter(path: b, settings: gen.settings, options: smallOptions(cap: 1 << 30))
        try wb.append(second)
        let mb = try wb.finish()
        try FileManager.default.copyItem(atPath: b + "/" + mb.shards[0].file, toPath: a + "/shards/shard-00001.mdb")
        var spliced = ma
        var entry = mb.shards[0]
        entry.file = "shards/shard-00001.mdb"
        spliced.shards.append(entry)
        spliced.updateTotals()
        try spliced.write(toCache: a)
        return a
    }

    @Test func duplicateIdAcrossShardsIsFound() throws {
        // Two caches holding ids 0..<20 and 10..<30, spliced into one.
        let a = try spliced(count: 20, second: (10..<30).map(gen.record))
        let report = CacheVerifier.verify(path: a, deep: true)
        let dups = report.faults.filter { $0.kind == .duplicateId }
        #expect(dups.count == 10)
        #expect(Set(dups.compactMap(\.id)) == Set((10..<20).map { gen.record($0).id }))
        #expect(dups.allSatisfy { $0.shard == "shards/shard-00001.mdb" })
    }

    /// Shard files may be symbolic links (to spread a cache over disks); a dangling link, a
    /// directory in a shard's place and an unreadable shard are each named for what they are.
    @Test func shardsBehindSymbolicLinksReadAndBadLinksAreNamed() throws {
        let (dir, m) = try freshCache()
        let elsewhere = try TestSupport.temporaryDirectory()
        for s in m.shards {
            let name = URL(fileURLWithPath: s.file).lastPathComponent
            try FileManager.default.moveItem(atPath: dir + "/" + s.file, toPath: elsewhere + "/" + name)
            try FileManager.default.createSymbolicLink(atPath: dir + "/" + s.file, withDestinationPath: elsewhere + "/" + name)
        }
        #expect(CacheVerifier.verify(path: dir, deep: true).isClean)
        #expect(try TokenCache(path: dir).record(at: m.totals.records - 1) == gen.record(m.totals.records - 1))

        let first = m.shards[0].file
        try FileManager.default.removeItem(atPath: elsewhere + "/" + URL(fileURLWithPath: first).lastPathComponent)
        let dangling = CacheVerifier.verify(path: dir, deep: true).faults
        #expect(dangling.contains { $0.kind == .missingShard && $0.shard == first && $0.message.contains("symbolic link") })
        #expect(!dangling.contains { $0.kind == .missingShard && $0.shard == nil }, "a fault that names no shard: \(dangling)")

        try FileManager.default.removeItem(atPath: dir + "/" + first)
        try FileManager.default.createDirectory(atPath: dir + "/" + first, withIntermediateDirectories: false)
        #expect(CacheVerifier.verify(path: dir, deep: false).faults.contains { $0.shard == first && $0.message.contains("is a directory") })
        do { _ = try TokenCache(path: dir); Issue.record("opened") } catch { #expect(error.message.contains("is a directory")) }
    }

    /// One unreadable record is one fault: the content digest comes from the stored digests,
    /// which are intact, so it is not reported as well.
    @Test func anUnreadableRecordDoesNotAlsoFaultTheContentDigest() throws {
        let (dir, m) = try freshCache()
        try patch(dir + "/" + m.shards[0].file) { data in
            let magic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]
            let at = (0..<(data.count - 4)).first { Array(data[$0..<($0 + 4)]) == magic }!
            data[at] ^= 0xFF  // no longer a zstd frame
        }
        let faults = CacheVerifier.verify(path: dir, deep: true).faults
        #expect(faults.contains { $0.index != nil && $0.shard == m.shards[0].file })
        #expect(!faults.contains { $0.message.contains("content digest") }, "\(faults)")
    }

    /// Manifests that contradict themselves are refused by every reader and by a fast verify:
    /// a shard listed twice (every record of it would be served twice), a complete cache
    /// without its digest or with an unsealed shard, a key given twice (JSON parsers disagree on
    /// which one counts).
    @Test func selfContradictoryManifestsAreRefused() throws {
        let (dir, m) = try freshCache()
        var twice = m
        twice.shards.append(m.shards[0])
        twice.shards[twice.shards.count - 1].file = "./" + m.shards[0].file.replacingOccurrences(of: "/", with: "//")
        twice.updateTotals()
        var noDigest = m
        noDigest.contentDigest = nil
        var unsealed = m
        unsealed.shards[1].sealed = false
        for (edited, expected) in [(twice, "listed twice"), (noDigest, "no content_digest"), (unsealed, "not sealed")] {
            try edited.write(toCache: dir)
            do { _ = try TokenCache(path: dir); Issue.record("opened: \(expected)") } catch {
                #expect(error.kind == .notACache && error.message.contains(expected), "\(error)")
            }
            #expect(CacheVerifier.verify(path: dir, deep: false).faults.contains { $0.message.contains(expected) })
        }
        try m.write(toCache: dir)
        let path = dir + "/manifest.json"
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = String(text[..<text.lastIndex(of: "}")!]) + ", \"format_version\" : 1}"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        do { _ = try TokenCache(path: dir); Issue.record("opened a manifest with a key twice") } catch {
            #expect(error.message.contains("appears twice"), "\(error)")
        }
    }

    /// A cache whose shards store a tensor in different dtypes (spliced, as a bad merge would)
    /// is reported by a deep verify at the first record that differs from record 0.
    @Test func recordsOfAnotherDTypeAreFound() throws {
        let narrow = synthetic { $0.indexDType = .u16 }
        let a = try spliced(count: 8, second: (8..<12).map(narrow.record))
        let faults = CacheVerifier.verify(path: a, deep: true).faults.filter { $0.message.contains("one dtype and shape per tensor") }
        #expect(faults.count == 4 && faults.allSatisfy { $0.shard == "shards/shard-00001.mdb" && $0.message.contains("indices U16, not U32") },
                "\(faults)")
    }

    /// Records with another K (kept tokens) spliced in: the same dtypes, so only their shape
    /// tells; batches cannot hold both, and deep verify reports each one.
    @Test func recordsOfAnotherShapeAreFound() throws {
        let fewer = synthetic { $0.tokens = 48 }
        let a = try spliced(count: 8, second: (8..<12).map(fewer.record))
        let faults = CacheVerifier.verify(path: a, deep: true).faults.filter { $0.message.contains("one dtype and shape per tensor") }
        #expect(faults.count == 4 && faults.allSatisfy { $0.message.contains("K = 48 tokens, not 64") }, "\(faults)")
        #expect(throws: CacheError.self) { _ = try TokenCache(path: a).batch([0, 9]) }
    }

    @Test func unknownCacheVersionIsRefused() throws {
        let (dir, _) = try freshCache(count: 5)
        let path = dir + "/manifest.json"
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "\"format_version\" : 1", with: "\"format_version\" : 2")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        do { _ = try TokenCache(path: dir); Issue.record("opened") } catch { #expect(error.kind == .unknownVersion) }
        #expect(CacheVerifier.verify(path: dir, deep: false).faults.first?.kind == .unknownVersion)
        do { _ = try TokenCache(path: dir + "/shards"); Issue.record("opened") } catch { #expect(error.kind == .notACache) }
    }
}
