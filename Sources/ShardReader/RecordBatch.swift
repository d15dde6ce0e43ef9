import ShardFormat
import TensorFiles

/// Records gathered into contiguous arrays, ready to hand to a trainer.
public struct RecordBatch: Sendable {
    public var count: Int
    public var tokens: Int
    public var channels: Int
    public var patches: Int
    /// [B, K, C], row-major.
    public var latents: [Float]
    /// [B, K, C] when every record has a log-variance.
    public var logvar: [Float]?
    /// [B, K]
    public var indices: [UInt32]
    /// [B, N]
    public var groups: [UInt16]
    /// [B]
    public var labels: [Int32]
    public var ids: [String]
    public var views: [Int]
}

extension TokenCache {
    /// Reads `indices` (in that order) into one batch. Every record must have the same K, C
    /// and N; otherwise `CacheError.shapeMismatch` names the first record that differs.
    public func batch(_ indices: [Int]) throws -> RecordBatch {
        var out = RecordBatch(count: indices.count, tokens: 0, channels: 0, patches: 0, latents: [], logvar: [],
                              indices: [], groups: [], labels: [], ids: [], views: [])
        // All the batch's chunks are asked for first, so a cold cache reads them side by side.
        if indices.count > 1 { ChunkReadAhead(cache: self).ask(indices[...]) }
        for (b, i) in indices.enumerated() {
            let r = try record(at: i)
            if b == 0 {
                out.tokens = r.tokenCount
                out.channels = r.channelCount
                out.patches = r.patchCount
                let n = indices.count
                out.latents.reserveCapacity(n * r.tokenCount * r.channelCount)
                out.indices.reserveCapacity(n * r.tokenCount)
                out.groups.reserveCapacity(n * r.patchCount)
            } else if r.tokenCount != out.tokens || r.channelCount != out.channels || r.patchCount != out.patches {
                throw CacheError(.shapeMismatch,
                                 "K, C, N = \(r.tokenCount), \(r.channelCount), \(r.patchCount); the batch has \(out.tokens), \(out.channels), \(out.patches)",
                                 at: CacheLocation(index: i, id: r.id, view: r.view))
            }
            out.latents += r.latentsAsFloat()
            if let lv = r.logvarAsFloat(), out.logvar != nil { out.logvar! += lv } else { out.logvar = nil }
            out.indices += r.indicesAsUInt32()
            out.groups += r.groupsAsUInt32().map { UInt16(truncatingIfNeeded: $0) }
            out.labels.append(Int32(r.label))
            out.ids.append(r.id)
            out.views.append(r.view)
        }
        if indices.isEmpty { out.logvar = nil }
        return out
    }
}
