import Foundation
import ShardFormat
@testable import TensorFiles
import Testing

struct JSONParserTests {
    @Test func parsesEscapesNumbersAndNesting() throws {
        let v = try JSONValue.parse(Array(#"{"a":[1,-2,3.5e2,true,false,null],"b":"x\"\\\/\n\u00e9\ud83d\ude00","c":{}}"#.utf8))
        #expect(v["a"] == .array([.number(1), .number(-2), .number(350), .bool(true), .bool(false), .null]))
        #expect(v["b"]?.stringValue == "x\"\\/\né😀")
        #expect(v["c"] == .object([]))
    }

    @Test func rejectsMalformedInput() {
        for text in ["", "{", "{\"a\":}", "[1,]", "{\"a\":1} x", "\"\\q\"", "\"\u{01}\"", "{\"a\" 1}", "nul", "\"\\ud800\""] {
            #expect(throws: JSONParseError.self, "\(text)") { try JSONValue.parse(Array(text.utf8)) }
        }
    }

    /// Parsers disagree on which of two equal keys counts, so an object naming one twice is
    /// refused, whether it is small (linear search) or large (a set).
    @Test func refusesAKeyGivenTwice() {
        let many = (0..<20).map { "\"k\($0)\":\($0)" }.joined(separator: ",")
        for text in [#"{"a":1,"a":2}"#, #"{"x":{"b":1,"c":2,"b":3}}"#, "{\(many),\"k3\":0}", #"{"\u0061":1,"a":2}"#] {
            do {
                _ = try JSONValue.parse(Array(text.utf8))
                Issue.record("accepted \(text)")
            } catch { #expect("\(error)".contains("appears twice"), "\(error)") }
        }
        #expect((try? JSONValue.parse(Array("{\(many)}".utf8))) != nil)
    }

    @Test func boundsNestingDepth() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONParseError.self) { try JSONValue.parse(Array(deep.utf8)) }
    }

    @Test func objectEqualityIgnoresMemberOrder() {
        #expect(JSONValue.object([("a", .number(1)), ("b", .null)]) == .object([("b", .null), ("a", .number(1))]))
        #expect(JSONValue.object([("a", .number(1))]) != .object([("a", .number(2))]))
    }
}

/// `JSONValue.compactText` writes what JSONEncoder writes (sorted keys, no escaped slashes),
/// without the encoder's cost; with a limit it stops soon after it.
struct CompactTextTests {
    @Test func matchesJSONEncoder() throws {
        let texts = [#"{"b":[1,-2,350,0.1,-1.5e-07,1e+20,123456789012345678,true,false,null],"a":"x\"\\/\n\u0001é😀","c":{},"d":[]}"#,
                     #"[{"z":1,"y":{"x":[2.5,"s"]}},-0.0,1e-05,4503599627370497]"#, #""plain""#, "3", "null"]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for text in texts {
            let v = try JSONValue.parse(Array(text.utf8))
            #expect(v.compactText() == String(decoding: try encoder.encode(v), as: UTF8.self), "\(text)")
            #expect(try JSONValue.parse(Array(v.compactText().utf8)) == v)
        }
        let big = JSONValue.array((0..<10_000).map { .number(Double($0)) })
        let cut = big.compactText(limit: 100)
        #expect(cut.hasSuffix("…") && cut.utf8.count < 200 && cut.hasPrefix("[0,1,2,"))
    }
}

struct SafetensorsTests {
    /// Headers in the writer's compact form take a direct scan instead of the JSON parser; on
    /// every input, valid or damaged, the outcome must be the parser's.
    @Test func compactScanAgreesWithTheJSONParser() throws {
        func outcome(_ blob: [UInt8], scan: Bool) -> SafetensorsHeader? {
            blob.withUnsafeBytes { try? Safetensors.parseHeader($0, compactScan: scan) }
        }
        let tensors = [NamedTensor(name: "latents", dtype: .bf16, shape: [3, 2], bytes: Array(repeating: 7, count: 12)),
                       NamedTensor(name: "groups", dtype: .u8, shape: [5], bytes: [0, 1, 2, 0, 1])]
        var samples = [Safetensors.serialize(tensors, metadata: ["id": "a/b", "view": "0", "empty": ""]),
                       Safetensors.serialize(tensors, metadata: [:]),
                       Safetensors.serialize([], metadata: ["k": "v"])]
        for text in [#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"__metadata__":{"x":"y"}}"#,
                     #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#,
                     #"{"__metadata__":{"x":"1","x":"2"},"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#,
                     #"{"a":{"dtype":"U8","shape":[02],"data_offsets":[0,2]}}"#,
                     #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]} }"#,
                     #"{"a":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}"#] {
            var header = Array(text.utf8)
            while header.count % 8 != 0 { header.append(0x20) }
            samples.append(withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header + Array(repeating: 1, count: 4))
        }
        var rng = SplitMix64(seed: 7)
        for sample in samples {
            #expect(outcome(sample, scan: true) == outcome(sample, scan: false))
            let headerEnd = min(sample.count, 8 + Int(sample.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
            for _ in 0..<400 {
                var damaged = sample
                let at = 8 + Int(rng.next() % UInt64(max(1, headerEnd - 8)))
                let printable = Array(#"{}[],:"\ 0123456789-.eE_aUFBI"#.utf8)
                damaged[at] = rng.next() % 2 == 0 ? printable[Int(rng.next() % UInt64(printable.count))] : UInt8(truncatingIfNeeded: rng.next())
                #expect(outcome(damaged, scan: true) == outcome(damaged, scan: false))
            }
        }
    }

    @Test func headerIsAlignedAndDeterministic() throws {
        let t = [NamedTensor(name: "x", dtype: .f32, shape: [2, 3], bytes: Array(repeating: 1, count: 24)),
                 NamedTensor(name: "y", dtype: .u8, shape: [5], bytes: [1, 2, 3, 4, 5])]
        let a = Safetensors.serialize(t, metadata: ["k": "v", "a": "b"])
        let b = Safetensors.serialize(t, metadata: ["a": "b", "k": "v"])
        #expect(a == b)
        let h = try a.withUnsafeBytes { try Safetensors.parseHeader($0) }
        #expect(h.dataOffset % 8 == 0)
        #expect(h.entry("x") == TensorEntry(dtype: .f32, shape: [2, 3], byteRange: 0..<24))
        #expect(h.entry("y")?.byteRange == 24..<29)
    }

    @Test func rejectsOverlapsGapsAndOversizedHeaders() {
        func blob(_ header: String, data: Int) -> [UInt8] {
            var out = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) }
            out += Array(header.utf8) + Array(repeating: 0, count: data)
            return out
        }
        let overlap = blob(#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#, data: 6)
        let gap = blob(#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#, data: 6)
        let tail = blob(#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#, data: 9)
        let overflow = blob(#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}"#, data: 4)
        for b in [overlap, gap, tail, overflow] {
            #expect(throws: SafetensorsError.self) { try b.withUnsafeBytes { try Safetensors.parseHeader($0) } }
        }
        var lying = blob("{}", data: 0)
        lying.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1 << 40).littleEndian) { Array($0) })
        #expect(throws: SafetensorsError.self) { try lying.withUnsafeBytes { try Safetensors.parseHeader($0) } }
    }

    @Test func npyHeaderIsAlignedAndReadBack() throws {
        let bytes = FloatConversion.encode([1, 2, 3, 4, 5, 6], as: .f32)
        let npy = NumpyFiles.npy(dtype: .f32, shape: [2, 3], bytes: bytes)
        #expect((npy.count - bytes.count) % 64 == 0)
        let back = try npy.withUnsafeBytes { try NumpyFiles.readNpy($0) }
        #expect(back.dtype == .f32 && back.shape == [2, 3] && back.data == bytes)
    }
}

struct ManifestTests {
    func manifest() -> Manifest {
        var m = Manifest(createdBy: "test", recordsPerChunk: 16, compressionLevel: 3, shardCapBytes: 1 << 20,
                         settings: .object([("model", .string("tiny"))]), classes: ["a", "b"])
        m.shards = [Manifest.Shard(file: "shards/shard-00000.mdb", records: 5, payloadBytes: 100, compressedBytes: 50, bytes: 4096, sealed: true, sha256: "00")]
        m.updateTotals()
        return m
    }

    @Test func roundTripsThroughJSON() throws {
        let m = manifest()
        #expect(try Manifest.decode(m.encoded()) == m)
        let text = String(decoding: try m.encoded(), as: UTF8.self)
        #expect(text.contains("\"records_per_chunk\" : 16"))
    }

    @Test func unknownVersionIsReportedAsSuch() throws {
        let text = String(decoding: try manifest().encoded(), as: UTF8.self)
            .replacingOccurrences(of: "\"format_version\" : 1", with: "\"format_version\" : 7")
        do { _ = try Manifest.decode(Data(text.utf8)); Issue.record("accepted v7") } catch { #expect(error.kind == .unknownVersion) }
    }

    @Test func refusesPathsOutsideTheCache() throws {
        let text = String(decoding: try manifest().encoded(), as: UTF8.self)
            .replacingOccurrences(of: "shards/shard-00000.mdb", with: "../../etc/passwd")
        #expect(throws: FormatError.self) { try Manifest.decode(Data(text.utf8)) }
    }
}

struct ChunkTests {
    /// A chunk as FORMAT.md 3.2 lays it out; every damage to its table is refused for every slot.
    @Test func offsetTablesAreCheckedWhole() throws {
        let frames: [[UInt8]] = [[1, 2, 3], [], [4, 5], [6]]
        var chunk = [UInt8](repeating: 0, count: Chunk.packedSize(frames))
        chunk.withUnsafeMutableBytes { Chunk.pack(frames, into: $0) }
        chunk.withUnsafeBytes { c in
            for (slot, f) in frames.enumerated() { #expect((try? Chunk.frame(c, slot: slot, recordsPerChunk: 4)).map(Array.init) == f) }
            #expect(throws: FormatError.self) { try Chunk.frame(c, slot: 0, recordsPerChunk: 3) }
        }
        func damaged(_ edit: (inout [UInt8]) -> Void) -> [UInt8] { var c = chunk; edit(&c); return c }
        // Offsets are u32 words 1...n+1: [0, 3, 3, 5, 6].
        for bad in [damaged { $0[4] = 1 },                  // offsets[0] ≠ 0
                    damaged { $0[8] = 4 },                  // 4 > offsets[2] = 3: decreasing
                    damaged { $0[20] = 5 },                 // last ≠ the frame bytes
                    damaged { $0.removeLast() }] {          // frames shorter than the table says
            bad.withUnsafeBytes { c in
                for slot in 0..<4 { #expect(throws: FormatError.self) { try Chunk.frame(c, slot: slot) } }
            }
        }
    }
}
