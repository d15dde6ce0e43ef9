/// Element types a tensor file can hold, spelled as safetensors spells them.
public enum TensorDType: String, Sendable, CaseIterable, Codable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case u8 = "U8"
    case u16 = "U16"
    case u32 = "U32"
    case i32 = "I32"
    case i64 = "I64"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .u8: 1
        case .f16, .bf16, .u16: 2
        case .f32, .u32, .i32: 4
        case .i64: 8
        }
    }

    /// The NumPy type string (`descr`) for little-endian data; bf16 has no NumPy type and is
    /// written as raw `<u2` bit patterns.
    public var numpyDescr: String {
        switch self {
        case .f32: "<f4"
        case .f16: "<f2"
        case .bf16: "<u2"
        case .u8: "|u1"
        case .u16: "<u2"
        case .u32: "<u4"
        case .i32: "<i4"
        case .i64: "<i8"
        }
    }

    /// Parses a user-facing name: `f32`, `float32`, `F32`, `bf16`, ...
    public init?(userName: String) {
        switch userName.lowercased() {
        case "f32", "float32", "float": self = .f32
        case "f16", "float16", "half": self = .f16
        case "bf16", "bfloat16": self = .bf16
        case "u8", "uint8": self = .u8
        case "u16", "uint16": self = .u16
        case "u32", "uint32": self = .u32
        case "i32", "int32": self = .i32
        case "i64", "int64": self = .i64
        default: return nil
        }
    }
}

/// A named tensor held as raw little-endian bytes.
public struct NamedTensor: Sendable, Equatable {
    public var name: String
    public var dtype: TensorDType
    public var shape: [Int]
    public var bytes: [UInt8]

    public init(name: String, dtype: TensorDType, shape: [Int], bytes: [UInt8]) {
        precondition(shape.reduce(1, *) * dtype.byteSize == bytes.count,
                     "tensor \(name): shape \(shape) of \(dtype) needs \(shape.reduce(1, *) * dtype.byteSize) bytes, got \(bytes.count)")
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}
