import ShardFormat
import TensorFiles
internal import ZstdCore

/// Decodes records straight from their stored frames into a batch's contiguous arrays.
///
/// `TokenCache.record(at:)` builds a `TokenRecord` (copies per tensor, a shuffled and an
/// unshuffled payload); streaming at the speed of zstd needs fewer passes: each tensor is read
/// out of its byte planes once, into a small scratch buffer, and converted into its place in the
/// batch. The checks are those of Schemas/FORMAT.md section 4.1, as `RecordCodec` applies them.
///
/// Not thread-safe (it owns a zstd context and scratch space): one per thread.
final class BatchDecoder {
    let cache: TokenCache
    let format: LatentFormat
    private let decompressor = ZstdDecompressor()
    private let shuffled: Bool
    private var scratch16: [UInt16] = []
    private var scratch32: [UInt32] = []

    init(cache: TokenCache, format: LatentFormat) {
        self.cache = cache
        self.format = format
        shuffled = cache.manifest.compression.shuffle == Manifest.byteShuffle
    }

    /// A record's stored (possibly byte-shuffled) payload and its parsed header.
    struct Stored {
        var bytes: [UInt8]
        var header: SafetensorsHeader
        var location: CacheLocation
        var latents: TensorEntry
        var logvar: TensorEntry?
        var indices: TensorEntry
        var groups: TensorEntry
        var id: String
        var view: Int
        var label: Int
    }

    func load(_ index: Int) throws -> Stored {
        let (s, local) = try cache.locate(index)
        let shard = cache.shards[s]
        var location = CacheLocation(shard: shard.file, chunk: local / shard.recordsPerChunk, index: index)
        let bytes: [UInt8] = try shard.withFrame(local: local, globalIndex: index) { frame in
            do throws(ZstdError) {
                return try decompressor.decompress(frame, maxSize: RecordCodec.maxPayloadBytes)
            } catch {
                throw CacheError(error.kind == .checksumMismatch ? .checksumMismatch : .corruptRecord, error.description,
                                 at: location)
            }
        }
        // The header is never shuffled, so it parses from the stored bytes.
        let header: SafetensorsHeader
        do {
            header = try bytes.withUnsafeBytes { raw throws(SafetensorsError) in try Safetensors.parseHeader(raw) }
        } catch {
            throw CacheError(.badRecord, "\(error)", at: location)
        }
        func bad(_ message: String) -> CacheError { CacheError(.badRecord, message, at: location) }
        let m = header.metadata
        guard m["mtok.format"] == RecordCodec.formatVersion else {
            throw CacheError(.unknownVersion, "record format \(m["mtok.format"] ?? "none"), this reader knows \(RecordCodec.formatVersion)",
                             at: location)
        }
        var latents: TensorEntry?, logvar: TensorEntry?, indices: TensorEntry?, groups: TensorEntry?
        for (name, entry) in header.entries {
            switch name {
            case "latents": latents = entry
            case "logvar": logvar = entry
            case "indices": indices = entry
            case "groups": groups = entry
            default: throw bad("unexpected tensor \(name)")
            }
        }
        guard let latents, let indices, let groups else { throw bad("missing tensor: latents, indices and groups are required") }
        guard [.f32, .f16, .bf16].contains(latents.dtype), latents.shape.count == 2 else {
            throw bad("latents must be F32, F16 or BF16 [K, C], got \(latents.dtype.rawValue) \(latents.shape)")
        }
        let k = latents.shape[0]
        if let logvar, logvar.dtype != latents.dtype || logvar.shape != latents.shape {
            throw bad("logvar must match latents")
        }
        guard [.u16, .u32].contains(indices.dtype), indices.shape == [k] else {
            throw bad("indices must be U16 or U32 [\(k)], got \(indices.dtype.rawValue) \(indices.shape)")
        }
        guard [.u8, .u16].contains(groups.dtype), groups.shape.count == 1, groups.shape[0] >= k else {
            throw bad("groups must be U8 or U16 [N] with N ≥ K = \(k), got \(groups.dtype.rawValue) \(groups.shape)")
        }
        guard let id = m["id"], let view = m["view"].flatMap({ Int($0) }), view >= 0,
              let label = m["label"].flatMap({ Int($0) }), label >= -1
        else { throw bad("metadata needs id, view ≥ 0 and label ≥ -1") }
        location.id = id
        location.view = view
        return Stored(bytes: bytes, header: header, location: location, latents: latents, logvar: logvar,
                      indices: indices, groups: groups, id: id, view: view, label: label)
    }

    /// Decodes `records` (global indices) into one batch.
    func batch(_ records: [Int], firstSample: Int) throws -> StreamBatch {
        precondition(!records.isEmpty)
        let first = try load(records[0])
        let k = first.latents.shape[0], c = first.latents.shape[1], n = first.groups.shape[0]
        let b = records.count
        let hasLogvar = first.logvar != nil
        var indices = [UInt32](); indices.reserveCapacity(b * k)
        var groups = [UInt16](); groups.reserveCapacity(b * n)
        var labels = [Int32](); labels.reserveCapacity(b)
        var ids = [String](); ids.reserveCapacity(b)
        var views = [Int](); views.reserveCapacity(b)
        var payloadBytes = 0
        let elementSize = format == .float32 ? 4 : 2
        let kc = k * c
        // One raw buffer per float tensor, filled row by row; arrays are made from them once.
        let latentBuffer = UnsafeMutableRawPointer.allocate(byteCount: max(1, b * kc * elementSize), alignment: 16)
        defer { latentBuffer.deallocate() }
        let logvarBuffer = hasLogvar ? UnsafeMutableRawPointer.allocate(byteCount: max(1, b * kc * elementSize), alignment: 16) : nil
        defer { logvarBuffer?.deallocate() }

        for row in 0..<b {
            let r = row == 0 ? first : try load(records[row])
            guard r.latents.shape == [k, c], r.groups.shape == [n], (r.logvar != nil) == hasLogvar else {
                throw CacheError(.shapeMismatch, "K, C, N = \(r.latents.shape), \(r.groups.shape[0]); the batch has \(k), \(c), \(n)",
                                 at: r.location)
            }
            try r.bytes.withUnsafeBytes { raw in
                let data = UnsafeRawBufferPointer(rebasing: raw[r.header.dataOffset...])
                convertFloats(data, r.latents, into: latentBuffer + row * kc * elementSize)
                if let lv = r.logvar, let logvarBuffer { convertFloats(data, lv, into: logvarBuffer + row * kc * elementSize) }
                readUnsigned(data, r.indices) { value in indices.append(value) }
                var maxGroup: UInt32 = 0
                readUnsigned(data, r.groups) { value in
                    maxGroup = max(maxGroup, value)
                    groups.append(UInt16(truncatingIfNeeded: value))
                }
                guard n == 0 || Int(maxGroup) < k else {
                    throw CacheError(.badRecord, "group id \(maxGroup) is not a kept token (K = \(k))", at: r.location)
                }
            }
            labels.append(Int32(r.label))
            ids.append(r.id)
            views.append(r.view)
            payloadBytes += r.bytes.count
        }
        func array(_ p: UnsafeMutableRawPointer) -> LatentArray {
            switch format {
            case .float32: .float32(Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: Float.self), count: b * kc)))
            case .float16: .float16(Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: UInt16.self), count: b * kc)))
            case .bfloat16: .bfloat16(Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: UInt16.self), count: b * kc)))
            }
        }
        return StreamBatch(firstSample: firstSample, records: records, tokens: k, channels: c, patches: n,
                           latents: array(latentBuffer), logvar: logvarBuffer.map(array), indices: indices, groups: groups,
                           labels: labels, ids: ids, views: views, payloadBytes: payloadBytes)
    }

    /// Reads a float tensor out of its (possibly shuffled) bytes and writes it in `format`.
    private func convertFloats(_ data: UnsafeRawBufferPointer, _ e: TensorEntry, into out: UnsafeMutableRawPointer) {
        let count = e.byteRange.count / e.dtype.byteSize
        let src = UnsafeRawBufferPointer(rebasing: data[e.byteRange])
        if e.dtype == .f32 {
            if scratch32.count < count { scratch32 = [UInt32](repeating: 0, count: count) }
            scratch32.withUnsafeMutableBufferPointer { bits in
                load32(src, count: count, into: bits)
                switch format {
                case .float32:
                    out.copyMemory(from: bits.baseAddress!, byteCount: count * 4)
                case .bfloat16:
                    let dst = out.assumingMemoryBound(to: UInt16.self)
                    for i in 0..<count { dst[i] = FloatConversion.bf16Bits(Float(bitPattern: bits[i])) }
                case .float16:
                    let dst = out.assumingMemoryBound(to: UInt16.self)
                    for i in 0..<count { dst[i] = Float16(Float(bitPattern: bits[i])).bitPattern }
                }
            }
            return
        }
        if scratch16.count < count { scratch16 = [UInt16](repeating: 0, count: count) }
        scratch16.withUnsafeMutableBufferPointer { bits in
            load16(src, count: count, into: bits)
            switch (e.dtype, format) {
            case (.bf16, .bfloat16), (.f16, .float16):
                out.copyMemory(from: bits.baseAddress!, byteCount: count * 2)
            case (.bf16, .float32):
                let dst = out.assumingMemoryBound(to: UInt32.self)
                for i in 0..<count { dst[i] = UInt32(bits[i]) << 16 }
            case (.f16, .float32):
                let dst = out.assumingMemoryBound(to: Float.self)
                for i in 0..<count { dst[i] = Float(Float16(bitPattern: bits[i])) }
            case (.bf16, .float16):
                let dst = out.assumingMemoryBound(to: UInt16.self)
                for i in 0..<count { dst[i] = Float16(Float(bitPattern: UInt32(bits[i]) << 16)).bitPattern }
            default:  // f16 → bf16
                let dst = out.assumingMemoryBound(to: UInt16.self)
                for i in 0..<count { dst[i] = FloatConversion.bf16Bits(Float(Float16(bitPattern: bits[i]))) }
            }
        }
    }

    /// Visits an unsigned tensor's values in order.
    private func readUnsigned(_ data: UnsafeRawBufferPointer, _ e: TensorEntry, _ body: (UInt32) -> Void) {
        let src = UnsafeRawBufferPointer(rebasing: data[e.byteRange])
        switch e.dtype {
        case .u8:
            for v in src { body(UInt32(v)) }
        case .u16:
            let count = src.count / 2
            if scratch16.count < count { scratch16 = [UInt16](repeating: 0, count: count) }
            scratch16.withUnsafeMutableBufferPointer { bits in
                load16(src, count: count, into: bits)
                for i in 0..<count { body(UInt32(bits[i])) }
            }
        default:
            let count = src.count / 4
            if scratch32.count < count { scratch32 = [UInt32](repeating: 0, count: count) }
            scratch32.withUnsafeMutableBufferPointer { bits in
                load32(src, count: count, into: bits)
                for i in 0..<count { body(bits[i]) }
            }
        }
    }

    /// 16-bit little-endian elements, from two byte planes when the cache is shuffled.
    private func load16(_ src: UnsafeRawBufferPointer, count n: Int, into out: UnsafeMutableBufferPointer<UInt16>) {
        if shuffled {
            let p = src.baseAddress!.assumingMemoryBound(to: UInt8.self)
            for i in 0..<n { out[i] = UInt16(p[i]) | UInt16(p[n + i]) << 8 }
        } else {
            for i in 0..<n { out[i] = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        }
    }

    /// 32-bit little-endian elements, from four byte planes when the cache is shuffled.
    private func load32(_ src: UnsafeRawBufferPointer, count n: Int, into out: UnsafeMutableBufferPointer<UInt32>) {
        if shuffled {
            let p = src.baseAddress!.assumingMemoryBound(to: UInt8.self)
            for i in 0..<n {
                out[i] = UInt32(p[i]) | UInt32(p[n + i]) << 8 | UInt32(p[2 * n + i]) << 16 | UInt32(p[3 * n + i]) << 24
            }
        } else {
            for i in 0..<n { out[i] = UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
        }
    }
}
