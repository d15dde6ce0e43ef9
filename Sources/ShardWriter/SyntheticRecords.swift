public import ShardFormat
public import TensorFiles
import Foundation

/// Generated records with the shapes and value statistics of real encoder output, for demos,
/// benchmarks and tests that must not need the encoder.
///
/// Latents are smooth fields over the token grid (a few low-frequency waves per channel plus
/// small noise, unit scale), as a trained VAE's are — random bytes would make every compression
/// figure meaningless. Indices follow a Zipf-like law over the codebook (real codebooks are used
/// unevenly). Groups simulate merging: the first K patches own one group each, the others join a
/// nearby patch's group.
public struct SyntheticRecords: Sendable {
    public var tokens = 256
    public var patches = 256
    public var channels = 16
    public var latentDType: TensorDType = .bf16
    public var indexDType: TensorDType = .u32
    public var groupDType: TensorDType = .u16
    public var codebookSize = 16384
    public var withLogvar = false
    public var seed: UInt64 = 0
    public var classes = 1000

    public init() {}

    /// Record `i` (deterministic in `seed` and `i`), with id "synthetic/%08d" and view 0.
    public func record(_ i: Int) -> TokenRecord {
        var rng = SplitMix64(seed: seed &* SplitMix64.golden &+ UInt64(i))
        let side = max(1, Int(Double(tokens).squareRoot()))
        var latents = [Float](repeating: 0, count: tokens * channels)
        for c in 0..<channels {
            let waves = (0..<3).map { _ in
                (fx: rng.uniform() * 0.6, fy: rng.uniform() * 0.6, phase: rng.uniform() * 6.283, amp: 0.3 + rng.uniform())
            }
            let bias = rng.normal() * 0.5
            for k in 0..<tokens {
                let x = Float(k % side), y = Float(k / side)
                var v = bias
                for w in waves { v += w.amp * sin(w.fx * x + w.fy * y + w.phase) }
                latents[k * channels + c] = v + 0.05 * rng.normal()
            }
        }
        var indexBytes = [UInt8]()
        for _ in 0..<tokens {
            // Zipf-like: u^3 concentrates mass on small ids; a fixed scramble spreads them out.
            let u = rng.uniform()
            let raw = Int(Float(codebookSize) * u * u * u) % codebookSize
            // In 64 unsigned bits: codebooks up to 2^32 would overflow a signed product.
            let id = Int((UInt64(raw) &* 2_654_435_761) % UInt64(codebookSize))
            if indexDType == .u16 {
                withUnsafeBytes(of: UInt16(id).littleEndian) { indexBytes += $0 }
            } else {
                withUnsafeBytes(of: UInt32(id).littleEndian) { indexBytes += $0 }
            }
        }
        var groups = [Int](repeating: 0, count: patches)
        for j in 0..<patches {
            groups[j] = j < tokens ? j : groups[max(0, j - 1 - Int(rng.next() % 16))]
        }
        var groupBytes = [UInt8]()
        for g in groups {
            if groupDType == .u8 { groupBytes.append(UInt8(g)) } else { withUnsafeBytes(of: UInt16(g).littleEndian) { groupBytes += $0 } }
        }
        var logvar: NamedTensor?
        if withLogvar {
            let lv = (0..<(tokens * channels)).map { _ in -4 + 0.2 * rng.normal() }
            logvar = NamedTensor(name: "logvar", dtype: latentDType, shape: [tokens, channels],
                                 bytes: FloatConversion.encode(lv, as: latentDType))
        }
        let w = 300 + Int(rng.next() % 400), h = 300 + Int(rng.next() % 400)
        let s = min(w, h)
        return TokenRecord(
            id: String(format: "synthetic/%08d", i), view: 0, label: Int(rng.next() % UInt64(max(1, classes))),
            sourceWidth: w, sourceHeight: h, cropBox: CropBox(x: (w - s) / 2, y: (h - s) / 2, width: s, height: s),
            sourceSHA256: String(repeating: "0", count: 64),
            latents: NamedTensor(name: "latents", dtype: latentDType, shape: [tokens, channels],
                                 bytes: FloatConversion.encode(latents, as: latentDType)),
            logvar: logvar,
            indices: NamedTensor(name: "indices", dtype: indexDType, shape: [tokens], bytes: indexBytes),
            groups: NamedTensor(name: "groups", dtype: groupDType, shape: [patches], bytes: groupBytes))
    }

    /// The settings recorded in a synthetic cache's manifest.
    public var settings: JSONValue {
        .object([
            ("source", .string("synthetic")),
            ("tokens", .number(Double(tokens))), ("patches", .number(Double(patches))),
            ("channels", .number(Double(channels))), ("latent_dtype", .string(latentDType.rawValue)),
            ("index_dtype", .string(indexDType.rawValue)), ("group_dtype", .string(groupDType.rawValue)),
            ("codebook_size", .number(Double(codebookSize))), ("logvar", .bool(withLogvar)),
            ("seed", .number(Double(seed))),
        ])
    }
}

extension SplitMix64 {
    /// Uniform in [0, 1).
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) }

    /// Standard normal (Box–Muller).
    mutating func normal() -> Float {
        let u1 = max(uniform(), 1e-7), u2 = uniform()
        return (-2 * log(u1)).squareRoot() * cos(6.2831855 * u2)
    }
}
