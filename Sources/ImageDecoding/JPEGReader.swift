internal import CImageShims

/// Owns one libjpeg decompressor (through the C shim) for the life of one decode.
///
/// Not thread-safe and not Sendable: create one per decode, on the thread that uses it.
final class JPEGReader {
    private let handle: OpaquePointer
    let width: Int
    let height: Int
    let components: Int
    /// libjpeg's J_COLOR_SPACE value of the stored data.
    let colorSpace: Int
    /// An Adobe APP14 marker was present; 4-component data is then stored inverted.
    let sawAdobeMarker: Bool
    let exifPayload: [UInt8]?
    private let path: String

    /// Parses the header. `bytes` must outlive the reader (the caller keeps it alive).
    init(bytes: UnsafeRawBufferPointer, path: String) throws(ImageDecodingError) {
        var info = mtok_jpeg_info()
        var result = mtok_img_result()
        guard let h = mtok_jpeg_open(bytes.baseAddress, bytes.count, &info, &result) else {
            throw ShimStatus.error(result, path: path, format: "JPEG")
        }
        handle = h
        width = Int(info.width)
        height = Int(info.height)
        components = Int(info.components)
        colorSpace = Int(info.color_space)
        sawAdobeMarker = info.saw_adobe_marker != 0
        if let p = info.exif, info.exif_length > 0 {
            exifPayload = Array(UnsafeBufferPointer(start: p, count: info.exif_length))
        } else {
            exifPayload = nil
        }
        self.path = path
    }

    deinit { mtok_jpeg_close(handle) }

    /// Decodes rows `y0..<y0+h`, columns at least `x0..<x0+w` (widened by libjpeg to its iMCU grid),
    /// at `1/scaleDenominator` scale, as RGB.
    /// - Returns: the pixels and the column/row where they start in the scaled image.
    func decodeRGB(scaleDenominator: Int, x0: Int, width w: Int, y0: Int, height h: Int,
                   acceptTruncated: Bool) throws(ImageDecodingError) -> (RGBImage, originX: Int, originY: Int) {
        var request = mtok_jpeg_request()
        request.scale_denom = Int32(scaleDenominator)
        // The Adobe APP14 marker is what says 4-component samples are inverted (Photoshop's
        // convention); Pillow inverts every CMYK JPEG, which turns plain CMYK into a negative.
        request.invert_cmyk = sawAdobeMarker ? 1 : 0
        request.allow_truncated = acceptTruncated ? 1 : 0
        request.x0 = UInt32(x0)
        request.width = UInt32(w)
        request.y0 = UInt32(y0)
        request.height = UInt32(h)
        var region = mtok_jpeg_region()
        var result = mtok_img_result()
        if mtok_jpeg_start(handle, &request, &region, &result) != 0 {
            throw ShimStatus.error(result, path: path, format: "JPEG")
        }
        let rw = Int(region.width), rh = Int(region.height)
        var status: Int32 = 0
        // No zero fill: the shim writes every byte of the region (zeros for rows it could not read).
        let pixels = [UInt8](unsafeUninitializedCapacity: rw * rh * 3) { buf, initialized in
            status = mtok_jpeg_read_rgb(handle, buf.baseAddress, &result)
            initialized = rw * rh * 3
        }
        if status != 0 { throw ShimStatus.error(result, path: path, format: "JPEG") }
        return (RGBImage(width: rw, height: rh, pixels: pixels), Int(region.x0), Int(region.y0))
    }
}

/// Maps the shim's status codes to the public error: the one chokepoint for both C libraries.
enum ShimStatus {
    static func error(_ result: mtok_img_result, path: String, format: String) -> ImageDecodingError {
        let message = withUnsafeBytes(of: result.message) { raw -> String in
            let bytes = raw.prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
        let kind: ImageDecodingError.Kind
        switch Int(result.status) {
        case Int(MTOK_IMG_TRUNCATED.rawValue): kind = .truncated
        case Int(MTOK_IMG_UNSUPPORTED.rawValue): kind = .unsupported
        case Int(MTOK_IMG_TOO_LARGE.rawValue): kind = .tooLarge
        case Int(MTOK_IMG_NO_MEMORY.rawValue): kind = .io
        default: kind = .corrupt
        }
        return ImageDecodingError(kind, path: path, reason: "\(format): \(message.isEmpty ? kind.rawValue : message)")
    }
}
