import Foundation  // memcmp
import TensorFiles

/// `RecordCodec.check` for many records of one cache, at a fraction of its cost per record.
///
/// Records of a cache share one or two header layouts: only the metadata differs. After a record
/// passes the full check, its header's tensor part (everything after the `__metadata__` object)
/// is kept with the header length and payload size. A later record whose metadata object has
/// the compact form writers emit (see `MetadataScan`) and whose remaining
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
        var record: RecordLayout
    }

    private var layouts: [Layout] = []
    /// Full checks that may still add a layout: records of other writers may have none to keep,
    /// and must not pay a second parse each.
    private var tries = 64
    private static let maxLayouts = 8
    private static let metadataKey = Array(#""__metadata__""#.utf8)

    public init() {}

    /// The checks of `RecordCodec.check(stored:shuffled:)`, with its result and errors.
    public func check(stored: UnsafeRawBufferPointer, shuffled: Bool) throws(FormatError) -> (id: String, view: Int, layout: RecordLayout) {
        if let scan = MetadataScan(payload: stored), let layout = layouts.first(where: { matches($0, scan, stored) }),
           let result = scan.checked() {
            let groups = UnsafeRawBufferPointer(rebasing: stored[layout.groups])
            try RecordCodec.checkGroups(groups, dtype: layout.groupsDType, planar: shuffled, k: layout.k)
            return (result.id, result.view, layout.record)
        }
        let result = try RecordCodec.check(stored: stored, shuffled: shuffled)
        remember(stored, result.layout)
        return result
    }

    private func matches(_ layout: Layout, _ scan: MetadataScan, _ p: UnsafeRawBufferPointer) -> Bool {
        layout.payloadCount == p.count && layout.headerLength == scan.headerLength && layout.tail.count == scan.tail.count
            && layout.tail.withUnsafeBytes { memcmp($0.baseAddress!, p.baseAddress! + scan.tail.lowerBound, $0.count) } == 0
    }

    /// Keeps the layout of a record that just passed the full check.
    private func remember(_ p: UnsafeRawBufferPointer, _ layout: RecordLayout) {
        guard layouts.count < Self.maxLayouts, tries > 0 else { return }
        tries -= 1
        guard let scan = MetadataScan(payload: p),
              let header = try? Safetensors.parseHeader(p), let latents = header.entry("latents"),
              let groups = header.entry("groups") else { return }
        let tail = Array(p[scan.tail])
        // A second `__metadata__` object in the tail would add to the metadata the scan reads.
        guard !tail.withUnsafeBytes({ t in Self.metadataKey.withUnsafeBytes { key in
            t.count >= key.count && (0...(t.count - key.count)).contains { memcmp(t.baseAddress! + $0, key.baseAddress!, key.count) == 0 }
        } }) else { return }
        layouts.append(Layout(tail: tail, headerLength: scan.headerLength, payloadCount: p.count,
                              groups: (header.dataOffset + groups.byteRange.lowerBound)..<(header.dataOffset + groups.byteRange.upperBound),
                              groupsDType: groups.dtype, k: latents.shape[0], record: layout))
    }
}
