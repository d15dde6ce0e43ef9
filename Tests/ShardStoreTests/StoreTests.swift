import Foundation
import ShardFormat
import ShardReader
import ShardWriter
import TensorFiles
import TestSupport
import Testing

func synthetic(_ configure: (inout SyntheticRecords) -> Void = { _ in }) -> SyntheticRecords {
    var g = SyntheticRecords()
    g.tokens = 64
    g.patches = 100
    g.channels = 8
    configure(&g)
    return g
}

func smallOptions(cap: Int = 96 << 10, perChunk: Int = 4, shuffle: Bool = true) -> CacheWriter.Options {
    var o = CacheWriter.Options()
    o.shardCapBytes = cap
    o.recordsPerChunk = perChunk
    o.shuffle = shuffle
    o.threads = 2
    return o
}

/// Writes `count` records of `gen` in batches of `batch`, finishes, and returns the path.
@discardableResult
func writeCache(_ path: String, _ gen: SyntheticRecords, count: Int, batch: Int, options: CacheWriter.Options) throws -> Manifest {
    let w = try CacheWriter(path: path, settings: gen.settings, options: options)
    var i = w.count
    while i < count {
        let n = min(batch, count - i)
        try w.append((i..<(i + n)).map(gen.record))
        i += n
    }
    return try w.finish()
}

struct StoreRoundTripTests {
    @Test func everyRecordReadsBackExactlyAcrossShards() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic { $0.withLogvar = true }
        let m = try writeCache(dir, gen, count: 150, batch: 37, options: smallOptions())
        #expect(m.shards.count > 2, "small cap must spread records over several shards")
        #expect(m.complete && m.contentDigest != nil)
        let cache = try TokenCache(path: dir)
        #expect(cache.count == 150)
        for i in 0..<150 {
            #expect(try cache.record(at: i) == gen.record(i))
        }
        #expect(try cache.index(of: gen.record(77).id) == 77)
        #expect(try cache.record(id: gen.record(149).id) == gen.record(149))
        #expect(try cache.record(id: "no/such/id") == nil)
        #expect(try cache.record(id: gen.record(3).id, view: 1) == nil)
        #expect(throws: CacheError.self) { try cache.record(at: 150) }
        #expect(CacheVerifier.verify(path: dir, deep: true).isClean)
        #expect(CacheVerifier.verify(path: dir, deep: true, rehash: true).isClean)
    }

    @Test(arguments: [TensorDType.f32, .f16, .bf16])
    func batchesAreContiguousArrays(dtype: TensorDType) throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic { $0.latentDType = dtype }
        try writeCache(dir, gen, count: 20, batch: 20, options: smallOptions())
        let cache = try TokenCache(path: dir)
        let b = try cache.batch([5, 0, 19])
        #expect(b.count == 3 && b.tokens == 64 && b.channels == 8 && b.patches == 100)
        #expect(b.latents.count == 3 * 64 * 8)
        #expect(Array(b.latents[(64 * 8)..<(2 * 64 * 8)]) == gen.record(0).latentsAsFloat())
        #expect(Array(b.indices[(2 * 64)...]) == gen.record(19).indicesAsUInt32())
        #expect(b.labels == [5, 0, 19].map { Int32(gen.record($0).label) })
        #expect(b.logvar == nil)
    }

    /// Readers gather batches into one array per tensor: the writer refuses a record whose K
    /// differs from the cache's (a spliced cache with such records: CorruptionTests).
    @Test func recordOfAnotherShapeIsRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        let a = synthetic()
        var b = synthetic { $0.tokens = 49 }
        b.seed = 9
        let w = try CacheWriter(path: dir, settings: .null, options: smallOptions())
        try w.append([a.record(0)])
        var other = b.record(0)
        other.id = "other"
        do {
            try w.append([other])
            Issue.record("a record with K = 49 joined records with K = 64")
        } catch let e as CacheError {
            #expect(e.message.contains("K = 49 tokens, not 64") && e.location.id == "other", "\(e)")
        }
        try w.append([a.record(1)])
        #expect(try w.finish().totals.records == 2)
    }

    @Test func contentDigestIgnoresShardingChunkingAndCompression() throws {
        let gen = synthetic()
        let a = try TestSupport.temporaryDirectory(), b = try TestSupport.temporaryDirectory()
        let ma = try writeCache(a, gen, count: 90, batch: 90, options: smallOptions(cap: 1 << 30, perChunk: 16))
        var ob = smallOptions(cap: 40 << 10, perChunk: 3, shuffle: false)
        ob.compressionLevel = 1
        let mb = try writeCache(b, gen, count: 90, batch: 7, options: ob)
        #expect(ma.shards.count == 1 && mb.shards.count > 2)
        #expect(ma.contentDigest == mb.contentDigest)
        let c = try TestSupport.temporaryDirectory()
        let mc = try writeCache(c, synthetic { $0.seed = 1 }, count: 90, batch: 90, options: smallOptions())
        #expect(mc.contentDigest != ma.contentDigest)
    }

    @Test func readsFromManyThreadsAgree() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        try writeCache(dir, gen, count: 64, batch: 64, options: smallOptions())
        let cache = try TokenCache(path: dir)
        let expected = try (0..<64).map { try cache.payload(at: $0) }
        let mismatches = Counter()
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for round in 0..<50 {
                let i = (t * 31 + round * 17) % 64
                if (try? cache.payload(at: i)) != expected[i] { mismatches.increment() }
            }
        }
        #expect(mismatches.value == 0)
    }

    @Test func bytesOnDiskStayCloseToCompressedBytes() throws {
        let dir = try TestSupport.temporaryDirectory()
        var gen = SyntheticRecords()  // ImageNet-256 shape: K = 256, C = 16 bf16
        gen.groupDType = .u16
        let m = try writeCache(dir, gen, count: 400, batch: 200, options: smallOptions(cap: 1 << 30, perChunk: 16))
        let ratio = Double(m.totals.bytesOnDisk) / Double(m.totals.compressedBytes)
        #expect(ratio < 1.10, "on disk \(m.totals.bytesOnDisk) vs compressed \(m.totals.compressedBytes)")
        #expect(m.totals.compressedBytes < m.totals.payloadBytes)
    }

    /// Batches smaller than a chunk rewrite the partial chunk each time, leaving free pages; with
    /// no floor the sealed shard is compacted, smaller, and reads back the same.
    @Test func sealedShardsAreCompactedWhenItPays() throws {
        let gen = synthetic()
        var sizes: [Int] = []
        for floor in [Int.max, 0] {
            let dir = try TestSupport.temporaryDirectory()
            var options = smallOptions(cap: 1 << 30, perChunk: 16)
            options.compactionFloorBytes = floor
            options.compactSmallerThanBytes = 0
            let m = try writeCache(dir, gen, count: 120, batch: 3, options: options)
            sizes.append(m.totals.bytesOnDisk)
            #expect(CacheVerifier.verify(path: dir, deep: true).isClean)
            let cache = try TokenCache(path: dir)
            for i in stride(from: 0, to: 120, by: 7) { #expect(try cache.record(at: i) == gen.record(i)) }
        }
        #expect(sizes[1] < sizes[0], "compaction gave nothing back: \(sizes)")
        // The defaults compact a shard this small (mapping it costs little).
        let dir = try TestSupport.temporaryDirectory()
        let m = try writeCache(dir, gen, count: 120, batch: 3, options: smallOptions(cap: 1 << 30, perChunk: 16))
        #expect(m.totals.bytesOnDisk == sizes[1])
    }
}

final class Counter: @unchecked Sendable {  // guarded by `lock`
    private let lock = NSLock()
    private var n = 0
    func increment() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

struct WriterRulesTests {
    @Test func duplicateIdsAreRefusedAndTheBatchIsNotWritten() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        let w = try CacheWriter(path: dir, settings: gen.settings, options: smallOptions(cap: 40 << 10))
        try w.append((0..<30).map(gen.record))  // spans sealed shards
        #expect(w.manifest.shards.filter(\.sealed).count >= 1)
        for dup in [0, 29] {
            do {
                try w.append([gen.record(100), gen.record(dup)])
                Issue.record("duplicate \(dup) accepted")
            } catch let e as CacheError {
                #expect(e.kind == .duplicateId)
                #expect(e.location.id == gen.record(dup).id)
            }
        }
        do {
            try w.append([gen.record(200), gen.record(200)])
            Issue.record("duplicate within a batch accepted")
        } catch let e as CacheError {
            #expect(e.kind == .duplicateId)
        }
        #expect(w.count == 30)
        try w.append([gen.record(100)])  // the refused batch left nothing behind
        try w.finish()
        let cache = try TokenCache(path: dir)
        #expect(cache.count == 31)
        #expect(CacheVerifier.verify(path: dir, deep: true).isClean)
    }

    @Test func sameViewOfAnotherIdAndOtherViewsAreFine() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        let w = try CacheWriter(path: dir, settings: .null, options: smallOptions())
        var flipped = gen.record(0)
        flipped.view = 1
        try w.append([gen.record(0), flipped])
        try w.finish()
        let cache = try TokenCache(path: dir)
        #expect(try cache.index(of: gen.record(0).id, view: 1) == 1)
    }

    @Test func otherSettingsAndASecondWriterAreRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        do {
            let w = try CacheWriter(path: dir, settings: gen.settings, options: smallOptions())
            try w.append([gen.record(0)])
            do {
                _ = try CacheWriter(path: dir, settings: gen.settings, options: smallOptions())
                Issue.record("second writer accepted")
            } catch let e as CacheError {
                #expect(e.kind == .busy)
            }
        }
        do {
            _ = try CacheWriter(path: dir, settings: synthetic { $0.channels = 4 }.settings, options: smallOptions())
            Issue.record("other settings accepted")
        } catch let e as CacheError {
            #expect(e.kind == .settingsMismatch)
        }
    }

    @Test func badRecordsAreRefusedWithTheirId() throws {
        let dir = try TestSupport.temporaryDirectory()
        let w = try CacheWriter(path: dir, settings: .null, options: smallOptions())
        var r = synthetic().record(0)
        r.id = ""
        #expect(throws: CacheError.self) { try w.append([r]) }
        r = synthetic().record(0)
        r.indices = NamedTensor(name: "indices", dtype: .u32, shape: [3], bytes: Array(repeating: 0, count: 12))
        do {
            try w.append([r])
            Issue.record("K mismatch accepted")
        } catch let e as CacheError {
            #expect(e.kind == .badRecord && e.location.id == r.id)
        }
        // Labels travel as int32 in batches: one past it is refused, the largest is written.
        r = synthetic().record(0)
        r.label = Int(Int32.max) + 1
        do {
            try w.append([r])
            Issue.record("label 2^31 accepted")
        } catch let e as CacheError {
            #expect(e.kind == .badRecord && e.message.contains("label") && e.location.id == r.id)
        }
        r.label = Int(Int32.max)
        try w.append([r])
        #expect(try TokenCache(path: dir).record(at: 0).label == Int(Int32.max))
        // One dtype per tensor in a cache: a record with u16 indices after u32 ones is refused.
        let narrow = synthetic { $0.indexDType = .u16 }.record(1)
        #expect(synthetic().record(1).indices.dtype == .u32)
        do {
            try w.append([narrow])
            Issue.record("u16 indices accepted after u32")
        } catch let e as CacheError {
            #expect(e.kind == .badRecord && e.message.contains("indices U16, not U32"), "\(e)")
        }
    }

    /// A writer commits a batch to its open shard before it replaces the manifest, so a reader
    /// can meet a shard that runs ahead of the manifest: it serves the manifest's records and
    /// nothing past them. A sealed shard must match exactly.
    @Test func readerOfACacheBeingWrittenServesTheManifestsRecords() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        let w = try CacheWriter(path: dir, settings: gen.settings, options: smallOptions(cap: 1 << 30))
        try w.append((0..<10).map(gen.record))
        let earlier = try Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json"))
        try w.append((10..<15).map(gen.record))
        // The moment between the shard's commit and the manifest's replacement.
        try earlier.write(to: URL(fileURLWithPath: dir + "/manifest.json"))
        let cache = try TokenCache(path: dir)
        #expect(cache.count == 10)
        #expect(try cache.record(at: 9).id == gen.record(9).id)
        #expect(try cache.index(of: gen.record(12).id) == nil)
        #expect(try cache.index(of: gen.record(3).id) == 3)
        // A deep verify checks the manifest's records and finds nothing wrong with the ones
        // ahead of it (chunks, digests and ids past the count): only that the cache is unfinished.
        let report = CacheVerifier.verify(path: dir, deep: true)
        #expect(report.faults.isEmpty, "\(report.faults)")
        #expect(report.unfinished?.contains("(10 records committed so far): run the same `mtok tokenize` command again") == true, "\(report.unfinished ?? "")")
        #expect(!report.isClean)
        // Fewer records than the manifest lists is a fault, written or not.
        var m = try Manifest.read(fromCache: dir)
        m.shards[0].records = 16
        try m.write(toCache: dir)
        #expect(throws: CacheError.self) { try TokenCache(path: dir) }
    }

    @Test func resumingAfterAbandonedWriterKeepsEverythingCommitted() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        do {
            let w = try CacheWriter(path: dir, settings: gen.settings, options: smallOptions(cap: 40 << 10))
            try w.append((0..<23).map(gen.record))
            try w.append((23..<41).map(gen.record))
            // Dropped without finish(): as if the process had stopped here.
        }
        let w = try CacheWriter(path: dir, settings: gen.settings, options: smallOptions(cap: 40 << 10))
        #expect(w.count == 41)
        try w.append((41..<60).map(gen.record))
        let m = try w.finish()
        let clean = try TestSupport.temporaryDirectory()
        let mc = try writeCache(clean, gen, count: 60, batch: 60, options: smallOptions())
        #expect(m.contentDigest == mc.contentDigest)
        #expect(CacheVerifier.verify(path: dir, deep: true).isClean)
    }
}

struct MergeMessagesTests {
    /// Finishes part `rank` of `world` under `root` holding records `range` of `gen`.
    func part(_ root: String, rank: Int, world: Int, _ gen: SyntheticRecords, _ range: Range<Int>) throws {
        let w = try CacheWriter(path: CacheMerger.partPath(root: root, rank: rank), settings: gen.settings,
                                part: Manifest.Part(rank: rank, worldSize: world), options: smallOptions())
        try w.append(range.map(gen.record))
        try w.finish()
    }

    func mergeError(_ root: String) -> String {
        do {
            _ = try CacheMerger.merge(root: root)
            return "merged"
        } catch {
            return "\(error)"
        }
    }

    /// A merge that cannot run says what to do: which ranks are missing, which part has another
    /// world size, that a merged cache has nothing left to merge.
    @Test func refusalsNameTheProblem() throws {
        let root = try TestSupport.temporaryDirectory() + "/cache"
        let gen = synthetic()
        try part(root, rank: 0, world: 4, gen, 0..<3)
        try part(root, rank: 3, world: 4, gen, 9..<12)
        #expect(mergeError(root).contains("2 of 4 parts finished; not started: rank 1, 2"), "\(mergeError(root))")
        try part(root, rank: 1, world: 3, gen, 3..<6)
        #expect(mergeError(root).contains("rank-00001 as one of 3"))
        try FileManager.default.removeItem(atPath: CacheMerger.partPath(root: root, rank: 1))
        try part(root, rank: 1, world: 4, gen, 3..<6)
        try part(root, rank: 2, world: 4, gen, 6..<9)
        #expect(mergeError(root) == "merged")
        #expect(mergeError(root).contains("already one cache"))
        #expect(CacheVerifier.verify(path: root, deep: true).isClean)
    }

    /// Parts with the same settings whose records store a tensor in another dtype (what two
    /// Python writers can make): merging them would give a cache no batch reader can read.
    @Test func partsWithOtherDTypesAreRefused() throws {
        let root = try TestSupport.temporaryDirectory() + "/cache"
        let wide = synthetic(), narrow = synthetic { $0.latentDType = .f16 }
        for (rank, gen) in [wide, narrow].enumerated() {
            let w = try CacheWriter(path: CacheMerger.partPath(root: root, rank: rank), settings: .null,
                                    part: Manifest.Part(rank: rank, worldSize: 2), options: smallOptions())
            try w.append((rank * 3..<(rank * 3 + 3)).map(gen.record))
            try w.finish()
        }
        let message = mergeError(root)
        #expect(message.contains("rank-00001 has latents F16, not BF16"), "\(message)")
    }

    /// Parts made with other settings: the refusal names the first setting that differs.
    @Test func partsWithOtherSettingsNameTheSetting() throws {
        let root = try TestSupport.temporaryDirectory() + "/cache"
        var other = synthetic()
        other.seed += 1
        try part(root, rank: 0, world: 2, synthetic(), 0..<3)
        try part(root, rank: 1, world: 2, other, 3..<6)
        let message = mergeError(root)
        #expect(message.contains("rank-00001 was made with other settings than rank-00000: settings.seed is"), "\(message)")
    }
}

struct ResumeKeepsLayoutTests {
    /// A resumed writer takes the layout and the literal coding from the manifest, not from its
    /// options, so the resumed cache is byte for byte what one uninterrupted run writes.
    @Test func resumedWriterKeepsTheCachesLiteralCoding() throws {
        let gen = synthetic()
        var raw = smallOptions()
        raw.compressLiterals = false
        let dir = try TestSupport.temporaryDirectory()
        do {
            let w = try CacheWriter(path: dir, settings: gen.settings, options: raw)
            try w.append((0..<21).map(gen.record))
        }
        var other = smallOptions()
        other.compressLiterals = true
        let resumed = try writeCache(dir, gen, count: 50, batch: 7, options: other)
        #expect(resumed.compression.literals == "raw")
        let clean = try TestSupport.temporaryDirectory()
        let uninterrupted = try writeCache(clean, gen, count: 50, batch: 50, options: raw)
        #expect(resumed.totals.compressedBytes == uninterrupted.totals.compressedBytes)
        let huffman = try writeCache(try TestSupport.temporaryDirectory(), gen, count: 50, batch: 50, options: other)
        #expect(huffman.compression.literals == "huffman")
        #expect(huffman.totals.compressedBytes != uninterrupted.totals.compressedBytes, "the two codings should differ in size")
    }
}

struct LiteralCodingTests {
    /// Raw literals pay only with byte planes (FORMAT 7): by default a writer stores them raw
    /// with byte planes and Huffman-codes them without; an explicit setting wins either way.
    @Test func literalsAreRawOnlyWithBytePlanesByDefault() throws {
        let gen = synthetic()
        func written(shuffle: Bool, literals: Bool?) throws -> Manifest {
            var o = smallOptions(shuffle: shuffle)
            o.compressLiterals = literals
            return try writeCache(try TestSupport.temporaryDirectory(), gen, count: 20, batch: 20, options: o)
        }
        let planesRaw = try written(shuffle: true, literals: nil)
        let plainHuffman = try written(shuffle: false, literals: nil)
        let plainRaw = try written(shuffle: false, literals: false)
        #expect(planesRaw.compression.literals == "raw")
        #expect(plainHuffman.compression.literals == "huffman")
        #expect(plainRaw.compression.literals == "raw")
        #expect(try written(shuffle: true, literals: true).compression.literals == "huffman")
        #expect(plainHuffman.totals.compressedBytes < plainRaw.totals.compressedBytes,
                "Huffman literals should shrink unshuffled frames: \(plainHuffman.totals.compressedBytes) vs \(plainRaw.totals.compressedBytes)")
    }
}

/// `Manifest.arithmetic`: which kernels made which records, per writing session.
struct ArithmeticSegmentTests {
    static let haswell = Manifest.Arithmetic(revision: 3, blas: "OpenBLAS 0.3.21", kernel: "Haswell")
    static let skylake = Manifest.Arithmetic(revision: 3, blas: "OpenBLAS 0.3.21", kernel: "SkylakeX")

    func append(_ path: String, _ gen: SyntheticRecords, _ range: Range<Int>, by arithmetic: Manifest.Arithmetic?,
                finish: Bool = false) throws -> Manifest {
        let w = try CacheWriter(path: path, settings: gen.settings, arithmetic: arithmetic, options: smallOptions())
        if !range.isEmpty { try w.append(range.map(gen.record)) }
        return finish ? try w.finish() : w.manifest
    }

    @Test func sessionsGetSegmentsBackToBack() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        _ = try append(dir, gen, 0..<5, by: Self.haswell)
        // A session that commits nothing leaves no segment.
        _ = try append(dir, gen, 5..<5, by: Self.skylake)
        _ = try append(dir, gen, 5..<12, by: Self.skylake)
        let m = try append(dir, gen, 12..<20, by: Self.skylake, finish: true)
        #expect(m.arithmetic == [
            Manifest.ArithmeticSegment(firstRecord: 0, records: 5, madeBy: Self.haswell),
            Manifest.ArithmeticSegment(firstRecord: 5, records: 7, madeBy: Self.skylake),
            Manifest.ArithmeticSegment(firstRecord: 12, records: 8, madeBy: Self.skylake),
        ])
        #expect(m.arithmeticUse.map(\.records) == [5, 15] && m.arithmeticUse.map(\.madeBy) == [Self.haswell, Self.skylake])
        let report = CacheVerifier.verify(path: dir, deep: true)
        #expect(report.isClean, "\(report.faults)")
        #expect(report.arithmetic.map(\.records) == [5, 15])
    }

    /// Records of a writer that recorded nothing (an earlier build, synth-cache) stay unrecorded.
    @Test func recordsOfAWriterThatSaidNothingAreUnrecorded() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        #expect(try append(dir, gen, 0..<4, by: nil).arithmetic == nil)
        let m = try append(dir, gen, 4..<6, by: Self.haswell, finish: true)
        #expect(m.arithmetic == [Manifest.ArithmeticSegment(firstRecord: 0, records: 4, madeBy: nil),
                                 Manifest.ArithmeticSegment(firstRecord: 4, records: 2, madeBy: Self.haswell)])
        #expect(CacheVerifier.verify(path: dir, deep: false).isClean)
    }

    /// Forged segments: a verify fault, never a crash (counts near Int.max included), and a
    /// segment list of the wrong JSON type is no manifest at all.
    @Test func forgedSegmentsAreFaults() throws {
        let dir = try TestSupport.temporaryDirectory()
        let gen = synthetic()
        _ = try append(dir, gen, 0..<6, by: Self.haswell, finish: true)
        let path = dir + "/" + Manifest.fileName
        let good = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        func with(_ arithmetic: Any) throws -> VerifyReport {
            var m = good
            m["arithmetic"] = arithmetic
            try JSONSerialization.data(withJSONObject: m).write(to: URL(fileURLWithPath: path))
            return CacheVerifier.verify(path: dir, deep: false)
        }
        let kernel: [String: Any] = ["revision": 3, "blas": "OpenBLAS 0.3.21", "kernel": "Haswell"]
        let gap = try with([["first_record": 0, "records": 2, "made_by": kernel], ["first_record": 3, "records": 3, "made_by": kernel]])
        #expect(gap.faults.contains { $0.message.contains("arithmetic[1]") }, "\(gap.faults)")
        let short = try with([["first_record": 0, "records": 5, "made_by": kernel]])
        #expect(short.faults.contains { $0.message.contains("cover 5 records, the cache holds 6") }, "\(short.faults)")
        let huge = try with([["first_record": 0, "records": Int.max, "made_by": kernel],
                             ["first_record": Int.min, "records": Int.max, "made_by": kernel]])
        #expect(!huge.isClean && huge.arithmetic.count == 1)
        let wrongType = try with(["not a segment"])
        #expect(wrongType.faults.contains { $0.kind == .notACache }, "\(wrongType.faults)")
    }
}
