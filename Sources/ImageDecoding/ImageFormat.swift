/// Image formats recognised from a file's first bytes, never from its name.
enum ImageFormat: Equatable {
    case jpeg
    case png
    /// A real image format this module does not decode; the associated name is for messages.
    case other(String)
    case unknown

    /// Looks at the magic bytes only. ImageNet holds PNGs named `.JPEG`, so names prove nothing.
    static func sniff(_ bytes: UnsafeRawBufferPointer) -> ImageFormat {
        func starts(_ magic: [UInt8]) -> Bool {
            bytes.count >= magic.count && zip(bytes, magic).allSatisfy { $0 == $1 }
        }
        if starts([0xFF, 0xD8, 0xFF]) { return .jpeg }
        if starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if starts(Array("GIF8".utf8)) { return .other("GIF") }
        if starts(Array("BM".utf8)) && bytes.count >= 26 { return .other("BMP") }
        if starts([0x49, 0x49, 0x2A, 0x00]) || starts([0x4D, 0x4D, 0x00, 0x2A]) { return .other("TIFF") }
        if bytes.count >= 12 && starts(Array("RIFF".utf8))
            && bytes[8] == 0x57 && bytes[9] == 0x45 && bytes[10] == 0x42 && bytes[11] == 0x50 {
            return .other("WebP")
        }
        if bytes.count >= 12 && bytes[4] == 0x66 && bytes[5] == 0x74 && bytes[6] == 0x79 && bytes[7] == 0x70 {
            return .other("HEIF/AVIF")
        }
        if starts([0xFF, 0x4F, 0xFF, 0x51]) || starts([0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50]) {
            return .other("JPEG 2000")
        }
        return .unknown
    }
}
