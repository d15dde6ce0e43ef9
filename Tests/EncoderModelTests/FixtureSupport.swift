import Foundation
import TensorFiles
@testable import EncoderModel

/// Reads the golden files written by tools/encoder_fixtures.py.
enum Fixture {
    static func path(_ name: String) -> String {
        guard let url = Bundle.module.resourceURL?.appendingPathComponent("Fixtures/" + name) else {
            fatalError("test bundle has no resources")
        }
        return url.path
    }

    static func tensors(_ name: String) throws -> [String: NamedTensor] {
        let file = try MappedFile(path: path(name))
        let decoded = try Safetensors.decode(file.bytes)
        return Dictionary(uniqueKeysWithValues: decoded.tensors.map { ($0.name, $0) })
    }

    static func floats(_ t: NamedTensor) -> [Float] {
        var out = [Float](repeating: 0, count: t.shape.reduce(1, *))
        t.bytes.withUnsafeBytes { raw in out.withUnsafeMutableBufferPointer { FloatConversion.decode(raw, as: t.dtype, into: $0) } }
        return out
    }

    static func integers<T: FixedWidthInteger>(_ t: NamedTensor, as: T.Type) -> [T] {
        t.bytes.withUnsafeBytes { raw in
            (0..<(raw.count / MemoryLayout<T>.size)).map {
                T(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self))
            }
        }
    }

    /// The fixture images a case uses (its `images` tensor), `[3 × 64 × 64]` each.
    static func images(case name: String) throws -> [[Float]] {
        let ids = integers(try tensors(name + ".expected.safetensors")["images"]!, as: Int32.self)
        let t = try tensors("inputs.safetensors")["input"]!
        let all = floats(t)
        let per = all.count / t.shape[0]
        return ids.map { Array(all[(Int($0) * per)..<((Int($0) + 1) * per)]) }
    }

    /// Weights for a fixture case (tiny-nomerge reuses the tiny weights under its own config).
    static func weights(case name: String) throws -> EncoderWeights {
        switch name {
        case "tiny-nomerge":
            return try EncoderWeights.load(path: path("tiny.safetensors"),
                                           config: EncoderPresets.named("tiny-nomerge")!.config)
        default:
            return try EncoderWeights.load(path: path(name + ".safetensors"))
        }
    }
}

/// Largest |a − b| / (1 + |b|) over two equally long arrays.
func maxScaledError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
    var worst: Float = 0
    for i in a.indices {
        let e = abs(a[i] - b[i]) / (1 + abs(b[i]))
        if !(e <= worst) { worst = e.isNaN ? .infinity : e }
    }
    return worst
}
