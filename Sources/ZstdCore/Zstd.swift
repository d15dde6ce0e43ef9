internal import CZstd

/// An error from libzstd: the C function and zstd's error name.
public struct ZstdError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case checksumMismatch, corrupt, tooLarge, library }
    public let kind: Kind
    public let function: String
    public let message: String
    public var description: String { "\(function): \(message)" }
}

@inline(__always)
func check(_ rc: Int, _ function: String) throws(ZstdError) -> Int {
    if ZSTD_isError(rc) != 0 {
        let kind: ZstdError.Kind
        switch ZSTD_getErrorCode(rc) {
        case ZSTD_error_checksum_wrong: kind = .checksumMismatch
        case ZSTD_error_memory_allocation, ZSTD_error_GENERIC, ZSTD_error_parameter_unsupported: kind = .library
        default: kind = .corrupt
        }
        throw ZstdError(kind: kind, function: function, message: String(cString: ZSTD_getErrorName(rc)))
    }
    return rc
}

/// A compression context (`ZSTD_CCtx`) producing single frames with the content size and the
/// XXH64 content checksum, so every later read verifies every byte.
///
/// Owns its context and an output buffer it reuses; not thread-safe: use one per thread.
public final class ZstdCompressor {
    private let cctx: OpaquePointer
    public let level: Int32
    /// Reused output of `withCompressed`, grown as needed.
    private var scratch: UnsafeMutableRawPointer?
    private var scratchSize = 0

    /// - Parameter compressLiterals: Huffman-code the literals (zstd's default). Off, literals
    ///   are stored raw: on byte-shuffled latents (where most literals are mantissa noise) frames
    ///   grow about 3% but decode about 1.8× faster (Schemas/FORMAT.md, section 7). Either way
    ///   the frame is a standard one that any zstd decoder reads.
    public init(level: Int32 = 3, compressLiterals: Bool = true) {
        guard let c = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        cctx = c
        self.level = level
        _ = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level)
        _ = ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        _ = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)
        if !compressLiterals {
            // ZSTD_c_literalCompressionMode (an experimental parameter, named in zstd.h only under
            // ZSTD_STATIC_LINKING_ONLY) = ZSTD_ps_disable (2). Supported by every libzstd >= 1.4.5;
            // an older one would reject it and keep compressing literals, still a valid frame.
            _ = ZSTD_CCtx_setParameter(cctx, ZSTD_c_experimentalParam5, 2)
        }
    }

    deinit {
        ZSTD_freeCCtx(cctx)
        scratch?.deallocate()
    }

    /// Compresses `input` into one frame (`ZSTD_compress2`) in a buffer this object reuses, and
    /// passes the frame to `body`; the bytes are valid only during the call.
    public func withCompressed<T>(_ input: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> T) throws(ZstdError) -> T {
        let bound = ZSTD_compressBound(input.count)
        if bound > scratchSize {
            scratch?.deallocate()
            scratchSize = max(bound, 2 * scratchSize)
            scratch = UnsafeMutableRawPointer.allocate(byteCount: scratchSize, alignment: 16)
        }
        let n = try check(ZSTD_compress2(cctx, scratch, scratchSize, input.baseAddress, input.count), "ZSTD_compress2")
        return body(UnsafeRawBufferPointer(start: scratch, count: n))
    }

    /// Compresses `input` into one frame (`ZSTD_compress2`).
    public func compress(_ input: UnsafeRawBufferPointer) throws(ZstdError) -> [UInt8] {
        try withCompressed(input) { Array($0) }
    }
}

/// A decompression context (`ZSTD_DCtx`). Not thread-safe: use one per thread.
public final class ZstdDecompressor {
    private let dctx: OpaquePointer
    /// Reused output buffer of `withDecompressed`, grown as needed.
    private var scratch: UnsafeMutableRawPointer?
    private var scratchSize = 0

    public init() {
        guard let d = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        dctx = d
    }

    deinit {
        ZSTD_freeDCtx(dctx)
        scratch?.deallocate()
    }

    /// Decompresses one frame into a buffer this object reuses, and passes it to `body`; the
    /// bytes are valid only during the call. Same checks as `decompress`, without allocating per
    /// frame: what a scan over millions of records wants.
    public func withDecompressed<T>(_ frame: UnsafeRawBufferPointer, maxSize: Int,
                                    _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        guard let size = Self.declaredSize(of: frame) else {
            throw ZstdError(kind: .corrupt, function: "ZSTD_getFrameContentSize", message: "not a zstd frame with a declared size")
        }
        guard size <= maxSize else {
            throw ZstdError(kind: .tooLarge, function: "ZSTD_getFrameContentSize", message: "frame declares \(size) bytes, limit is \(maxSize)")
        }
        try Self.checkSingleFrame(frame)
        if size > scratchSize {
            scratch?.deallocate()
            scratchSize = max(size, 2 * scratchSize)
            scratch = UnsafeMutableRawPointer.allocate(byteCount: scratchSize, alignment: 16)
        }
        let n = ZSTD_decompressDCtx(dctx, scratch, size, frame.baseAddress, frame.count)
        guard try check(n, "ZSTD_decompressDCtx") == size else {
            throw ZstdError(kind: .corrupt, function: "ZSTD_decompressDCtx", message: "frame produced \(n) bytes, declared \(size)")
        }
        return try body(UnsafeRawBufferPointer(start: scratch, count: size))
    }

    /// A record's bytes must be one frame and nothing else: zstd would also decode frames (or
    /// skip skippable ones) concatenated after it, which another reader may refuse.
    ///
    /// And it must carry the content checksum (FORMAT.md 4.2): zstd decodes a frame without one
    /// just as well, so a flipped byte in it would come back as a silently different record.
    /// RFC 8878 3.1.1.1: after the 4-byte magic number comes the frame header descriptor, whose
    /// bit 2 is the Content_Checksum_flag.
    static func checkSingleFrame(_ frame: UnsafeRawBufferPointer) throws(ZstdError) {
        guard frame.count > 4, frame[4] & 0x04 != 0 else {
            throw ZstdError(kind: .corrupt, function: "frame header", message: "the frame has no content checksum (every record's frame must carry one)")
        }
        let n = ZSTD_findFrameCompressedSize(frame.baseAddress, frame.count)
        guard ZSTD_isError(n) == 0, n == frame.count else {
            throw ZstdError(kind: .corrupt, function: "ZSTD_findFrameCompressedSize",
                            message: ZSTD_isError(n) != 0 ? String(cString: ZSTD_getErrorName(n)) : "\(frame.count - n) bytes follow the frame")
        }
    }

    /// The decompressed size a frame declares, or nil if it declares none or is not a frame.
    public static func declaredSize(of frame: UnsafeRawBufferPointer) -> Int? {
        let n = ZSTD_getFrameContentSize(frame.baseAddress, frame.count)
        // ZSTD_CONTENTSIZE_UNKNOWN / ZSTD_CONTENTSIZE_ERROR are the two largest values.
        if n >= UInt64.max - 1 { return nil }
        return n > UInt64(Int.max) ? Int.max : Int(n)
    }

    /// Decompresses exactly one frame whose declared size must be at most `maxSize`: untrusted
    /// bytes never make us allocate beyond that bound. The frame's checksum is verified.
    public func decompress(_ frame: UnsafeRawBufferPointer, maxSize: Int) throws(ZstdError) -> [UInt8] {
        guard let size = Self.declaredSize(of: frame) else {
            throw ZstdError(kind: .corrupt, function: "ZSTD_getFrameContentSize", message: "not a zstd frame with a declared size")
        }
        guard size <= maxSize else {
            throw ZstdError(kind: .tooLarge, function: "ZSTD_getFrameContentSize", message: "frame declares \(size) bytes, limit is \(maxSize)")
        }
        try Self.checkSingleFrame(frame)
        var n = 0
        let out = [UInt8](unsafeUninitializedCapacity: size) { buf, count in
            n = ZSTD_decompressDCtx(dctx, buf.baseAddress, size, frame.baseAddress, frame.count)
            count = ZSTD_isError(n) != 0 ? 0 : min(n, size)
        }
        guard try check(n, "ZSTD_decompressDCtx") == size else {
            throw ZstdError(kind: .corrupt, function: "ZSTD_decompressDCtx", message: "frame produced \(n) bytes, declared \(size)")
        }
        return out
    }
}
