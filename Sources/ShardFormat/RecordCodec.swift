public import TensorFiles
public import Crypto

/// Turns records into their uncompressed payload and back (Schemas/FORMAT.md, "Record").
///
/// The payload is a safetensors blob: tensors `latents`, optional `logvar`, `indices`, `groups`,
/// in that order; string metadata in `__metadata__`. Any safetensors reader opens it.
public enum RecordCodec {
    public static let formatVersion = "1"
    /// Largest payload a reader accepts; bounds allocation for untrusted frames (a 1024-token,
    /// 64-channel f32 record with logvar is 0.5 MiB).
    public static let maxPayloadBytes = 64 << 20

    enum Key {
        static let format = "mtok.format"
        static let id = "id"
        static let view = "view"
        static let label = "label"
        static let sourceSize = "source_size"
        static let cropBox = "crop_box"
        static let sourceSHA256 = "source_sha256"
    }

    public static func encode(_ record: TokenRecord) -> [UInt8] {
        let (tensors, metadata) = parts(record)
        return Safetensors.serialize(tensors, metadata: metadata)
    }

    /// Writes what a writer stores for `record` into `stored` (replacing its contents; a caller
    /// reusing one buffer allocates nothing per record): the frame content, i.e. the payload,
    /// byte-shuffled when `shuffled`. Returns the SHA-256 of the payload itself, fed tensor by
    /// tensor so the plain payload is never materialized. The payload's size is `stored.count`.
    public static func encodeForStorage(_ record: TokenRecord, shuffled: Bool, into stored: inout [UInt8]) -> SHA256Digest {
        stored.removeAll(keepingCapacity: true)
        appendHeader(of: record, to: &stored)
        var hasher = SHA256()
        stored.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        for t in [record.latents, record.logvar, record.indices, record.groups] {
            guard let t else { continue }
            hasher.update(data: t.bytes)
            if shuffled && t.dtype.byteSize > 1 {
                ByteShuffle.appendPlanes(of: t.bytes, elementSize: t.dtype.byteSize, to: &stored)
            } else {
                stored.append(contentsOf: t.bytes)
            }
        }
        return hasher.finalize()
    }

    /// Appends the 8-byte length and the header of `record`'s payload: the bytes
    /// `Safetensors.serializeHeader` writes for `parts(record)` (tests compare the two), built
    /// without the metadata dictionary, its sorting and per-field strings.
    static func appendHeader(of record: TokenRecord, to out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: 8))  // the length, filled in below
        func put(_ s: StaticString) { out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)) }
        func put(int: Int) { out.append(contentsOf: String(int).utf8) }
        // Metadata keys in sorted order, as `serializeHeader` writes them.
        let c = record.cropBox
        put(#"{"__metadata__":{"crop_box":""#)
        put(int: c.x); put(","); put(int: c.y); put(","); put(int: c.width); put(","); put(int: c.height)
        put(#"","id":"#)
        JSONValue.appendQuoted(record.id, to: &out)
        put(#","label":""#)
        put(int: record.label)
        put(#"","mtok.format":""#)
        out.append(contentsOf: formatVersion.utf8)
        put(#"","source_sha256":"#)
        JSONValue.appendQuoted(record.sourceSHA256, to: &out)
        put(#","source_size":""#)
        put(int: record.sourceWidth); put(","); put(int: record.sourceHeight)
        put(#"","view":""#)
        put(int: record.view)
        put(#""}"#)
        var offset = 0
        for t in [record.latents, record.logvar, record.indices, record.groups] {
            guard let t else { continue }
            put(",")
            JSONValue.appendQuoted(t.name, to: &out)
            put(#":{"dtype":""#)
            out.append(contentsOf: t.dtype.rawValue.utf8)
            put(#"","shape":["#)
            for (i, d) in t.shape.enumerated() {
                if i > 0 { put(",") }
                put(int: d)
            }
            put(#"],"data_offsets":["#)
            put(int: offset)
            put(",")
            put(int: offset + t.bytes.count)
            put("]}")
            offset += t.bytes.count
        }
        put("}")
        while (out.count - start - 8) % 8 != 0 { out.append(0x20) }
        withUnsafeBytes(of: UInt64(out.count - start - 8).littleEndian) { length in
            out.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: start).copyMemory(from: length.baseAddress!, byteCount: 8) }
        }
    }

    static func parts(_ record: TokenRecord) -> ([NamedTensor], [String: String]) {
        var tensors = [record.latents]
        if let logvar = record.logvar { tensors.append(logvar) }
        tensors.append(record.indices)
        tensors.append(record.groups)
        let c = record.cropBox
        let metadata = [
            Key.format: formatVersion,
            Key.id: record.id,
            Key.view: String(record.view),
            Key.label: String(record.label),
            Key.sourceSize: "\(record.sourceWidth),\(record.sourceHeight)",
            Key.cropBox: "\(c.x),\(c.y),\(c.width),\(c.height)",
            Key.sourceSHA256: record.sourceSHA256,
        ]
        return (tensors, metadata)
    }

    /// Decodes and schema-checks a payload.
    /// Decodes and schema-checks a payload, or a stored frame's content when `shuffled` (the
    /// byte planes are put back tensor by tensor while copying, with one header parse).
    public static func decode(_ bytes: UnsafeRawBufferPointer, shuffled: Bool = false) throws(FormatError) -> TokenRecord {
        let header: SafetensorsHeader
        do {
            header = try Safetensors.parseHeader(bytes)
        } catch {
            throw FormatError(.badContainer, error.reason)
        }
        try checkNames(header.entries.map(\.name))
        let meta = try checkMetadata(header.metadata)
        func tensor(_ name: String) -> NamedTensor? {
            guard let e = header.entry(name) else { return nil }
            let slice = UnsafeRawBufferPointer(rebasing: bytes[(header.dataOffset + e.byteRange.lowerBound)..<(header.dataOffset + e.byteRange.upperBound)])
            let data = shuffled && e.dtype.byteSize > 1 ? ByteShuffle.joinPlanes(slice, elementSize: e.dtype.byteSize) : Array(slice)
            return NamedTensor(name: name, dtype: e.dtype, shape: e.shape, bytes: data)
        }
        let latents = tensor("latents")!, indices = tensor("indices")!, groups = tensor("groups")!
        let logvar = tensor("logvar")
        try validate(latents: latents, logvar: logvar, indices: indices, groups: groups)
        return TokenRecord(id: meta.id, view: meta.view, label: meta.label, sourceWidth: meta.size[0], sourceHeight: meta.size[1],
                           cropBox: CropBox(x: meta.box[0], y: meta.box[1], width: meta.box[2], height: meta.box[3]),
                           sourceSHA256: header.metadata[Key.sourceSHA256] ?? "",
                           latents: latents, logvar: logvar, indices: indices, groups: groups)
    }

    public static func decode(_ payload: [UInt8]) throws(FormatError) -> TokenRecord {
        let r: Result<TokenRecord, FormatError> = payload.withUnsafeBytes { raw in
            Result { () throws(FormatError) in try decode(raw) }
        }
        return try r.get()
    }

    /// Schema-checks a stored frame's content (the payload, byte-shuffled or not) without
    /// materializing it: the same checks as `decode`, at the cost of reading the header and the
    /// group map. Returns the record's (id, view).
    public static func check(stored: UnsafeRawBufferPointer, shuffled: Bool) throws(FormatError) -> (id: String, view: Int, layout: RecordLayout) {
        let header: SafetensorsHeader
        do {
            header = try Safetensors.parseHeader(stored)
        } catch {
            throw FormatError(.badContainer, error.reason)
        }
        try checkNames(header.entries.map(\.name))
        let meta = try checkMetadata(header.metadata)
        let latents = header.entry("latents")!, indices = header.entry("indices")!, groups = header.entry("groups")!
        let logvar = header.entry("logvar")
        let k = try checkShapes(latents: (latents.dtype, latents.shape), logvar: logvar.map { ($0.dtype, $0.shape) },
                                indices: (indices.dtype, indices.shape), groups: (groups.dtype, groups.shape))
        let bytes = UnsafeRawBufferPointer(rebasing: stored[(header.dataOffset + groups.byteRange.lowerBound)..<(header.dataOffset + groups.byteRange.upperBound)])
        try checkGroups(bytes, dtype: groups.dtype, planar: shuffled, k: k)
        return (meta.id, meta.view, RecordLayout(latents: latents.dtype, logvar: logvar?.dtype, indices: indices.dtype, groups: groups.dtype,
                                                 tokens: latents.shape[0], channels: latents.shape[1], patches: groups.shape[0]))
    }

    /// Checks dtypes, shape agreement and that every group id names a kept token.
    public static func validate(latents: NamedTensor, logvar: NamedTensor?, indices: NamedTensor,
                                groups: NamedTensor) throws(FormatError) {
        let k = try checkShapes(latents: (latents.dtype, latents.shape), logvar: logvar.map { ($0.dtype, $0.shape) },
                                indices: (indices.dtype, indices.shape), groups: (groups.dtype, groups.shape))
        let r: Result<Void, FormatError> = groups.bytes.withUnsafeBytes { raw in
            Result { () throws(FormatError) in try checkGroups(raw, dtype: groups.dtype, planar: false, k: k) }
        }
        try r.get()
    }

    static func checkNames(_ names: [String]) throws(FormatError) {
        for name in names where !["latents", "logvar", "indices", "groups"].contains(name) {
            throw FormatError(.badContainer, "unexpected tensor \(name)")
        }
        for name in ["latents", "indices", "groups"] where !names.contains(name) {
            throw FormatError(.badContainer, "missing tensor \(name): latents, indices and groups are required")
        }
    }

    /// Labels a record may carry: -1 (none) or a class number that fits a batch's int32.
    public static let labelRange = -1...Int(Int32.max)
    /// Views a record may have (the `ids` key stores them in 16 bits).
    public static let viewRange = 0...Int(UInt16.max)

    /// The required metadata, checked as FORMAT.md 4.1 says.
    public static func checkMetadata(_ m: [String: String]) throws(FormatError) -> (id: String, view: Int, label: Int, size: [Int], box: [Int]) {
        guard let version = m[Key.format] else { throw FormatError(.unknownVersion, "no \(Key.format) in metadata") }
        guard version == formatVersion else {
            throw FormatError(.unknownVersion, "record format \(version), this reader knows \(formatVersion)")
        }
        guard let id = m[Key.id] else { throw FormatError(.badMetadata, "no id") }
        guard let view = m[Key.view].flatMap({ Int($0) }), viewRange.contains(view) else {
            throw FormatError(.badMetadata, "view \(JSONValue.quoted(String((m[Key.view] ?? "none").prefix(40)))) is not a number in \(viewRange)")
        }
        guard let label = m[Key.label].flatMap({ Int($0) }), labelRange.contains(label) else {
            throw FormatError(.badMetadata, "label \(JSONValue.quoted(String((m[Key.label] ?? "none").prefix(40)))) is not a number in \(labelRange)")
        }
        let size = try ints(m[Key.sourceSize], count: 2, name: Key.sourceSize)
        let box = try ints(m[Key.cropBox], count: 4, name: Key.cropBox)
        return (id, view, label, size, box)
    }

    /// Returns K.
    static func checkShapes(latents: (TensorDType, [Int]), logvar: (TensorDType, [Int])?, indices: (TensorDType, [Int]),
                            groups: (TensorDType, [Int])) throws(FormatError) -> Int {
        guard [.f32, .f16, .bf16].contains(latents.0) else {
            throw FormatError(.unknownDType, "latents must be F32, F16 or BF16, got \(latents.0.rawValue)")
        }
        guard latents.1.count == 2 else { throw FormatError(.badShape, "latents must be [K, C], got \(latents.1)") }
        let k = latents.1[0]
        if let logvar {
            guard logvar.0 == latents.0, logvar.1 == latents.1 else {
                throw FormatError(.badShape, "logvar must match latents (\(latents.0.rawValue) \(latents.1)), got \(logvar.0.rawValue) \(logvar.1)")
            }
        }
        guard [.u16, .u32].contains(indices.0) else {
            throw FormatError(.unknownDType, "indices must be U16 or U32, got \(indices.0.rawValue)")
        }
        guard indices.1 == [k] else { throw FormatError(.badShape, "indices must be [\(k)], got \(indices.1)") }
        guard [.u8, .u16].contains(groups.0) else {
            throw FormatError(.unknownDType, "groups must be U8 or U16, got \(groups.0.rawValue)")
        }
        guard groups.1.count == 1, groups.1[0] >= k else {
            throw FormatError(.badShape, "groups must be [N] with N >= K = \(k), got \(groups.1)")
        }
        return k
    }

    /// Every group id must be < K. `planar`: u16 values stored as two byte planes (`ByteShuffle`).
    static func checkGroups(_ raw: UnsafeRawBufferPointer, dtype: TensorDType, planar: Bool, k: Int) throws(FormatError) {
        var m = 0
        if dtype == .u8 {
            for b in raw { m = max(m, Int(b)) }
        } else {
            let n = raw.count / 2
            for i in 0..<n {
                let v = planar ? Int(raw[i]) | Int(raw[n + i]) << 8
                               : Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                m = max(m, v)
            }
        }
        guard raw.isEmpty || m < k else { throw FormatError(.badValue, "group id \(m) is not a kept token (K = \(k))") }
    }

    static func ints(_ text: String?, count: Int, name: String) throws(FormatError) -> [Int] {
        guard let text else { throw FormatError(.badMetadata, "no \(name)") }
        if let plain = plainInts(text, count: count) { return plain }
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).compactMap { Int($0) }
        guard parts.count == count, parts.allSatisfy({ $0 >= 0 }) else {
            throw FormatError(.badMetadata, "\(name) must be \(count) non-negative integers, got \"\(text)\"")
        }
        return parts
    }

    /// `count` comma-separated runs of 1 to 18 digits (what writers emit), read without the
    /// substrings and the generic parse of the general path; nil for anything else, which that
    /// path then judges.
    static func plainInts(_ text: String, count: Int) -> [Int]? {
        var parts: [Int] = []
        parts.reserveCapacity(count)
        var current = 0, digits = 0
        for b in text.utf8 {
            if b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") && digits < 18 {
                current = current &* 10 &+ Int(b &- UInt8(ascii: "0"))
                digits += 1
            } else if b == UInt8(ascii: ",") && digits > 0 {
                parts.append(current)
                current = 0
                digits = 0
            } else {
                return nil
            }
        }
        guard digits > 0 else { return nil }
        parts.append(current)
        return parts.count == count ? parts : nil
    }
}

/// What every record of a cache shares (FORMAT.md 4.1): each tensor's dtype, whether there is a
/// logvar, and the shapes K (kept tokens), C (latent channels) and N (patch tokens). Readers
/// gather batches into one array per tensor, so a record that differs cannot be served with the
/// others: writers refuse it, `mtok merge` refuses such parts, and `mtok verify --deep` reports it.
public struct RecordLayout: Equatable, Sendable, CustomStringConvertible {
    public var latents: TensorDType
    /// nil: no logvar.
    public var logvar: TensorDType?
    public var indices: TensorDType
    public var groups: TensorDType
    /// K, C and N.
    public var tokens: Int
    public var channels: Int
    public var patches: Int

    public init(latents: TensorDType, logvar: TensorDType?, indices: TensorDType, groups: TensorDType,
                tokens: Int, channels: Int, patches: Int) {
        self.latents = latents
        self.logvar = logvar
        self.indices = indices
        self.groups = groups
        self.tokens = tokens
        self.channels = channels
        self.patches = patches
    }

    /// A record that passed `RecordCodec.validate` (latents [K, C], groups [N]).
    public init(_ record: TokenRecord) {
        self.init(latents: record.latents.dtype, logvar: record.logvar?.dtype, indices: record.indices.dtype,
                  groups: record.groups.dtype, tokens: record.latents.shape[0], channels: record.latents.shape[1],
                  patches: record.groups.shape[0])
    }

    public var description: String {
        "latents \(latents.rawValue) [\(tokens), \(channels)], logvar \(logvar?.rawValue ?? "none"), indices \(indices.rawValue), groups \(groups.rawValue) [\(patches)]"
    }

    /// What differs from `other`, as "indices U16, not U32" or "K = 64 tokens, not 16"; nil when nothing does.
    public func difference(from other: RecordLayout) -> String? {
        if latents != other.latents { return "latents \(latents.rawValue), not \(other.latents.rawValue)" }
        if logvar != other.logvar { return "logvar \(logvar?.rawValue ?? "none"), not \(other.logvar?.rawValue ?? "none")" }
        if indices != other.indices { return "indices \(indices.rawValue), not \(other.indices.rawValue)" }
        if groups != other.groups { return "groups \(groups.rawValue), not \(other.groups.rawValue)" }
        if tokens != other.tokens { return "K = \(tokens) tokens, not \(other.tokens)" }
        if channels != other.channels { return "C = \(channels) latent channels, not \(other.channels)" }
        if patches != other.patches { return "N = \(patches) patch tokens, not \(other.patches)" }
        return nil
    }
}
