import Foundation  // memcmp
import ShardFormat
import TensorFiles
internal import ZstdCore
internal import CReaderKernels

/// Decodes records straight from their stored frames into a batch's contiguous arrays.
///
/// `TokenCache.record(at:)` builds a `TokenRecord` (a JSON parse, copies per tensor, a shuffled
/// and an unshuffled payload); streaming near the speed of zstd needs less: the header's metadata
/// is scanned and its tensor layout checked once per distinct layout (`MetadataScan`), and each
/// tensor is read out of its byte planes straight into its place in the batch's arrays (bf16, the
/// common case, in one vectorized pass). The checks are those of Schemas/FORMAT.md section 4.1,
/// as `RecordCodec` applies them.
///
/// Not thread-safe (it owns a zstd context and scratch space): one per thread.
final class BatchDecoder {
    let cache: TokenCache
    let format: LatentFormat
    private let decompressor = ZstdDecompressor()
    private let shuffled: Bool
    private var scratch16: [UInt16] = []
    private var scratch32: [UInt32] = []
    /// Arrays decoded into a recycled batch's memory (tests check that recycling works).
    package private(set) var reusedArrays = 0

    init(cache: TokenCache, format: LatentFormat) {
        self.cache = cache
        self.format = format
        shuffled = cache.manifest.compression.shuffle == Manifest.byteShuffle
    }

    /// The tensors of a payload, checked against FORMAT.md 4.1.
    struct Layout {
        var latents: TensorEntry
        var logvar: TensorEntry?
        var indices: TensorEntry
        var groups: TensorEntry
    }

    /// A record's layout and identity; its stored (possibly byte-shuffled) payload is passed
    /// alongside, in the decompressor's reused buffer.
    struct Stored {
        var payloadCount: Int
        var dataOffset: Int
        var layout: Layout
        var location: CacheLocation
        var id: String
        var view: Int
        var label: Int
    }

    /// Header tails (everything after `__metadata__`) already checked, with the payload length
    /// they were checked for. Records of one cache share one or two layouts, so after the first
    /// record only the metadata is parsed; the JSON parser runs again only for a new layout.
    private var layouts: [(tail: [UInt8], payloadCount: Int, dataOffset: Int, layout: Layout)] = []

    /// Decompresses record `index` into a reused buffer and passes it with its checked layout to
    /// `body`: no allocation per record, and the payload is still in cache when `body` reads it.
    /// `found`: the record's frame when `findFrames` already found it.
    func load<T>(_ index: Int, found: UnsafeRawBufferPointer? = nil, _ body: (Stored, UnsafeRawBufferPointer) throws -> T) throws -> T {
        let (s, local) = try cache.locate(index)
        let shard = cache.shards[s]
        var location = CacheLocation(shard: shard.file, chunk: local / shard.recordsPerChunk, index: index)
        func decode(_ frame: UnsafeRawBufferPointer) throws -> T {
            do {
                return try decompressor.withDecompressed(frame, maxSize: RecordCodec.maxPayloadBytes) { bytes in
                    try body(try check(bytes, &location), bytes)
                }
            } catch let error as ZstdError {
                throw CacheError(error.kind == .checksumMismatch ? .checksumMismatch : .corruptRecord, error.description,
                                 at: location)
            }
        }
        if let found { return try decode(found) }
        return try shard.withFrame(local: local, globalIndex: index) { try decode($0) }
    }

    /// The frames of `records` in sealed shards, found before any is decoded, with their first
    /// bytes prefetched: each chunk header and frame start is a cache miss (the stream visits a
    /// chunk once per window), and asking for all of a batch's at once lets the memory system
    /// serve them side by side instead of one stall per record. Nil where a frame is not in a
    /// sealed shard or cannot be found: `load` then reads it itself and reports any fault.
    private func findFrames(_ records: [Int]) -> [UnsafeRawBufferPointer?] {
        var chunks = [(chunk: UnsafeRawBufferPointer, slot: Int, limit: Int)?](repeating: nil, count: records.count)
        for (row, index) in records.enumerated() {
            guard let (s, local) = try? cache.locate(index) else { continue }
            let shard = cache.shards[s]
            guard let chunk = shard.sealedChunk(local / shard.recordsPerChunk) else { continue }
            mtok_prefetch(chunk.baseAddress!)
            chunks[row] = (chunk, local % shard.recordsPerChunk, shard.recordsPerChunk)
        }
        return chunks.map { entry in
            guard let entry, let frame = try? Chunk.frame(entry.chunk, slot: entry.slot, recordsPerChunk: entry.limit),
                  let start = frame.baseAddress else { return nil }
            mtok_prefetch(start)
            mtok_prefetch(start + min(64, frame.count))
            return frame
        }
    }

    /// The layout and identity of a decompressed payload, checked as FORMAT.md 4.1 says.
    private func check(_ bytes: UnsafeRawBufferPointer, _ location: inout CacheLocation) throws -> Stored {
        // The header is never shuffled, so it parses from the stored bytes.
        let fast = MetadataScan(payload: bytes)
        if let fast, let cached = layouts.first(where: { entry in
            entry.payloadCount == bytes.count && entry.tail.count == fast.tail.count
                && entry.tail.withUnsafeBytes { memcmp($0.baseAddress!, bytes.baseAddress! + fast.tail.lowerBound, $0.count) } == 0
        }), let (id, view, label) = fast.checked() {
            location.id = id
            location.view = view
            return Stored(payloadCount: bytes.count, dataOffset: cached.dataOffset, layout: cached.layout, location: location,
                          id: id, view: view, label: label)
        }
        // Slow path: the whole header through the strict parser, then the schema checks.
        let header: SafetensorsHeader
        do {
            header = try Safetensors.parseHeader(bytes)
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
        let id: String, view: Int, label: Int
        do {
            (id, view, label, _, _) = try RecordCodec.checkMetadata(m)
        } catch {
            throw bad(error.description)
        }
        location.id = id
        location.view = view
        let layout = Layout(latents: latents, logvar: logvar, indices: indices, groups: groups)
        if let fast, layouts.count < 8 {
            layouts.append((Array(bytes[fast.tail]), bytes.count, header.dataOffset, layout))
        }
        return Stored(payloadCount: bytes.count, dataOffset: header.dataOffset, layout: layout, location: location,
                      id: id, view: view, label: label)
    }

    /// Arrays of a batch the consumer handed back (`TokenStream.recycle`), taken one by one as
    /// the next batch reuses them: an array is reused only when it is the sole reference (the
    /// spare's own is dropped first), so its memory is overwritten in place instead of a fresh
    /// allocation the kernel must map and zero (a 256-record float32 batch is 4 MiB of pages).
    struct Spare {
        var latents: LatentArray?
        var logvar: LatentArray?
        var indices: [UInt32]?
        var groups: [UInt16]?

        init(_ batch: consuming StreamBatch?) {
            latents = batch?.latents
            logvar = batch?.logvar
            indices = batch?.indices
            groups = batch?.groups
        }
    }

    /// Decodes `records` (global indices) into one batch, in the arrays of `spare` where they
    /// have the right type and size.
    func batch(_ records: [Int], firstSample: Int, reusing old: consuming StreamBatch? = nil) throws -> StreamBatch {
        var spare = Spare(consume old)
        precondition(!records.isEmpty)
        let frames = findFrames(records)
        // The first record gives the batch's shapes; it is decompressed again with its row (one
        // extra frame per batch, instead of a copy of every payload).
        let first = try load(records[0], found: frames[0]) { stored, _ in stored }
        let k = first.layout.latents.shape[0], c = first.layout.latents.shape[1], n = first.layout.groups.shape[0]
        let b = records.count
        let hasLogvar = first.layout.logvar != nil
        var labels = [Int32](); labels.reserveCapacity(b)
        var ids = [String](); ids.reserveCapacity(b)
        var views = [Int](); views.reserveCapacity(b)
        var payloadBytes = 0
        let elementSize = format == .float32 ? 4 : 2
        let kc = k * c

        /// Decodes every row straight into the batch's arrays (no second copy).
        func rows(_ latentOut: UnsafeMutableRawPointer, _ logvarOut: UnsafeMutableRawPointer?,
                  _ indexOut: UnsafeMutablePointer<UInt32>, _ groupOut: UnsafeMutablePointer<UInt16>) throws {
            for row in 0..<b { try load(records[row], found: frames[row]) { r, raw in
                let l = r.layout
                // Element-wise: comparing with array literals would allocate on every row.
                let ls = l.latents.shape, gs = l.groups.shape
                guard (l.logvar != nil) == hasLogvar else {
                    throw CacheError(.shapeMismatch, hasLogvar ? "has no logvar; the batch's first record has one" : "has a logvar; the batch's first record has none",
                                     at: r.location)
                }
                guard ls.count == 2, ls[0] == k, ls[1] == c, gs.count == 1, gs[0] == n else {
                    throw CacheError(.shapeMismatch, "K, C, N = \(l.latents.shape), \(l.groups.shape[0]); the batch has \(k), \(c), \(n)",
                                     at: r.location)
                }
                let data = UnsafeRawBufferPointer(rebasing: raw[r.dataOffset...])
                convertFloats(data, l.latents, into: latentOut + row * kc * elementSize)
                if let lv = l.logvar, let logvarOut { convertFloats(data, lv, into: logvarOut + row * kc * elementSize) }
                readIndices(data, l.indices, into: indexOut + row * k)
                let maxGroup = readGroups(data, l.groups, into: groupOut + row * n)
                guard n == 0 || Int(maxGroup) < k else {
                    throw CacheError(.badRecord, "group id \(maxGroup) is not a kept token (K = \(k))", at: r.location)
                }
                labels.append(Int32(r.label))
                ids.append(r.id)
                views.append(r.view)
                payloadBytes += r.payloadCount
            } }
        }

        var logvar: LatentArray?
        var indices: [UInt32] = []
        var groups: [UInt16] = []
        let latents = try latentArray(b * kc, reusing: &spare.latents) { lp in
            indices = try filled(UInt32.self, b * k, reusing: &spare.indices) { ip in
                groups = try filled(UInt16.self, b * n, reusing: &spare.groups) { gp in
                    let ip = ip.assumingMemoryBound(to: UInt32.self), gp = gp.assumingMemoryBound(to: UInt16.self)
                    if hasLogvar {
                        logvar = try latentArray(b * kc, reusing: &spare.logvar) { vp in try rows(lp, vp, ip, gp) }
                    } else {
                        try rows(lp, nil, ip, gp)
                    }
                }
            }
        }
        // The rows' streaming stores must be visible before the batch goes to another thread.
        mtok_reader_store_fence()
        return StreamBatch(firstSample: firstSample, records: records, tokens: k, channels: c, patches: n,
                           latents: latents, logvar: logvar, indices: indices, groups: groups,
                           labels: labels, ids: ids, views: views, payloadBytes: payloadBytes)
    }

    /// An array of `count` elements whose memory `body` initializes through a raw pointer:
    /// `spare` when it holds exactly `count` elements (it is left nil), else a new one.
    private func filled<T>(_ type: T.Type, _ count: Int, reusing spare: inout [T]?,
                           _ body: (UnsafeMutableRawPointer) throws -> Void) throws -> [T] {
        if count > 0, spare?.count == count, var out = spare.take() {
            // `out` is now the stream's only reference (unless the consumer kept a copy, which
            // copy-on-write then leaves intact): writing through it copies nothing.
            reusedArrays += 1
            try out.withUnsafeMutableBytes { try body($0.baseAddress!) }
            return out
        }
        // Capacity at least 1 so the base address exists even for an empty tensor.
        var out = try [T](unsafeUninitializedCapacity: max(1, count)) { buffer, initialized in
            try body(UnsafeMutableRawPointer(buffer.baseAddress!))
            initialized = max(1, count)
        }
        if count == 0 { out.removeAll() }
        return out
    }

    private func latentArray(_ count: Int, reusing spare: inout LatentArray?,
                             _ body: (UnsafeMutableRawPointer) throws -> Void) throws -> LatentArray {
        var floats: [Float]?, halves: [UInt16]?
        switch spare.take() {
        case let .float32(a)? where format == .float32: floats = a
        case let .float16(a)? where format == .float16: halves = a
        case let .bfloat16(a)? where format == .bfloat16: halves = a
        default: break
        }
        switch format {
        case .float32: return .float32(try filled(Float.self, count, reusing: &floats, body))
        case .float16: return .float16(try filled(UInt16.self, count, reusing: &halves, body))
        case .bfloat16: return .bfloat16(try filled(UInt16.self, count, reusing: &halves, body))
        }
    }

    /// Reads a float tensor out of its (possibly shuffled) bytes and writes it in `format`.
    private func convertFloats(_ data: UnsafeRawBufferPointer, _ e: TensorEntry, into out: UnsafeMutableRawPointer) {
        let count = e.byteRange.count / e.dtype.byteSize
        let src = UnsafeRawBufferPointer(rebasing: data[e.byteRange])
        if e.dtype == .bf16 && format != .float16 {
            // The common case (bf16 stored, f32 or bf16 wanted) in one pass over the planes.
            let p = src.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let n = count
            if format == .float32 {
                // Streaming stores (CReaderKernels): a float32 batch does not fit in cache.
                let dst = out.assumingMemoryBound(to: UInt32.self)
                if shuffled {
                    mtok_bf16_to_f32_planes(p, p + n, dst, n)
                } else {
                    mtok_bf16_to_f32_interleaved(p, dst, n)
                }
            } else {
                let dst = out.assumingMemoryBound(to: UInt16.self)
                if shuffled {
                    let q = p + n
                    for i in 0..<n { dst[i] = UInt16(p[i]) | UInt16(q[i]) &<< 8 }
                } else {
                    for i in 0..<n { dst[i] = UInt16(p[2 * i]) | UInt16(p[2 * i + 1]) << 8 }
                }
            }
            return
        }
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

    /// VQ indices (U16 or U32) widened to UInt32.
    private func readIndices(_ data: UnsafeRawBufferPointer, _ e: TensorEntry, into out: UnsafeMutablePointer<UInt32>) {
        let src = UnsafeRawBufferPointer(rebasing: data[e.byteRange])
        if e.dtype == .u32 {
            load32(src, count: src.count / 4, into: UnsafeMutableBufferPointer(start: out, count: src.count / 4))
            return
        }
        let count = src.count / 2
        if scratch16.count < count { scratch16 = [UInt16](repeating: 0, count: count) }
        scratch16.withUnsafeMutableBufferPointer { bits in
            load16(src, count: count, into: bits)
            for i in 0..<count { out[i] = UInt32(bits[i]) }
        }
    }

    /// Group ids (U8 or U16) as UInt16; returns the largest, for the "< K" check.
    private func readGroups(_ data: UnsafeRawBufferPointer, _ e: TensorEntry, into out: UnsafeMutablePointer<UInt16>) -> UInt16 {
        let src = UnsafeRawBufferPointer(rebasing: data[e.byteRange])
        var largest: UInt16 = 0
        if e.dtype == .u8 {
            for i in 0..<src.count {
                out[i] = UInt16(src[i])
                largest = max(largest, out[i])
            }
            return largest
        }
        let count = src.count / 2
        load16(src, count: count, into: UnsafeMutableBufferPointer(start: out, count: count))
        for i in 0..<count { largest = max(largest, out[i]) }
        return largest
    }

    /// 16-bit little-endian elements, from two byte planes when the cache is shuffled.
    private func load16(_ src: UnsafeRawBufferPointer, count n: Int, into out: UnsafeMutableBufferPointer<UInt16>) {
        if shuffled {
            let p = src.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let q = p + n
            for i in 0..<n { out[i] = UInt16(p[i]) | UInt16(q[i]) &<< 8 }
        } else {
            for i in 0..<n { out[i] = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        }
    }

    /// 32-bit little-endian elements, from four byte planes when the cache is shuffled.
    private func load32(_ src: UnsafeRawBufferPointer, count n: Int, into out: UnsafeMutableBufferPointer<UInt32>) {
        if shuffled {
            let p = src.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let p1 = p + n, p2 = p + 2 * n, p3 = p + 3 * n
            for i in 0..<n { out[i] = UInt32(p[i]) | UInt32(p1[i]) &<< 8 | UInt32(p2[i]) &<< 16 | UInt32(p3[i]) &<< 24 }
        } else {
            for i in 0..<n { out[i] = UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
        }
    }
}

