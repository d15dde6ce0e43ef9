import Crypto
import Foundation
import ShardFormat
import TensorFiles
import Testing

/// A record with every field set from `seed`, of the given dtypes and shape.
func makeRecord(latent: TensorDType = .bf16, index: TensorDType = .u32, group: TensorDType = .u16,
                k: Int = 16, c: Int = 4, n: Int = 25, logvar: Bool = false, id: String = "a/b.jpg", seed: Int = 1) -> TokenRecord {
    let values = (0..<(k * c)).map { Float(($0 * 37 + seed) % 101) / 13 - 3.5 }
    let lat = NamedTensor(name: "latents", dtype: latent, shape: [k, c], bytes: FloatConversion.encode(values, as: latent))
    let lv = logvar ? NamedTensor(name: "logvar", dtype: latent, shape: [k, c],
                                  bytes: FloatConversion.encode(values.map { -$0 }, as: latent)) : nil
    var idx = [UInt8]()
    for i in 0..<k {
        let v = (i * 7919 + seed) % (index == .u16 ? 65536 : 262_144)
        if index == .u16 { withUnsafeBytes(of: UInt16(v).littleEndian) { idx += $0 } } else { withUnsafeBytes(of: UInt32(v).littleEndian) { idx += $0 } }
    }
    var grp = [UInt8]()
    for j in 0..<n {
        let g = j < k ? j : (j * 3 + seed) % k
        if group == .u8 { grp.append(UInt8(g)) } else { withUnsafeBytes(of: UInt16(g).littleEndian) { grp += $0 } }
    }
    return TokenRecord(id: id, view: seed % 3, label: seed % 7 - 1, sourceWidth: 640, sourceHeight: 480,
                       cropBox: CropBox(x: 80, y: 0, width: 480, height: 480), sourceSHA256: String(repeating: "ab", count: 32),
                       latents: lat, logvar: lv,
                       indices: NamedTensor(name: "indices", dtype: index, shape: [k], bytes: idx),
                       groups: NamedTensor(name: "groups", dtype: group, shape: [n], bytes: grp))
}

struct RecordCodecTests {
    @Test(arguments: [TensorDType.f32, .f16, .bf16], [TensorDType.u16, .u32])
    func roundTripEveryDType(latent: TensorDType, index: TensorDType) throws {
        for group in [TensorDType.u8, .u16] {
            for logvar in [false, true] {
                let r = makeRecord(latent: latent, index: index, group: group, logvar: logvar)
                let payload = RecordCodec.encode(r)
                #expect(try RecordCodec.decode(payload) == r)
                // The payload is plain safetensors: the generic parser sees the same tensors.
                let (tensors, metadata) = try payload.withUnsafeBytes { try Safetensors.decode($0) }
                #expect(tensors.map(\.name) == (logvar ? ["latents", "logvar", "indices", "groups"] : ["latents", "indices", "groups"]))
                #expect(metadata["mtok.format"] == "1")
                #expect(metadata["id"] == "a/b.jpg")
            }
        }
    }

    @Test(arguments: [(1, 1, 1), (256, 16, 256), (144, 18, 256), (1024, 8, 1024), (64, 32, 256)])
    func roundTripShapes(k: Int, c: Int, n: Int) throws {
        let r = makeRecord(group: .u16, k: k, c: c, n: n, logvar: true)
        let back = try RecordCodec.decode(RecordCodec.encode(r))
        #expect(back == r)
        #expect(back.latentsAsFloat() == r.latentsAsFloat())
        #expect(back.tokenCount == k && back.channelCount == c && back.patchCount == n)
    }

    @Test func idsWithUnicodeAndQuotesSurvive() throws {
        let r = makeRecord(id: "n01440764/\"tëst\"\\\n😀.JPEG")
        #expect(try RecordCodec.decode(RecordCodec.encode(r)).id == r.id)
    }

    /// Re-encodes a record's payload with its metadata or tensors changed.
    func tampered(_ r: TokenRecord, metadata edit: (inout [String: String]) -> Void = { _ in },
                  tensors editTensors: (inout [NamedTensor]) -> Void = { _ in }) throws -> [UInt8] {
        var (tensors, metadata) = try RecordCodec.encode(r).withUnsafeBytes { try Safetensors.decode($0) }
        edit(&metadata)
        editTensors(&tensors)
        return Safetensors.serialize(tensors, metadata: metadata)
    }

    @Test func unknownVersionIsRefused() throws {
        let bytes = try tampered(makeRecord()) { $0["mtok.format"] = "2" }
        #expect(throws: FormatError.self) { try RecordCodec.decode(bytes) }
        do { _ = try RecordCodec.decode(bytes) } catch { #expect(error.kind == .unknownVersion) }
        let missing = try tampered(makeRecord()) { $0["mtok.format"] = nil }
        do { _ = try RecordCodec.decode(missing) } catch { #expect(error.kind == .unknownVersion) }
    }

    @Test func unknownOrWrongDTypeIsRefused() throws {
        let r = makeRecord()
        let wrongIndex = try tampered(r, tensors: { t in
            t[1] = NamedTensor(name: "indices", dtype: .i64, shape: [8], bytes: Array(repeating: 0, count: 64))
        })
        do { _ = try RecordCodec.decode(wrongIndex); Issue.record("accepted i64 indices") } catch { #expect(error.kind == .unknownDType) }
        // A dtype string safetensors itself does not know.
        var payload = RecordCodec.encode(r)
        let text = String(decoding: payload, as: UTF8.self)
        let patched = text.replacingOccurrences(of: "\"BF16\"", with: "\"BF17\"")
        payload = Array(patched.utf8)
        do { _ = try RecordCodec.decode(payload); Issue.record("accepted BF17") } catch { #expect(error.kind == .badContainer) }
    }

    @Test func shapesThatDisagreeAreRefused() throws {
        let r = makeRecord(k: 16, c: 4)
        let shortIndices = try tampered(r, tensors: { t in
            t[1] = NamedTensor(name: "indices", dtype: .u32, shape: [15], bytes: Array(t[1].bytes.prefix(60)))
        })
        do { _ = try RecordCodec.decode(shortIndices); Issue.record("accepted K mismatch") } catch { #expect(error.kind == .badShape) }
        let flat = try tampered(r, tensors: { t in
            t[0] = NamedTensor(name: "latents", dtype: .bf16, shape: [64], bytes: t[0].bytes)
        })
        do { _ = try RecordCodec.decode(flat); Issue.record("accepted rank-1 latents") } catch { #expect(error.kind == .badShape) }
        // Byte count that disagrees with the declared shape: rejected by the container check.
        var payload = RecordCodec.encode(r)
        let text = String(decoding: payload, as: UTF8.self).replacingOccurrences(of: "\"shape\":[16,4]", with: "\"shape\":[16,5]")
        payload = Array(text.utf8)
        do { _ = try RecordCodec.decode(payload); Issue.record("accepted byte count mismatch") } catch { #expect(error.kind == .badContainer) }
    }

    @Test func groupIdsMustNameKeptTokens() throws {
        let r = makeRecord(group: .u16, k: 16, n: 25)
        let bad = try tampered(r, tensors: { t in
            var g = t[2].bytes
            g[2 * 20] = 16  // group id 16 with K = 16
            t[2] = NamedTensor(name: "groups", dtype: .u16, shape: [25], bytes: g)
        })
        do { _ = try RecordCodec.decode(bad); Issue.record("accepted group id K") } catch { #expect(error.kind == .badValue) }
    }

    /// A view past 16 bits or a label past int32 (a batch's label type) is refused by the strict
    /// decoder, by the checker's fast path and by the metadata scan the stream relies on, and by
    /// the writer; the edges of both ranges are accepted.
    @Test(arguments: [(70000, 3), (65536, 3), (0, 2_147_483_648), (0, -2), (0, 99_999_999_999_999_999)])
    func viewsAndLabelsOutOfRangeAreRefused(view: Int, label: Int) throws {
        var r = makeRecord()
        r.view = view
        r.label = label
        let payload = RecordCodec.encode(r)
        do { _ = try RecordCodec.decode(payload); Issue.record("decoded view \(view) label \(label)") } catch {
            #expect(error.kind == .badMetadata)
        }
        let checker = RecordChecker()
        for _ in 0..<2 {  // the second time through the checker's cached layout
            do {
                _ = try payload.withUnsafeBytes { try checker.check(stored: $0, shuffled: false) }
                Issue.record("checker accepted view \(view) label \(label)")
            } catch let error as FormatError { #expect(error.kind == .badMetadata) }
        }
        #expect(payload.withUnsafeBytes { MetadataScan(payload: $0)?.checked() } == nil)
        for (v, l) in [(65535, 2_147_483_647), (0, -1)] {
            r.view = v
            r.label = l
            #expect(try RecordCodec.decode(RecordCodec.encode(r)) == r)
        }
    }

    @Test func truncatedAndGarbagePayloadsThrowInsteadOfCrashing() throws {
        let payload = RecordCodec.encode(makeRecord())
        for cut in [0, 3, 8, 20, payload.count / 2, payload.count - 1] {
            #expect(throws: FormatError.self) { try RecordCodec.decode(Array(payload.prefix(cut))) }
        }
        var huge = payload
        huge.replaceSubrange(0..<8, with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        #expect(throws: FormatError.self) { try RecordCodec.decode(huge) }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var junk = payload
            for _ in 0..<4 { junk[Int.random(in: 0..<min(200, junk.count), using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = try? RecordCodec.decode(junk)  // must not crash
        }
    }

    @Test(arguments: [(2, 0), (2, 1), (2, 15), (2, 16), (2, 37), (4, 19), (8, 5)])
    func bytePlanesRoundTrip(elementSize: Int, count: Int) {
        let bytes = (0..<(elementSize * count)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        var planes: [UInt8] = [9]  // appends after what is there
        ByteShuffle.appendPlanes(of: bytes, elementSize: elementSize, to: &planes)
        #expect(planes.count == bytes.count + 1 && planes[0] == 9)
        for i in 0..<count {
            for j in 0..<elementSize { #expect(planes[1 + j * count + i] == bytes[i * elementSize + j]) }
        }
        let back = planes.withUnsafeBytes { ByteShuffle.joinPlanes(UnsafeRawBufferPointer(rebasing: $0[1...]), elementSize: elementSize) }
        #expect(back == bytes)
    }

    /// What the writer stores: the payload with byte planes, and the SHA-256 of the plain payload.
    @Test func storedFormUnshufflesToThePayload() throws {
        let r = makeRecord(latent: .f32, k: 4, c: 2)
        let payload = RecordCodec.encode(r)
        var shuffled: [UInt8] = [1, 2, 3]  // replaced, not appended to
        let digest = RecordCodec.encodeForStorage(r, shuffled: true, into: &shuffled)
        #expect(shuffled != payload && shuffled.count == payload.count)
        #expect(Array(digest) == Array(SHA256.hash(data: payload)))
        #expect(try ByteShuffle.unshuffle(shuffled) == payload)
        var plain: [UInt8] = []
        _ = RecordCodec.encodeForStorage(r, shuffled: false, into: &plain)
        #expect(plain == payload)
        #expect(try shuffled.withUnsafeBytes { try RecordCodec.decode($0, shuffled: true) } == r)
        // First plane of the latents holds byte 0 of each of the 8 floats.
        let header = try payload.withUnsafeBytes { try Safetensors.parseHeader($0) }
        let base = header.dataOffset + header.entry("latents")!.byteRange.lowerBound
        for i in 0..<8 { #expect(shuffled[base + i] == payload[base + 4 * i]) }
    }

    /// The deep verifier's checker skips the tensor part of headers it has seen; on records that
    /// share a layout, valid or with damaged metadata, it must answer as the full check does.
    @Test func recordCheckerAgreesWithTheFullCheck() throws {
        func outcome(_ stored: [UInt8], _ check: (UnsafeRawBufferPointer) throws(FormatError) -> (id: String, view: Int, layout: RecordLayout)) -> String {
            stored.withUnsafeBytes { raw in
                do { let (id, view, layout) = try check(raw); return "\(id) \(view) \(layout)" } catch let e as FormatError { return "\(e.kind)" } catch { return "\(error)" }
            }
        }
        let checker = RecordChecker()
        var rng = SplitMix64(seed: 3)
        // Edits that keep the length, so the layout still matches and only the metadata differs.
        let edits: [(String, String)] = [(#""view":"0""#, #""view":"7""#), (#""view":"0""#, #""view":"x""#),
                                         (#""label":"0""#, #""label":"+""#), (#""mtok.format":"1""#, #""mtok.format":"2""#),
                                         (#""crop_box":"80,"#, #""crop_box":"-0,"#), (#""id":"#, #""ix":"#),
                                         (#""source_size":"640"#, #""source_size":"64x"#), (#""label":"0""#, "\"label\":\"\u{7F}\"")]
        for i in 0..<60 {
            var r = makeRecord(k: 16, c: 4, n: 25, id: "img/\(i % 7)", seed: 1)
            r.view = 0
            var stored: [UInt8] = []
            _ = RecordCodec.encodeForStorage(r, shuffled: true, into: &stored)
            if i % 3 == 1 {
                // Same length, so the layout still matches: only the metadata text differs.
                let (from, to) = edits[Int(rng.next() % UInt64(edits.count))]
                let (f, t) = (Array(from.utf8), Array(to.utf8))
                #expect(f.count == t.count)
                if let at = (0...(stored.count - f.count)).first(where: { Array(stored[$0..<($0 + f.count)]) == f }) {
                    stored.replaceSubrange(at..<(at + f.count), with: t)
                }
            } else if i % 3 == 2 {
                stored[8 + Int(rng.next() % 120)] = UInt8(truncatingIfNeeded: rng.next())
            }
            #expect(outcome(stored) { raw throws(FormatError) in try checker.check(stored: raw, shuffled: true) }
                    == outcome(stored) { raw throws(FormatError) in try RecordCodec.check(stored: raw, shuffled: true) })
        }
    }

    /// The writer builds headers directly; they must be the bytes the generic serializer writes,
    /// whatever the id holds (quotes, backslashes, control characters, non-ASCII) and whichever
    /// tensors are present.
    @Test(arguments: ["a/b.jpg", "quote\"back\\slash", "tab\tnew\nline\u{1}", "ünïcødé/猫.png", "x"])
    func writerHeaderIsTheSerializersHeader(id: String) {
        for (logvar, label, view) in [(false, -1, 0), (true, 999, 65535), (false, 12, 7)] {
            var r = makeRecord(latent: .f16, index: .u16, group: .u8, k: 9, c: 3, n: 40, logvar: logvar, id: id)
            r.label = label
            r.view = view
            r.sourceSHA256 = logvar ? "" : r.sourceSHA256
            var stored: [UInt8] = []
            _ = RecordCodec.encodeForStorage(r, shuffled: false, into: &stored)
            #expect(stored == RecordCodec.encode(r))
        }
    }
}

struct FloatConversionTests {
    @Test func bf16RoundsToNearestEven() {
        #expect(FloatConversion.bf16Bits(1.0) == 0x3F80)
        #expect(FloatConversion.bf16Bits(-2.0) == 0xC000)
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
        #expect(FloatConversion.bf16Bits(1 + 1.0 / 256) == 0x3F80)
        // 1 + 3·2^-8 is halfway too: rounds up to the even neighbour 0x3F82.
        #expect(FloatConversion.bf16Bits(1 + 3.0 / 256) == 0x3F82)
        #expect(FloatConversion.float(bf16Bits: FloatConversion.bf16Bits(.infinity)) == .infinity)
        #expect(FloatConversion.float(bf16Bits: FloatConversion.bf16Bits(.nan)).isNaN)
    }

    @Test func f16MatchesIEEEHalf() {
        #expect(FloatConversion.f16Bits(1.0) == 0x3C00)
        #expect(FloatConversion.f16Bits(65504) == 0x7BFF)
        #expect(FloatConversion.float(f16Bits: 0x3555) == Float(Float16(bitPattern: 0x3555)))
    }
}
