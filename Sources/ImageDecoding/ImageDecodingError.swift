/// Why an image could not be decoded: the file it came from, a kind, and a human-readable reason.
///
/// Every failure of ``ImageDecoder`` and ``Preprocessor`` is one of these; no input bytes can make
/// them crash. The reason usually carries the C library's own message.
public struct ImageDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The class of failure. A caller that logs failures (the tokenize pipeline) keys on this.
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// The file has zero bytes.
        case empty
        /// The data ends before the image does.
        case truncated
        /// The data is damaged: bad markers, bad Huffman or zlib data, impossible header values.
        case corrupt
        /// The bytes are not a known image format.
        case notAnImage
        /// An image format or variant this module does not decode (GIF, WebP, 12-bit JPEG...).
        case unsupported
        /// Width × height is over the pixel limit (a decompression-bomb guard).
        case tooLarge
        /// Reading the file failed, or memory ran out.
        case io
    }

    public var kind: Kind
    /// The file the bytes came from, or a caller-chosen label; empty when unknown.
    public var path: String
    public var reason: String

    public init(_ kind: Kind, path: String, reason: String) {
        self.kind = kind
        self.path = path
        self.reason = reason
    }

    /// One line: `path: kind: reason`.
    public var description: String {
        let place = path.isEmpty ? "" : "\(path): "
        return "\(place)\(kind.rawValue): \(reason)"
    }
}
