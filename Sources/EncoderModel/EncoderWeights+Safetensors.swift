import Foundation
import TensorFiles

/// Reading and writing weights as safetensors with the state-dict names of spec §5.2.
extension EncoderWeights {
    /// Loads weights from a `.safetensors` file, memory-mapped.
    ///
    /// The configuration comes from `config` if given, else the JSON string under
    /// ``EncoderConfig/metadataKey`` in the file's `__metadata__`, else a sidecar JSON
    /// (`NAME.json` beside `NAME.safetensors`, or `NAME.safetensors.json`). Which head the file has
    /// is then read from its tensors: conv_out with 2z outputs means the VAE branch, and a
    /// `quantize.embedding.weight` tensor means codebook VQ (its rows are the codebook size).
    /// F32 tensors at 4-byte-aligned offsets are used in place; F16/BF16 (or unaligned) are
    /// converted into owned memory.
    /// - Throws: ``EncoderError`` for a missing config or missing/misshapen tensors (all named),
    ///   or the file's own read/parse error.
    public static func load(path: String, config override: EncoderConfig? = nil) throws -> EncoderWeights {
        let file = try MappedFile(path: path)
        if let kind = otherFileKind(file.bytes) {
            throw EncoderError.notWeights("\(path) is \(kind)")
        }
        let header = try Safetensors.parseHeader(file.bytes)
        var config: EncoderConfig
        if let override {
            config = override
        } else if let json = header.metadata[EncoderConfig.metadataKey] {
            config = try EncoderConfig.fromJSON(json)
        } else if let json = sidecarJSON(for: path) {
            config = try EncoderConfig.fromJSON(json)
        } else {
            throw EncoderError.missingConfig("\(path) has no \(EncoderConfig.metadataKey) metadata and no sidecar JSON")
        }
        if let convOut = header.tensors["encoder.conv_out.weight"], let rows = convOut.shape.first {
            config.vae = rows == 2 * config.zChannels
        }
        if let codebook = header.tensors["quantize.embedding.weight"], codebook.shape.count == 2 {
            config.quantizer = .vq
            config.codebookSize = codebook.shape[0]
        } else {
            config.quantizer = .lfq
            config.codebookSize = nil
        }
        try config.validate()

        var views: [String: (shape: [Int], values: UnsafeBufferPointer<Float>)] = [:]
        var converted: [String: [Float]] = [:]
        var problems: [String] = []
        let wanted = Set(config.tensorSpecs.map(\.name))
        let base = file.bytes.baseAddress!
        for (name, entry) in header.entries where wanted.contains(name) {
            let start = header.dataOffset + entry.byteRange.lowerBound
            let count = entry.shape.reduce(1, *)
            let raw = UnsafeRawBufferPointer(start: base + start, count: entry.byteRange.count)
            switch entry.dtype {
            case .f32 where start % MemoryLayout<Float>.alignment == 0:
                views[name] = (entry.shape, UnsafeBufferPointer(start: (base + start).assumingMemoryBound(to: Float.self),
                                                                count: count))
            case .f32, .f16, .bf16:
                var values = [Float](repeating: 0, count: count)
                values.withUnsafeMutableBufferPointer { FloatConversion.decode(raw, as: entry.dtype, into: $0) }
                converted[name] = values
            default:
                problems.append("\(name) has dtype \(entry.dtype.rawValue), expected a float type")
            }
        }
        if !problems.isEmpty { throw EncoderError.invalidWeights(problems) }
        let store = FloatStore(converted)
        for name in converted.keys { views[name] = (header.tensors[name]!.shape, store.view(name)) }
        return try EncoderWeights(config: config, metadata: header.metadata, tensors: views, owners: [file, store])
    }

    private static func sidecarJSON(for path: String) -> String? {
        var candidates = [path + ".json"]
        if path.hasSuffix(".safetensors") { candidates.insert(String(path.dropLast("safetensors".count)) + "json", at: 0) }
        for c in candidates {
            if let data = FileManager.default.contents(atPath: c) { return String(decoding: data, as: UTF8.self) }
        }
        return nil
    }

    /// The weights as a safetensors blob (F32, spec order), with the config JSON and ``metadata``.
    public func safetensorsBytes(extraMetadata: [String: String] = [:]) -> [UInt8] {
        let tensors = config.tensorSpecs.map { spec in
            let values = self.tensors[spec.name]!
            return NamedTensor(name: spec.name, dtype: .f32, shape: spec.shape,
                               bytes: Array(UnsafeRawBufferPointer(values)))
        }
        var meta = metadata.merging(extraMetadata) { _, new in new }
        meta[EncoderConfig.metadataKey] = config.jsonString()
        return Safetensors.serialize(tensors, metadata: meta)
    }
}

extension EncoderWeights {
    /// What a file given as weights is instead, told by its first bytes, when that is a common
    /// mistake: an image, or a PyTorch checkpoint that still needs converting. A safetensors
    /// file begins with a small little-endian header length and then "{".
    static func otherFileKind(_ bytes: UnsafeRawBufferPointer) -> String? {
        func starts(_ magic: [UInt8]) -> Bool { bytes.count >= magic.count && zip(bytes, magic).allSatisfy { $0 == $1 } }
        if starts([0xFF, 0xD8, 0xFF]) { return "a JPEG image, not encoder weights (.safetensors)" }
        if starts([0x89, 0x50, 0x4E, 0x47]) { return "a PNG image, not encoder weights (.safetensors)" }
        if starts([0x50, 0x4B, 0x03, 0x04]) || starts([0x80, 0x02]) || starts([0x80, 0x04]) || starts([0x80, 0x05]) {
            return "a PyTorch checkpoint (torch.save), not yet encoder weights: convert it with tools/convert_checkpoint.py (README: Getting weights)"
        }
        if bytes.count >= 9, bytes[8] != UInt8(ascii: "{") { return "not a safetensors file (no JSON header after the 8-byte length)" }
        return nil
    }
}
