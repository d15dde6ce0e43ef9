/// Choices that change what pixels a decode produces. The defaults reproduce Pillow's
/// `Image.open(f).convert("RGB")`, which is what tokenizers were trained on, except where Pillow is
/// plainly wrong (plain CMYK JPEGs, 16-bit gray PNGs; see ``ImageDecoder``).
public struct DecodeOptions: Sendable, Equatable {
    /// Images with more pixels than this fail with ``ImageDecodingError/Kind/tooLarge``, checked
    /// from the header before any pixel buffer is allocated. Pillow's bomb limit by default.
    public var maxPixels: Int = 178_956_970
    /// Rotate or mirror JPEGs as their EXIF orientation tag (values 1...8) says. Off by default,
    /// as in the training pipelines, which never called `ImageOps.exif_transpose`.
    public var appliesExifOrientation: Bool = false
    /// When set, alpha (an alpha channel, or PNG tRNS transparency) is composited over this colour
    /// instead of being dropped: `out = (c·a + bg·(255−a) + 127) / 255`.
    public var alphaBackground: RGBColor? = nil
    /// Accept a JPEG that ends early (libjpeg pads the missing rows with gray) instead of failing
    /// with ``ImageDecodingError/Kind/truncated``.
    public var acceptsTruncatedJPEG: Bool = false

    public init() {}
}

/// An opaque 8-bit colour.
public struct RGBColor: Sendable, Equatable {
    public var red: UInt8
    public var green: UInt8
    public var blue: UInt8

    public init(red: UInt8, green: UInt8, blue: UInt8) {
        self.red = red
        self.green = green
        self.blue = blue
    }

    public static let white = RGBColor(red: 255, green: 255, blue: 255)
    public static let black = RGBColor(red: 0, green: 0, blue: 0)
}
