import Foundation  // memcmp

/// A fast scan of a payload header's `__metadata__` object in the form both writers emit:
/// compact JSON starting `{"__metadata__":{`, string values without escapes or control
/// characters. Readers and the verifier use it to skip the JSON parser for the records of a
/// layout they have already checked once (the header after the metadata object — the tensor
/// entries — must then match that record's byte for byte).
///
/// It never decides that a header is invalid: any deviation (whitespace, escapes, invalid UTF-8,
/// a number where a string belongs) gives nil, and the caller takes the strict path, which
/// accepts or reports the record. Field values are only taken in their plain decimal form, so
/// whatever it accepts the strict checks (`RecordCodec.checkMetadata`) accept with the same
/// meaning.
public struct MetadataScan {
    public let headerLength: UInt64
    /// Byte range, within the payload, of the header after the metadata object.
    public let tail: Range<Int>
    private var format: Range<Int>?
    private var id: Range<Int>?
    private var view: Range<Int>?
    private var label: Range<Int>?
    private var size: Range<Int>?
    private var box: Range<Int>?
    private let bytes: UnsafeRawBufferPointer

    private static let prefix = Array(#"{"__metadata__":{"#.utf8)
    private static let quote = UInt8(ascii: "\"")

    /// `payload` must stay valid while the scan is used.
    public init?(payload p: UnsafeRawBufferPointer) {
        bytes = p
        guard p.count >= 8 else { return nil }
        headerLength = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(p.count - 8) else { return nil }
        let end = 8 + Int(headerLength)
        var pos = 8
        guard end - pos > Self.prefix.count,
              Self.prefix.withUnsafeBytes({ memcmp(p.baseAddress! + pos, $0.baseAddress!, $0.count) }) == 0
        else { return nil }
        pos += Self.prefix.count

        /// The bytes of a JSON string without escapes that starts at `pos` (its opening quote);
        /// nil unless they are valid UTF-8 (checked only when not ASCII, the usual case).
        func string() -> Range<Int>? {
            guard pos < end, p[pos] == Self.quote else { return nil }
            let start = pos + 1
            var i = start
            var ascii = true
            while i < end {
                let b = p[i]
                if b == Self.quote { break }
                if b == UInt8(ascii: "\\") || b < 0x20 { return nil }
                if b >= 0x80 { ascii = false }
                i += 1
            }
            guard i < end else { return nil }
            if !ascii, String(validating: UnsafeRawBufferPointer(rebasing: p[start..<i]), as: UTF8.self) == nil { return nil }
            pos = i + 1
            return start..<i
        }
        func equals(_ r: Range<Int>, _ s: StaticString) -> Bool {
            r.count == s.utf8CodeUnitCount && memcmp(p.baseAddress! + r.lowerBound, s.utf8Start, r.count) == 0
        }

        if pos < end, p[pos] == UInt8(ascii: "}") {
            pos += 1
        } else {
            // Only the keys writers emit, each once: a repeated key (which the strict parser
            // refuses) or any other key leaves the record to the strict path.
            var seen: UInt8 = 0
            while true {
                guard let key = string(), pos < end, p[pos] == UInt8(ascii: ":") else { return nil }
                pos += 1
                guard let value = string(), pos < end else { return nil }
                let bit: UInt8
                if equals(key, "mtok.format") { format = value; bit = 1 }
                else if equals(key, "id") { id = value; bit = 2 }
                else if equals(key, "view") { view = value; bit = 4 }
                else if equals(key, "label") { label = value; bit = 8 }
                else if equals(key, "source_size") { size = value; bit = 16 }
                else if equals(key, "crop_box") { box = value; bit = 32 }
                else if equals(key, "source_sha256") { bit = 64 }
                else { return nil }
                guard seen & bit == 0 else { return nil }
                seen |= bit
                let b = p[pos]
                pos += 1
                if b == UInt8(ascii: ",") { continue }
                guard b == UInt8(ascii: "}") else { return nil }
                break
            }
        }
        tail = pos..<end
    }

    /// (id, view, label) when the record names this format version and has a plain id and a view
    /// and label in `RecordCodec`'s ranges. Nil to let the strict path decide.
    public func identity() -> (id: String, view: Int, label: Int)? {
        guard let format, let id, let view = digits(view), RecordCodec.viewRange.contains(view),
              let label = label.flatMap({ isMinusOne($0) ? -1 : digits($0) }), RecordCodec.labelRange.contains(label),
              format.count == RecordCodec.formatVersion.utf8.count,
              zip(bytes[format], RecordCodec.formatVersion.utf8).allSatisfy({ $0 == $1 }) else { return nil }
        return (String(decoding: UnsafeRawBufferPointer(rebasing: bytes[id]), as: UTF8.self), view, label)
    }

    /// (id, view, label) when every field `RecordCodec.checkMetadata` looks at passes in its plain
    /// form; nil to let the full check decide.
    public func checked() -> (id: String, view: Int, label: Int)? {
        guard let size, let box, commaSeparatedDigits(size) == 2, commaSeparatedDigits(box) == 4 else { return nil }
        return identity()
    }

    private func digits(_ r: Range<Int>?) -> Int? {
        guard let r, !r.isEmpty, r.count <= 18 else { return nil }
        var v = 0
        for b in bytes[r] {
            guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return nil }
            v = v * 10 + Int(b - UInt8(ascii: "0"))
        }
        return v
    }

    private func isMinusOne(_ r: Range<Int>) -> Bool {
        r.count == 2 && bytes[r.lowerBound] == UInt8(ascii: "-") && bytes[r.lowerBound + 1] == UInt8(ascii: "1")
    }

    /// Number of comma-separated runs of 1 to 18 digits, or nil if the text is anything else.
    private func commaSeparatedDigits(_ r: Range<Int>) -> Int? {
        var parts = 0, run = 0
        for b in bytes[r] {
            if b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") && run < 18 {
                run += 1
            } else if b == UInt8(ascii: ",") && run > 0 {
                parts += 1
                run = 0
            } else {
                return nil
            }
        }
        return run > 0 ? parts + 1 : nil
    }
}
