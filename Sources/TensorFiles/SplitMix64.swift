/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, seedable generator whose output is
/// fully specified, so the same seed gives the same numbers in Swift, Python or C. Used for
/// seeded model weights, synthetic records and the stream order (Schemas/STREAM.md).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public static let golden: UInt64 = 0x9E37_79B9_7F4A_7C15
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// The output function: a bijective 64-bit mix.
    @inline(__always)
    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= Self.golden
        return Self.mix(state)
    }
}
