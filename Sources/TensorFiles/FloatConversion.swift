/// Conversions between `Float` and the 16-bit float formats stored in caches.
///
/// bf16 is the top half of an IEEE binary32; converting down rounds to nearest, ties to even,
/// as PyTorch's `tensor.to(torch.bfloat16)` does, and keeps NaN a (quiet) NaN.
public enum FloatConversion {
    @inline(__always)
    public static func bf16Bits(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let roundingBias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    @inline(__always)
    public static func float(bf16Bits bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    @inline(__always)
    public static func f16Bits(_ value: Float) -> UInt16 {
        Float16(value).bitPattern
    }

    @inline(__always)
    public static func float(f16Bits bits: UInt16) -> Float {
        Float(Float16(bitPattern: bits))
    }

    /// Encodes `values` into little-endian bytes of `dtype` (a float type).
    public static func encode(_ values: [Float], as dtype: TensorDType) -> [UInt8] {
        switch dtype {
        case .f32:
            return values.withUnsafeBytes { Array($0) }
        case .f16, .bf16:
            var out = [UInt8](repeating: 0, count: values.count * 2)
            out.withUnsafeMutableBytes { raw in
                let dst = raw.bindMemory(to: UInt16.self)
                if dtype == .bf16 {
                    for i in values.indices { dst[i] = bf16Bits(values[i]).littleEndian }
                } else {
                    for i in values.indices { dst[i] = f16Bits(values[i]).littleEndian }
                }
            }
            return out
        default:
            preconditionFailure("\(dtype) is not a float type")
        }
    }

    /// Decodes little-endian float bytes of `dtype` into `out` (count = bytes / size).
    public static func decode(_ bytes: UnsafeRawBufferPointer, as dtype: TensorDType,
                              into out: UnsafeMutableBufferPointer<Float>) {
        switch dtype {
        case .f32:
            precondition(out.count * 4 == bytes.count)
            UnsafeMutableRawBufferPointer(out).copyMemory(from: bytes)
        case .bf16:
            precondition(out.count * 2 == bytes.count)
            for i in 0..<out.count {
                out[i] = float(bf16Bits: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
            }
        case .f16:
            precondition(out.count * 2 == bytes.count)
            for i in 0..<out.count {
                out[i] = float(f16Bits: bytes.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
            }
        default:
            preconditionFailure("\(dtype) is not a float type")
        }
    }
}
