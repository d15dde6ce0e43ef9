internal import CImageShims

/// Owns one libpng read struct (through the C shim) for the life of one decode.
///
/// Not thread-safe and not Sendable: create one per decode, on the thread that uses it.
final class PNGReader {
    private let handle: OpaquePointer
    let width: Int
    let height: Int
    private let path: String

    /// Parses the header. `bytes` must outlive the reader (the caller keeps it alive).
    init(bytes: UnsafeRawBufferPointer, path: String) throws(ImageDecodingError) {
        var info = mtok_png_info()
        var result = mtok_img_result()
        guard let h = mtok_png_open(bytes.baseAddress, bytes.count, &info, &result) else {
            throw ShimStatus.error(result, path: path, format: "PNG")
        }
        handle = h
        width = Int(info.width)
        height = Int(info.height)
        self.path = path
    }

    deinit { mtok_png_close(handle) }

    /// Decodes to RGB. Alpha (and tRNS, only when compositing) goes over `background`, or is
    /// dropped when `background` is nil, as `convert("RGB")` drops it.
    func decodeRGB(background: RGBColor?) throws(ImageDecodingError) -> RGBImage {
        let n = width * height
        var raw = [UInt8](repeating: 0, count: n * 4)
        var channels: Int32 = 0
        var result = mtok_img_result()
        let status = raw.withUnsafeMutableBufferPointer { buf in
            mtok_png_read(handle, background == nil ? 0 : 1, buf.baseAddress, &channels, &result)
        }
        if status != 0 { throw ShimStatus.error(result, path: path, format: "PNG") }
        var out = [UInt8](repeating: 0, count: n * 3)
        let ch = Int(channels)
        raw.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for i in 0..<n {
                    let s = i * ch
                    var r: UInt8, g: UInt8, b: UInt8
                    let alpha: UInt8
                    switch ch {
                    case 1: (r, g, b, alpha) = (src[s], src[s], src[s], 255)
                    case 2: (r, g, b, alpha) = (src[s], src[s], src[s], src[s + 1])
                    case 3: (r, g, b, alpha) = (src[s], src[s + 1], src[s + 2], 255)
                    default: (r, g, b, alpha) = (src[s], src[s + 1], src[s + 2], src[s + 3])
                    }
                    if let bg = background, alpha != 255 {
                        r = Self.over(r, bg.red, alpha)
                        g = Self.over(g, bg.green, alpha)
                        b = Self.over(b, bg.blue, alpha)
                    }
                    dst[i * 3] = r
                    dst[i * 3 + 1] = g
                    dst[i * 3 + 2] = b
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }

    /// Straight-alpha "over" with rounding to nearest.
    @inline(__always)
    static func over(_ c: UInt8, _ bg: UInt8, _ a: UInt8) -> UInt8 {
        let v = Int(c) * Int(a) + Int(bg) * (255 - Int(a)) + 127
        return UInt8(v / 255)
    }
}

/// Writes 8-bit RGB images as PNG files (libpng through the shim).
public enum PNGWriter {
    /// Writes `image` to `path`, replacing any file there.
    /// - Throws: ``ImageDecodingError`` of kind `io` when the file cannot be written.
    public static func write(_ image: RGBImage, to path: String) throws(ImageDecodingError) {
        var result = mtok_img_result()
        let status = image.pixels.withUnsafeBufferPointer { buf in
            mtok_png_write_rgb(path, buf.baseAddress, UInt32(image.width), UInt32(image.height), &result)
        }
        if status != 0 {
            let e = ShimStatus.error(result, path: path, format: "PNG write")
            throw ImageDecodingError(.io, path: path, reason: e.reason)
        }
    }
}
