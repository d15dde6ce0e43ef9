public import TensorFiles

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
        return Safetensors.serialize(tensors, metadata: metadata)
    }

    /// Decodes and schema-checks a payload.
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(FormatError) -> TokenRecord {
        let parsed: (tensors: [NamedTensor], metadata: [String: String])
        do {
            parsed = try Safetensors.decode(payload)
        } catch {
            throw FormatError(.badContainer, error.reason)
        }
        let m = parsed.metadata
        guard let version = m[Key.format] else { throw FormatError(.unknownVersion, "no \(Key.format) in metadata") }
        guard version == formatVersion else {
            throw FormatError(.unknownVersion, "record format \(version), this reader knows \(formatVersion)")
        }
        var byName: [String: NamedTensor] = [:]
        for t in parsed.tensors {
            guard ["latents", "logvar", "indices", "groups"].contains(t.name) else {
                throw FormatError(.badContainer, "unexpected tensor \(t.name)")
            }
            byName[t.name] = t
        }
        guard let latents = byName["latents"], let indices = byName["indices"], let groups = byName["groups"] else {
            throw FormatError(.badContainer, "missing tensor: latents, indices and groups are required")
        }
        let logvar = byName["logvar"]
        try validate(latents: latents, logvar: logvar, indices: indices, groups: groups)

        guard let id = m[Key.id] else { throw FormatError(.badMetadata, "no id") }
        guard let view = m[Key.view].flatMap({ Int($0) }), view >= 0 else { throw FormatError(.badMetadata, "bad view") }
        guard let label = m[Key.label].flatMap({ Int($0) }), label >= -1 else { throw FormatError(.badMetadata, "bad label") }
        let size = try ints(m[Key.sourceSize], count: 2, name: Key.sourceSize)
        let box = try ints(m[Key.cropBox], count: 4, name: Key.cropBox)
        return TokenRecord(id: id, view: view, label: label, sourceWidth: size[0], sourceHeight: size[1],
                           cropBox: CropBox(x: box[0], y: box[1], width: box[2], height: box[3]),
                           sourceSHA256: m[Key.sourceSHA256] ?? "",
                           latents: latents, logvar: logvar, indices: indices, groups: groups)
    }

    public static func decode(_ payload: [UInt8]) throws(FormatError) -> TokenRecord {
        let r: Result<TokenRecord, FormatError> = payload.withUnsafeBytes { raw in
            Result { () throws(FormatError) in try decode(raw) }
        }
        return try r.get()
    }

    /// Checks dtypes, shape agreement and that every group id names a kept token.
    public static func validate(latents: NamedTensor, logvar: NamedTensor?, indices: NamedTensor,
                                groups: NamedTensor) throws(FormatError) {
        guard [.f32, .f16, .bf16].contains(latents.dtype) else {
            throw FormatError(.unknownDType, "latents must be F32, F16 or BF16, got \(latents.dtype.rawValue)")
        }
        guard latents.shape.count == 2 else { throw FormatError(.badShape, "latents must be [K, C], got \(latents.shape)") }
        let k = latents.shape[0]
        if let logvar {
            guard logvar.dtype == latents.dtype, logvar.shape == latents.shape else {
                throw FormatError(.badShape, "logvar must match latents (\(latents.dtype.rawValue) \(latents.shape)), got \(logvar.dtype.rawValue) \(logvar.shape)")
            }
        }
        guard [.u16, .u32].contains(indices.dtype) else {
            throw FormatError(.unknownDType, "indices must be U16 or U32, got \(indices.dtype.rawValue)")
        }
        guard indices.shape == [k] else { throw FormatError(.badShape, "indices must be [\(k)], got \(indices.shape)") }
        guard [.u8, .u16].contains(groups.dtype) else {
            throw FormatError(.unknownDType, "groups must be U8 or U16, got \(groups.dtype.rawValue)")
        }
        guard groups.shape.count == 1, groups.shape[0] >= k else {
            throw FormatError(.badShape, "groups must be [N] with N >= K = \(k), got \(groups.shape)")
        }
        let maxGroup = groups.bytes.withUnsafeBytes { raw -> Int in
            var m = 0
            if groups.dtype == .u8 {
                for b in raw { m = max(m, Int(b)) }
            } else {
                for i in 0..<(raw.count / 2) { m = max(m, Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
            }
            return m
        }
        guard groups.shape[0] == 0 || maxGroup < k else {
            throw FormatError(.badValue, "group id \(maxGroup) is not a kept token (K = \(k))")
        }
    }

    static func ints(_ text: String?, count: Int, name: String) throws(FormatError) -> [Int] {
        guard let text else { throw FormatError(.badMetadata, "no \(name)") }
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).compactMap { Int($0) }
        guard parts.count == count, parts.allSatisfy({ $0 >= 0 }) else {
            throw FormatError(.badMetadata, "\(name) must be \(count) non-negative integers, got \"\(text)\"")
        }
        return parts
    }
}
