import TensorFiles

/// The byte-plane transform applied to a payload before compression (Schemas/FORMAT.md,
/// "Compression").
///
/// Within each tensor of element size s > 1, byte j of every element is gathered into plane j
/// (plane 0 first). The header is left as it is, so a reader parses it from the shuffled bytes
/// to know each tensor's extent and size. Measured on bf16 latents: 12% smaller than zstd alone
/// (Schemas/FORMAT.md has the figures): exponent bytes of smooth values repeat, mantissa bytes
/// are noise, and interleaving them hides the repetition from zstd.
public enum ByteShuffle {
    public static func shuffle(_ payload: [UInt8]) throws(FormatError) -> [UInt8] {
        try transform(payload, forward: true)
    }

    public static func unshuffle(_ stored: [UInt8]) throws(FormatError) -> [UInt8] {
        try transform(stored, forward: false)
    }

    static func transform(_ input: [UInt8], forward: Bool) throws(FormatError) -> [UInt8] {
        let parsed: Result<SafetensorsHeader, SafetensorsError> = input.withUnsafeBytes { raw in
            Result { () throws(SafetensorsError) in try Safetensors.parseHeader(raw) }
        }
        let header: SafetensorsHeader
        switch parsed {
        case let .success(h): header = h
        case let .failure(e): throw FormatError(.badContainer, e.reason)
        }
        var out = input
        input.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                for (_, e) in header.entries where e.dtype.byteSize > 1 {
                    let s = e.dtype.byteSize
                    let base = header.dataOffset + e.byteRange.lowerBound
                    let n = e.byteRange.count / s
                    for j in 0..<s {
                        let plane = base + j * n
                        if forward {
                            for i in 0..<n { dst[plane + i] = src[base + i * s + j] }
                        } else {
                            for i in 0..<n { dst[base + i * s + j] = src[plane + i] }
                        }
                    }
                }
            }
        }
        return out
    }
}
