import Foundation

/// Writes and reads NumPy `.npy` arrays and `.npz` archives (an uncompressed ZIP of `.npy`
/// members), which `numpy.load` opens directly.
public enum NumpyFiles {
    public struct FormatError: Error, CustomStringConvertible, Sendable {
        public let reason: String
        public var description: String { "invalid .npy: \(reason)" }
    }

    /// An `.npy` (format 1.0) holding `bytes` as a C-ordered array.
    public static func npy(dtype: TensorDType, shape: [Int], bytes: [UInt8]) -> [UInt8] {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = Array("{'descr': '\(dtype.numpyDescr)', 'fortran_order': False, 'shape': \(shapeText), }".utf8)
        // Pad so that magic(6) + version(2) + length(2) + header ends on a 64-byte boundary, with '\n' last.
        while (10 + header.count + 1) % 64 != 0 { header.append(0x20) }
        header.append(0x0A)
        var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        out.append(UInt8(header.count & 0xFF))
        out.append(UInt8(header.count >> 8))
        out += header
        out += bytes
        return out
    }

    /// Reads a little-endian, C-ordered `.npy` of a supported dtype.
    public static func readNpy(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> (dtype: TensorDType, shape: [Int], data: [UInt8]) {
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1..<6]) == Array("NUMPY".utf8) else {
            throw FormatError(reason: "no NUMPY magic")
        }
        let major = bytes[6]
        let headerLength: Int
        let headerStart: Int
        if major == 1 {
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        } else if major == 2 || major == 3 {
            guard bytes.count >= 12 else { throw FormatError(reason: "truncated header") }
            headerLength = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            headerStart = 12
        } else {
            throw FormatError(reason: "unsupported version \(major)")
        }
        guard headerStart + headerLength <= bytes.count else { throw FormatError(reason: "truncated header") }
        let header = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[headerStart..<(headerStart + headerLength)]), as: UTF8.self)
        func field(_ key: String) -> Substring? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return header[r.upperBound...].drop { $0 == " " }
        }
        guard let descrField = field("descr"), descrField.first == "'",
              let descrEnd = descrField.dropFirst().firstIndex(of: "'") else { throw FormatError(reason: "no descr") }
        let descr = String(descrField[descrField.index(after: descrField.startIndex)..<descrEnd])
        let table: [String: TensorDType] = ["<f4": .f32, "<f2": .f16, "|u1": .u8, "<u2": .u16, "<u4": .u32, "<i4": .i32, "<i8": .i64]
        guard let dtype = table[descr] else { throw FormatError(reason: "unsupported dtype \(descr)") }
        if let fortran = field("fortran_order"), fortran.hasPrefix("True") { throw FormatError(reason: "Fortran order") }
        guard let shapeField = field("shape"), shapeField.first == "(", let close = shapeField.firstIndex(of: ")") else {
            throw FormatError(reason: "no shape")
        }
        var shape: [Int] = []
        for part in shapeField[shapeField.index(after: shapeField.startIndex)..<close].split(separator: ",") {
            let t = part.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            guard let n = Int(t), n >= 0 else { throw FormatError(reason: "bad shape") }
            shape.append(n)
        }
        var count = 1
        for n in shape {
            let (p, o) = count.multipliedReportingOverflow(by: n)
            guard !o else { throw FormatError(reason: "shape overflows") }
            count = p
        }
        let dataStart = headerStart + headerLength
        guard bytes.count - dataStart == count * dtype.byteSize else {
            throw FormatError(reason: "data is \(bytes.count - dataStart) bytes, shape \(shape) needs \(count * dtype.byteSize)")
        }
        return (dtype, shape, Array(bytes[dataStart...]))
    }

    /// An `.npz` archive (stored, not deflated) of the given tensors, one `NAME.npy` member each.
    public static func npz(_ tensors: [NamedTensor]) -> [UInt8] {
        var out: [UInt8] = []
        var central: [UInt8] = []
        func u16(_ v: Int, _ a: inout [UInt8]) { a += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
        func u32(_ v: UInt32, _ a: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { a += $0 } }
        for t in tensors {
            let member = npy(dtype: t.dtype, shape: t.shape, bytes: t.bytes)
            let name = Array((t.name + ".npy").utf8)
            let crc = CRC32.checksum(member)
            let offset = UInt32(out.count)
            // Local file header.
            u32(0x0403_4B50, &out); u16(20, &out); u16(0, &out); u16(0, &out); u16(0, &out); u16(0x21, &out)
            u32(crc, &out); u32(UInt32(member.count), &out); u32(UInt32(member.count), &out)
            u16(name.count, &out); u16(0, &out); out += name; out += member
            // Central directory entry.
            u32(0x0201_4B50, &central); u16(20, &central); u16(20, &central); u16(0, &central); u16(0, &central)
            u16(0, &central); u16(0x21, &central); u32(crc, &central)
            u32(UInt32(member.count), &central); u32(UInt32(member.count), &central)
            u16(name.count, &central); u16(0, &central); u16(0, &central); u16(0, &central); u16(0, &central)
            u32(0, &central); u32(offset, &central); central += name
        }
        let centralOffset = UInt32(out.count)
        out += central
        u32(0x0605_4B50, &out); u16(0, &out); u16(0, &out); u16(tensors.count, &out); u16(tensors.count, &out)
        u32(UInt32(central.count), &out); u32(centralOffset, &out); u16(0, &out)
        return out
    }
}

/// CRC-32 (IEEE 802.3, reflected, as ZIP uses).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
