import Foundation  // memcmp

/// A fast scan of a payload header's `__metadata__` object, as both writers lay it out: compact
/// JSON that starts `{"__metadata__":{` with string values. It reads the four fields a stream
/// needs and where the rest of the header (the tensor entries) starts.
///
/// It never decides that a header is valid: any deviation (whitespace, escapes, control
/// characters, invalid UTF-8, another key order) makes it return nil and the strict parser
/// handle the record, and the tensor part it finds is only trusted once the strict parser has
/// checked the same bytes for a payload of the same size (`BatchDecoder.layouts`).
struct MetadataScan {
    var format: String?
    var id: String?
    var view: Int?
    var label: Int?
    /// Byte range, within the payload, of the header after the metadata object.
    var tail: Range<Int>

    private static let prefix = Array(#"{"__metadata__":{"#.utf8)
    private static let quote = UInt8(ascii: "\"")

    init?(payload p: UnsafeRawBufferPointer) {
        guard p.count >= 8 else { return nil }
        let headerLength = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(p.count - 8) else { return nil }
        let end = 8 + Int(headerLength)
        var pos = 8
        guard end - pos > Self.prefix.count,
              Self.prefix.withUnsafeBytes({ memcmp(p.baseAddress! + pos, $0.baseAddress!, $0.count) }) == 0
        else { return nil }
        pos += Self.prefix.count

        /// The bytes of a JSON string without escapes starting at `pos` (at its opening quote).
        func string() -> Range<Int>? {
            guard pos < end, p[pos] == Self.quote else { return nil }
            let start = pos + 1
            var i = start
            while i < end {
                let b = p[i]
                if b == Self.quote { break }
                if b == UInt8(ascii: "\\") || b < 0x20 { return nil }
                i += 1
            }
            guard i < end else { return nil }
            pos = i + 1
            return start..<i
        }
        func text(_ r: Range<Int>) -> String? {
            let bytes = UnsafeRawBufferPointer(rebasing: p[r])
            // ASCII (the usual case) is valid UTF-8; only other text needs the full validation.
            var ascii = true
            for b in bytes where b >= 0x80 {
                ascii = false
                break
            }
            return ascii ? String(decoding: bytes, as: UTF8.self) : String(validating: bytes, as: UTF8.self)
        }
        func equals(_ r: Range<Int>, _ s: StaticString) -> Bool {
            r.count == s.utf8CodeUnitCount && memcmp(p.baseAddress! + r.lowerBound, s.utf8Start, r.count) == 0
        }

        if pos < end, p[pos] != UInt8(ascii: "}") {
            while true {
                guard let key = string(), pos < end, p[pos] == UInt8(ascii: ":") else { return nil }
                pos += 1
                guard let value = string(), pos < end else { return nil }
                if equals(key, "mtok.format") {
                    format = text(value)
                } else if equals(key, "id") {
                    id = text(value)
                    if id == nil { return nil }
                } else if equals(key, "view") {
                    view = text(value).flatMap { Int($0) }
                } else if equals(key, "label") {
                    label = text(value).flatMap { Int($0) }
                } else if text(key) == nil || text(value) == nil {
                    return nil  // the strict parser refuses invalid UTF-8; let it report this record
                }
                if p[pos] == UInt8(ascii: ",") {
                    pos += 1
                    continue
                }
                guard p[pos] == UInt8(ascii: "}") else { return nil }
                break
            }
        }
        tail = (pos + 1)..<end
    }
}
