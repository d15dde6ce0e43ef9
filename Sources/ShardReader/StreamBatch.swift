/// Float element type a stream delivers latents (and log-variances) in.
public enum LatentFormat: String, Sendable, CaseIterable {
    case float32 = "f32"
    case float16 = "f16"
    case bfloat16 = "bf16"
}

/// Latents of a whole batch in one contiguous row-major [B, K, C] array of the requested type.
/// 16-bit formats are kept as raw bit patterns so no conversion is needed when the cache stores
/// the same type (a trainer hands the bits straight to its framework).
public enum LatentArray: Sendable, Equatable {
    case float32([Float])
    case float16([UInt16])
    case bfloat16([UInt16])

    /// Element count.
    public var count: Int {
        switch self {
        case let .float32(a): a.count
        case let .float16(a), let .bfloat16(a): a.count
        }
    }

    /// The values as Float (exact for every format: 16-bit floats widen without rounding).
    public var floats: [Float] {
        switch self {
        case let .float32(a): a
        case let .float16(a): a.map { Float(Float16(bitPattern: $0)) }
        case let .bfloat16(a): a.map { Float(bitPattern: UInt32($0) << 16) }
        }
    }
}

/// One batch of a `TokenStream`: `count` consecutive samples of a rank, as contiguous arrays.
public struct StreamBatch: Sendable {
    /// The rank-local sample number of row 0 (samples counted from the stream's start).
    public var firstSample: Int
    /// Global record index of each row.
    public var records: [Int]
    public var count: Int { records.count }
    /// K, C and N (the same for every row).
    public var tokens: Int
    public var channels: Int
    public var patches: Int
    /// [B, K, C]
    public var latents: LatentArray
    /// [B, K, C] when the records carry a log-variance.
    public var logvar: LatentArray?
    /// [B, K]
    public var indices: [UInt32]
    /// [B, N]
    public var groups: [UInt16]
    /// [B]
    public var labels: [Int32]
    public var ids: [String]
    public var views: [Int]
    /// Sum of the uncompressed payload sizes, for throughput figures.
    public var payloadBytes: Int
}
