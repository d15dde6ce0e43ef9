import Foundation

/// Decodes JPEG and PNG bytes into ``RGBImage``s, choosing the format by content.
///
/// Default policy is parity with Pillow's `Image.open(f).convert("RGB")`, with two departures:
/// - CMYK/YCCK JPEGs are inverted only when an Adobe APP14 marker says the samples are stored
///   inverted; Pillow inverts all of them, which turns plain CMYK into a negative.
/// - 16-bit gray PNGs keep their high byte; Pillow clamps them to 255 (white).
///
/// JPEG goes through libjpeg-turbo (accurate integer IDCT, fancy upsampling: Pillow's settings),
/// PNG through libpng; 16-bit samples keep the high byte, palette tRNS is ignored unless
/// ``DecodeOptions/alphaBackground`` is set. All functions are thread-safe: each call owns its
/// C handles and shares nothing.
public enum ImageDecoder {
    /// Decodes a whole image.
    /// - Parameters:
    ///   - bytes: the file's contents.
    ///   - path: names the source in errors.
    ///   - options: decode policy.
    /// - Returns: the image as RGB.
    /// - Throws: ``ImageDecodingError`` for any input that is not a decodable image.
    public static func decode(bytes: [UInt8], path: String = "", options: DecodeOptions = DecodeOptions())
        throws(ImageDecodingError) -> RGBImage
    {
        try decodeRegion(bytes: bytes, path: path, options: options) { _, _ in nil }.image
    }

    /// Reads and decodes a file.
    /// - Throws: ``ImageDecodingError``; kind `io` when the file cannot be read.
    public static func decodeFile(atPath path: String, options: DecodeOptions = DecodeOptions())
        throws(ImageDecodingError) -> RGBImage
    {
        try decode(bytes: readFile(path), path: path, options: options)
    }

    static func readFile(_ path: String) throws(ImageDecodingError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ImageDecodingError(.io, path: path, reason: "cannot read file")
        }
        return [UInt8](data)
    }

    /// What part of a JPEG to decode, in the coordinates of the image scaled by 1/`scaleDenominator`.
    struct RegionRequest {
        var scaleDenominator: Int = 1
        var x0 = 0, width = 0, y0 = 0, height = 0 // width/height 0: everything
    }

    /// A decoded piece of an image: where it sits in the (scaled) image, and that image's size.
    struct DecodedRegion {
        var image: RGBImage
        var originX = 0, originY = 0
        var fullWidth: Int, fullHeight: Int
        var scaleDenominator = 1
        /// The image's own size (after EXIF orientation when applied), before any DCT scaling.
        var sourceWidth: Int, sourceHeight: Int
    }

    /// Decodes what `plan` asks for, given the full size from the header. `plan` is asked only for
    /// JPEGs without orientation handling (only libjpeg can scale and crop while decoding); other
    /// images come back whole.
    static func decodeRegion(bytes: [UInt8], path: String, options: DecodeOptions,
                             plan: (Int, Int) -> RegionRequest?) throws(ImageDecodingError) -> DecodedRegion
    {
        if bytes.isEmpty { throw ImageDecodingError(.empty, path: path, reason: "file is empty") }
        return try bytes.withUnsafeBufferPointer { (buf) throws(ImageDecodingError) -> DecodedRegion in
            let raw = UnsafeRawBufferPointer(buf)
            switch ImageFormat.sniff(raw) {
            case .jpeg:
                let reader = try JPEGReader(bytes: raw, path: path)
                try checkLimit(reader.width, reader.height, options, path)
                let orientation = options.appliesExifOrientation
                    ? reader.exifPayload.flatMap(ExifOrientation.value(inTIFF:)) ?? 1 : 1
                let request = orientation == 1 ? plan(reader.width, reader.height) ?? RegionRequest() : RegionRequest()
                let (img, ox, oy) = try reader.decodeRGB(
                    scaleDenominator: request.scaleDenominator, x0: request.x0, width: request.width,
                    y0: request.y0, height: request.height, acceptTruncated: options.acceptsTruncatedJPEG)
                if orientation != 1 {
                    let turned = ExifOrientation.apply(orientation, to: img)
                    return DecodedRegion(image: turned, fullWidth: turned.width, fullHeight: turned.height,
                                         sourceWidth: turned.width, sourceHeight: turned.height)
                }
                let d = request.scaleDenominator
                return DecodedRegion(image: img, originX: ox, originY: oy,
                                     fullWidth: (reader.width + d - 1) / d, fullHeight: (reader.height + d - 1) / d,
                                     scaleDenominator: d, sourceWidth: reader.width, sourceHeight: reader.height)
            case .png:
                let reader = try PNGReader(bytes: raw, path: path)
                try checkLimit(reader.width, reader.height, options, path)
                let img = try reader.decodeRGB(background: options.alphaBackground)
                return DecodedRegion(image: img, fullWidth: img.width, fullHeight: img.height,
                                     sourceWidth: img.width, sourceHeight: img.height)
            case .other(let name):
                throw ImageDecodingError(.unsupported, path: path, reason: "\(name) images are not supported")
            case .unknown:
                throw ImageDecodingError(.notAnImage, path: path, reason: "neither JPEG nor PNG data")
            }
        }
    }

    private static func checkLimit(_ w: Int, _ h: Int, _ options: DecodeOptions, _ path: String)
        throws(ImageDecodingError)
    {
        if w <= 0 || h <= 0 {
            throw ImageDecodingError(.corrupt, path: path, reason: "image has no pixels (\(w)x\(h))")
        }
        if w.multipliedReportingOverflow(by: h).partialValue > options.maxPixels {
            throw ImageDecodingError(.tooLarge, path: path,
                                     reason: "\(w)x\(h) = \(w * h) pixels is over the limit of \(options.maxPixels)")
        }
    }
}
