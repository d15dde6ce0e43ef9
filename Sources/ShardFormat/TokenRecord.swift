public import TensorFiles

/// The crop of the source image that a view shows, in source pixels.
public struct CropBox: Sendable, Equatable, Codable {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int

    public init(x: Int, y: Int, width: Int, height: Int) {
        self.x = x
        self.y = y
        self.width = width
        self.height = height
    }
}

/// One cached view of one image: identity, provenance, and the encoder's three outputs.
///
/// Shapes: `latents` [K, C] (f32, f16 or bf16), `logvar` [K, C] (optional, same dtype),
/// `indices` [K] (u16 or u32), `groups` [N] (u8 or u16; each value < K).
public struct TokenRecord: Sendable, Equatable {
    public var id: String
    public var view: Int
    /// Class label, -1 when the dataset has none.
    public var label: Int
    public var sourceWidth: Int
    public var sourceHeight: Int
    public var cropBox: CropBox
    /// Hex SHA-256 of the source file's bytes ("" when unknown).
    public var sourceSHA256: String
    public var latents: NamedTensor
    public var logvar: NamedTensor?
    public var indices: NamedTensor
    public var groups: NamedTensor

    public init(id: String, view: Int, label: Int, sourceWidth: Int, sourceHeight: Int, cropBox: CropBox,
                sourceSHA256: String, latents: NamedTensor, logvar: NamedTensor? = nil,
                indices: NamedTensor, groups: NamedTensor) {
        self.id = id
        self.view = view
        self.label = label
        self.sourceWidth = sourceWidth
        self.sourceHeight = sourceHeight
        self.cropBox = cropBox
        self.sourceSHA256 = sourceSHA256
        self.latents = latents
        self.logvar = logvar
        self.indices = indices
        self.groups = groups
    }

    /// Number of merged tokens K.
    public var tokenCount: Int { latents.shape[0] }
    /// Latent channels C.
    public var channelCount: Int { latents.shape[1] }
    /// Number of original patch tokens N.
    public var patchCount: Int { groups.shape[0] }
}

extension TokenRecord {
    /// Latents converted to Float, row-major [K, C].
    public func latentsAsFloat() -> [Float] { Self.floats(latents) }

    /// Log-variance converted to Float, row-major [K, C], if present.
    public func logvarAsFloat() -> [Float]? { logvar.map(Self.floats) }

    /// VQ indices widened to UInt32.
    public func indicesAsUInt32() -> [UInt32] { Self.unsigned(indices) }

    /// Group map widened to UInt32.
    public func groupsAsUInt32() -> [UInt32] { Self.unsigned(groups) }

    static func floats(_ t: NamedTensor) -> [Float] {
        let n = t.shape.reduce(1, *)
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            t.bytes.withUnsafeBytes { FloatConversion.decode($0, as: t.dtype, into: buf) }
            count = n
        }
    }

    static func unsigned(_ t: NamedTensor) -> [UInt32] {
        t.bytes.withUnsafeBytes { raw in
            switch t.dtype {
            case .u8: return raw.map { UInt32($0) }
            case .u16: return (0..<(raw.count / 2)).map { UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
            case .u32: return (0..<(raw.count / 4)).map { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)) }
            default: preconditionFailure("\(t.name) is \(t.dtype), not an unsigned integer tensor")
            }
        }
    }
}
