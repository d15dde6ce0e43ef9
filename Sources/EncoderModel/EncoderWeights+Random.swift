import Foundation
import TensorFiles

/// Seeded random test weights (spec §7): conv/linear weights N(0,1)/√fan_in, biases, norm biases
/// and the class token N(0, 0.2²), norm weights and LayerScale gammas 1 + N(0, 0.3²), codebook N(0,1).
///
/// PyTorch's own init would hide the transformer (LayerScale 1e-5); this recipe exercises every
/// path. The generator is SplitMix64 + Box–Muller in binary64, so a seed gives the same bytes on
/// every platform. Tensors are drawn in ``EncoderConfig/tensorSpecs`` order from one stream.
extension EncoderWeights {
    public static let untrainedKey = "mtok.untrained"

    /// A phrase for messages when weights with this metadata are untrained (`mtok model init`
    /// writes them; their tokens carry no meaning), else nil.
    public static func untrainedNote(metadata: [String: String]) -> String? {
        guard metadata[untrainedKey] == "true" else { return nil }
        let from = [metadata["mtok.preset"].map { "preset \($0)" }, metadata["mtok.seed"].map { "seed \($0)" }].compactMap { $0 }
        return "UNTRAINED random weights\(from.isEmpty ? "" : " (" + from.joined(separator: ", ") + ")"): tokens of this model carry no meaning; README \"Getting weights\" says how to get a trained one"
    }

    public static func random(config: EncoderConfig, seed: UInt64) throws -> EncoderWeights {
        try config.validate()
        var rng = SeededNormal(seed: seed)
        var arrays: [String: (shape: [Int], values: [Float])] = [:]
        for spec in config.tensorSpecs {
            let count = spec.shape.reduce(1, *)
            var v = [Float](repeating: 0, count: count)
            let (mean, std): (Double, Double)
            switch spec.role {
            case .convWeight, .linearWeight: (mean, std) = (0, 1 / Double(spec.fanIn).squareRoot())
            case .bias, .normBias, .classToken: (mean, std) = (0, 0.2)
            case .normWeight, .gamma: (mean, std) = (1, 0.3)
            case .codebook: (mean, std) = (0, 1)
            }
            for i in 0..<count { v[i] = Float(mean + std * rng.next()) }
            arrays[spec.name] = (spec.shape, v)
        }
        return try EncoderWeights(config: config, arrays: arrays,
                                  metadata: [untrainedKey: "true", "mtok.seed": String(seed)])
    }
}

/// Standard normal draws from SplitMix64 (Box–Muller, both outputs used).
struct SeededNormal {
    private var bits: SplitMix64
    private var spare: Double?

    init(seed: UInt64) { bits = SplitMix64(seed: seed) }

    private mutating func nextBits() -> UInt64 { bits.next() }

    /// Uniform in (0, 1], never 0 so the logarithm is finite.
    private mutating func uniform() -> Double { (Double(nextBits() >> 11) + 1) * 0x1p-53 }

    mutating func next() -> Double {
        if let s = spare {
            spare = nil
            return s
        }
        let u1 = uniform(), u2 = uniform()
        let radius = (-2 * Foundation.log(u1)).squareRoot()
        let angle = 2 * Double.pi * u2
        spare = radius * Foundation.sin(angle)
        return radius * Foundation.cos(angle)
    }
}
