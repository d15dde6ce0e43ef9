import Foundation  // memcmp
import TensorFiles

/// `RecordCodec.check` for many records of one cache, at a fraction of its cost per record.
///
/// Records of a cache share one or two header layouts: only the metadata differs. After a record
/// passes the full check, its header's tensor part (everything after the `__metadata__` object)
/// is kept with the header length and payload size. A later record whose metadata object has
/// the compact form writers emit (printable ASCII strings without escapes) and whose remaining
/// header bytes, header length and size are identical has the same tensors, so only its
/// metadata fields and its group map are checked. Anything else takes the full check, which also
/// reports what is wrong: this fast path only ever accepts, never refuses.
///
/// Not thread-safe: one per thread.
public final class RecordChecker {
    private struct Layout {
        var tail: [UInt8]
        var headerLength: UInt64
        var payloadCount: Int
        var groups: Range<Int>
        var groupsDType: TensorDType
        var k: Int
    }

    private var layouts: [Layout] = []
    /// Full checks that may still add a layout: records of other writers may have none to keep,
    /// and must not pay a second parse each.
    private var tries = 64
    private static let maxLayouts = 8
    private static let metadataKey = Array(#""__metadata__""#.utf8)

    public init() {}

    /// The checks of `RecordCodec.check(stored:shuffled:)`, with its result and errors.
    public func check(stored: UnsafeRawBufferPointer, shuffled: Bool) throws(FormatError) -> (id: String, view: Int) {
        if let scan = MetadataFields(stored), let layout = layouts.first(where: { matches($0, scan, stored) }),
           let result = scan.checked() {
            let groups = UnsafeRawBufferPointer(rebasing: stored[layout.groups])
            try RecordCodec.checkGroups(groups, dtype: layout.groupsDType, planar: shuffled, k: layout.k)
            return result
        }
        let result = try RecordCodec.check(stored: stored, shuffled: shuffled)
        remember(stored)
        return result
    }

    private func matches(_ layout: Layout, _ scan: MetadataFields, _ p: UnsafeRawBufferPointer) -> Bool {
        layout.payloadCount == p.count && layout.headerLength == scan.headerLength && layout.tail.count == scan.tail.count
            && layout.tail.withUnsafeBytes { memcmp($0.baseAddress!, p.baseAddress! + scan.tail.lowerBound, $0.count) } == 0
    }

    /// Keeps the layout of a record that just passed the full check.
    private func remember(_ p: UnsafeRawBufferPointer) {
        guard layouts.count < Self.maxLayouts, tries > 0 else { return }
        tries -= 1
        guard let scan = MetadataFields(p),
              let header = try? Safetensors.parseHeader(p), let latents = header.entry("latents"),
              let groups = header.entry("groups") else { return }
        let tail = Array(p[scan.tail])
        // A second `__metadata__` object in the tail would add to the metadata the scan reads.
        guard !tail.withUnsafeBytes({ t in Self.metadataKey.withUnsafeBytes { key in
            t.count >= key.count && (0...(t.count - key.count)).contains { memcmp(t.baseAddress! + $0, key.baseAddress!, key.count) == 0 }
        } }) else { return }
        layouts.append(Layout(tail: tail, headerLength: scan.headerLength, payloadCount: p.count,
                              groups: (header.dataOffset + groups.byteRange.lowerBound)..<(header.dataOffset + groups.byteRange.upperBound),
                              groupsDType: groups.dtype, k: latents.shape[0]))
    }
}

/// The metadata fields `RecordCodec.checkMetadata` looks at, read from a header that starts
/// `{"__metadata__":{` with printable-ASCII strings without escapes (nil for anything else).
struct MetadataFields {
    var headerLength: UInt64
    /// Byte range, within the payload, of the header after the metadata object.
    var tail: Range<Int>
    private var format: Range<Int>?
    private var id: Range<Int>?
    private var view: Range<Int>?
    private var label: Range<Int>?
    private var size: Range<Int>?
    private var box: Range<Int>?
    private let bytes: UnsafeRawBufferPointer

    private static let prefix = Array(#"{"__metadata__":{"#.utf8)
    private static let quote = UInt8(ascii: "\"")

    init?(_ p: UnsafeRawBufferPointer) {
        bytes = p
        guard p.count >= 8 else { return nil }
        headerLength = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(p.count - 8) else { return nil }
        let end = 8 + Int(headerLength)
        var pos = 8
        guard end - pos > Self.prefix.count,
              Self.prefix.withUnsafeBytes({ memcmp(p.baseAddress! + pos, $0.baseAddress!, $0.count) }) == 0 else { return nil }
        pos += Self.prefix.count
        func string() -> Range<Int>? {
            guard pos < end, p[pos] == Self.quote else { return nil }
            let start = pos + 1
            var i = start
            while i < end {
                let b = p[i]
                if b == Self.quote { break }
                guard b >= 0x20, b < 0x7F, b != UInt8(ascii: "\\") else { return nil }
                i += 1
            }
            guard i < end else { return nil }
            pos = i + 1
            return start..<i
        }
        func equals(_ r: Range<Int>, _ s: StaticString) -> Bool {
            r.count == s.utf8CodeUnitCount && memcmp(p.baseAddress! + r.lowerBound, s.utf8Start, r.count) == 0
        }
        if pos < end, p[pos] == UInt8(ascii: "}") {
            pos += 1
        } else {
            while true {
                guard let key = string(), pos < end, p[pos] == UInt8(ascii: ":") else { return nil }
                pos += 1
                guard let value = string(), pos < end else { return nil }
                // Last one wins, as in the parsed dictionary.
                if equals(key, "mtok.format") { format = value }
                else if equals(key, "id") { id = value }
                else if equals(key, "view") { view = value }
                else if equals(key, "label") { label = value }
                else if equals(key, "source_size") { size = value }
                else if equals(key, "crop_box") { box = value }
                let b = p[pos]
                pos += 1
                if b == UInt8(ascii: ",") { continue }
                guard b == UInt8(ascii: "}") else { return nil }
                break
            }
        }
        tail = pos..<end
    }

    /// (id, view) when every field passes `RecordCodec.checkMetadata` in its plain form (decimal
    /// digits; label may be -1); nil to let the full check decide.
    func checked() -> (id: String, view: Int)? {
        guard let format, let id, let view, let label, let size, let box else { return nil }
        guard format.count == RecordCodec.formatVersion.utf8.count,
              zip(bytes[format], RecordCodec.formatVersion.utf8).allSatisfy({ $0 == $1 }) else { return nil }
        guard let v = digits(view), digits(label) != nil || isMinusOne(label),
              commaSeparatedDigits(size) == 2, commaSeparatedDigits(box) == 4 else { return nil }
        return (String(decoding: UnsafeRawBufferPointer(rebasing: bytes[id]), as: UTF8.self), v)
    }

    private func digits(_ r: Range<Int>) -> Int? {
        guard !r.isEmpty, r.count <= 18 else { return nil }
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
