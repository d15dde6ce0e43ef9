/// One tensor's entry in a safetensors header.
public struct TensorEntry: Sendable, Equatable {
    public let dtype: TensorDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section (`SafetensorsHeader.dataOffset`).
    public let byteRange: Range<Int>

    public init(dtype: TensorDType, shape: [Int], byteRange: Range<Int>) {
        self.dtype = dtype
        self.shape = shape
        self.byteRange = byteRange
    }
}

/// The parsed header of a safetensors blob.
public struct SafetensorsHeader: Sendable, Equatable {
    /// Tensors in the order of their data offsets.
    public let entries: [(name: String, entry: TensorEntry)]
    public let metadata: [String: String]
    /// Offset of the data section from the start of the blob (8 + header length).
    public let dataOffset: Int

    public var tensors: [String: TensorEntry] {
        Dictionary(entries.map { ($0.name, $0.entry) }, uniquingKeysWith: { a, _ in a })
    }

    public func entry(_ name: String) -> TensorEntry? {
        entries.first { $0.name == name }?.entry
    }

    public static func == (lhs: SafetensorsHeader, rhs: SafetensorsHeader) -> Bool {
        lhs.dataOffset == rhs.dataOffset && lhs.metadata == rhs.metadata
            && lhs.entries.count == rhs.entries.count
            && zip(lhs.entries, rhs.entries).allSatisfy { $0.name == $1.name && $0.entry == $1.entry }
    }
}

public struct SafetensorsError: Error, CustomStringConvertible, Sendable, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "invalid safetensors: \(reason)" }
}

/// Reads and writes the safetensors format (huggingface/safetensors): an 8-byte little-endian
/// header length, a JSON header naming each tensor's dtype, shape and data offsets, then the
/// raw little-endian tensor bytes.
public enum Safetensors {
    /// Headers above this size are refused before any allocation (safetensors' own limit).
    public static let maxHeaderBytes = 100_000_000

    /// Parses and validates the header of `bytes`, which must hold the whole blob: every tensor's
    /// byte count must match its shape, ranges must tile the data section without gaps or
    /// overlaps, and the data section must end where the blob ends.
    public static func parseHeader(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) -> SafetensorsHeader {
        try parseHeader(bytes, compactScan: true)
    }

    /// `compactScan: false` forces the JSON parser (tests compare the two paths).
    static func parseHeader(_ bytes: UnsafeRawBufferPointer, compactScan: Bool) throws(SafetensorsError) -> SafetensorsHeader {
        guard bytes.count >= 8 else { throw SafetensorsError("\(bytes.count) bytes, shorter than the 8-byte length prefix") }
        let headerLength = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(min(maxHeaderBytes, bytes.count - 8)) else {
            throw SafetensorsError("header length \(headerLength) exceeds the \(bytes.count)-byte blob")
        }
        let dataOffset = 8 + Int(headerLength)
        let json = UnsafeRawBufferPointer(rebasing: bytes[8..<dataOffset])
        var metadata: [String: String] = [:]
        var entries: [(name: String, entry: TensorEntry)] = []
        // Headers as `serializeHeader` writes them take a direct scan (readers parse one header
        // per record read); anything else goes through the JSON parser. Both feed the same checks.
        if compactScan, let compact = CompactHeaderScan(json) {
            for member in compact.members {
                entries.append((member.name, try entry(member.name, dtype: member.dtype, dims: member.shape,
                                                       begin: member.begin, end: member.end)))
            }
            metadata = compact.metadata
        } else {
            let value: JSONValue
            do {
                value = try JSONValue.parse(json)
            } catch {
                throw SafetensorsError("header: \(error)")
            }
            guard case let .object(members) = value else { throw SafetensorsError("header is not a JSON object") }
            for (name, value) in members {
                if name == "__metadata__" {
                    guard case let .object(pairs) = value else { throw SafetensorsError("__metadata__ is not an object") }
                    for (k, v) in pairs {
                        guard let s = v.stringValue else { throw SafetensorsError("__metadata__[\(k)] is not a string") }
                        metadata[k] = s
                    }
                    continue
                }
                guard let dtypeName = value["dtype"]?.stringValue else { throw SafetensorsError("tensor \(name): no dtype") }
                guard let dtype = TensorDType(rawValue: dtypeName) else {
                    throw SafetensorsError("tensor \(name): unsupported dtype \(dtypeName)")
                }
                guard case let .array(dims)? = value["shape"] else { throw SafetensorsError("tensor \(name): no shape") }
                var shape: [Int] = []
                for d in dims {
                    guard let n = d.intValue else { throw SafetensorsError("tensor \(name): bad dimension") }
                    shape.append(n)
                }
                guard case let .array(offsets)? = value["data_offsets"], offsets.count == 2,
                      let begin = offsets[0].intValue, let end = offsets[1].intValue
                else { throw SafetensorsError("tensor \(name): bad data_offsets") }
                entries.append((name, try entry(name, dtype: dtype, dims: shape, begin: begin, end: end)))
            }
        }
        entries.sort { $0.entry.byteRange.lowerBound < $1.entry.byteRange.lowerBound }
        var expected = 0
        for (name, entry) in entries {
            guard entry.byteRange.lowerBound == expected else {
                throw SafetensorsError("tensor \(name): data does not start where the previous tensor ends")
            }
            expected = entry.byteRange.upperBound
        }
        guard dataOffset + expected == bytes.count else {
            throw SafetensorsError("data section is \(bytes.count - dataOffset) bytes, tensors cover \(expected)")
        }
        return SafetensorsHeader(entries: entries, metadata: metadata, dataOffset: dataOffset)
    }

    /// One tensor's entry, checked: the shape's element count does not overflow and its byte
    /// count equals the data offsets' span.
    static func entry(_ name: String, dtype: TensorDType, dims: [Int], begin: Int, end: Int) throws(SafetensorsError) -> TensorEntry {
        var count = 1
        for n in dims {
            let (product, overflow) = count.multipliedReportingOverflow(by: n)
            guard !overflow else { throw SafetensorsError("tensor \(name): shape overflows") }
            count = product
        }
        guard begin <= end else { throw SafetensorsError("tensor \(name): bad data_offsets") }
        let (byteCount, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow, end - begin == byteCount else {
            throw SafetensorsError("tensor \(name): shape \(dims) of \(dtype.rawValue) needs \(count * dtype.byteSize) bytes, data_offsets give \(end - begin)")
        }
        return TensorEntry(dtype: dtype, shape: dims, byteRange: begin..<end)
    }

    /// Serializes tensors (in the given order) and string metadata. The output is deterministic:
    /// metadata keys are sorted and the header is padded with spaces to a multiple of 8 bytes,
    /// so tensor data is 8-byte aligned.
    public static func serialize(_ tensors: [NamedTensor], metadata: [String: String]) -> [UInt8] {
        var out = serializeHeader(tensors, metadata: metadata)
        out.reserveCapacity(out.count + tensors.reduce(0) { $0 + $1.bytes.count })
        for t in tensors { out.append(contentsOf: t.bytes) }
        return out
    }

    /// The 8-byte length and the padded JSON header that `serialize` puts before the tensor data.
    public static func serializeHeader(_ tensors: [NamedTensor], metadata: [String: String]) -> [UInt8] {
        // Built as bytes, not as a Swift String: this runs once per record written.
        var header: [UInt8] = []
        header.reserveCapacity(128 + 96 * tensors.count + metadata.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count + 8 })
        func put(_ s: StaticString) { header.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)) }
        func put(int: Int) { header.append(contentsOf: String(int).utf8) }
        header.append(UInt8(ascii: "{"))
        if !metadata.isEmpty {
            put("\"__metadata__\":{")
            for (i, key) in metadata.keys.sorted().enumerated() {
                if i > 0 { header.append(UInt8(ascii: ",")) }
                JSONValue.appendQuoted(key, to: &header)
                header.append(UInt8(ascii: ":"))
                JSONValue.appendQuoted(metadata[key]!, to: &header)
            }
            header.append(UInt8(ascii: "}"))
        }
        var offset = 0
        for t in tensors {
            if header.count > 1 { header.append(UInt8(ascii: ",")) }
            JSONValue.appendQuoted(t.name, to: &header)
            put(":{\"dtype\":\"")
            header.append(contentsOf: t.dtype.rawValue.utf8)
            put("\",\"shape\":[")
            for (i, d) in t.shape.enumerated() {
                if i > 0 { header.append(UInt8(ascii: ",")) }
                put(int: d)
            }
            put("],\"data_offsets\":[")
            put(int: offset)
            header.append(UInt8(ascii: ","))
            put(int: offset + t.bytes.count)
            put("]}")
            offset += t.bytes.count
        }
        header.append(UInt8(ascii: "}"))
        while header.count % 8 != 0 { header.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + header.count + offset)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: header)
        return out
    }

    /// Parses a whole blob into named tensors (copies the data).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) -> (tensors: [NamedTensor], metadata: [String: String]) {
        let header = try parseHeader(bytes)
        let tensors = header.entries.map { name, e in
            NamedTensor(name: name, dtype: e.dtype, shape: e.shape,
                        bytes: Array(bytes[(header.dataOffset + e.byteRange.lowerBound)..<(header.dataOffset + e.byteRange.upperBound)]))
        }
        return (tensors, header.metadata)
    }
}
