/// A direct scan of a safetensors JSON header in the compact form `Safetensors.serializeHeader`
/// writes: no whitespace except the trailing space padding, printable ASCII strings without
/// escapes, `__metadata__` (if any) an object of strings, each tensor exactly
/// `{"dtype":"…","shape":[…],"data_offsets":[b,e]}` with plain decimal integers.
///
/// It decides syntax only, and only for that form: anything else (whitespace, escapes, non-ASCII
/// text, other key orders, numbers with signs, fractions, exponents or leading zeros, a second
/// `__metadata__`, an unknown dtype) makes it return nil, and the JSON parser handles the header
/// and reports what is wrong. For a header it accepts, it yields what the JSON parser would, so
/// `Safetensors.parseHeader` applies the same checks to either.
struct CompactHeaderScan {
    struct Member {
        var name: String
        var dtype: TensorDType
        var shape: [Int]
        var begin: Int
        var end: Int
    }

    /// Sized for the writer's seven keys, so it is not rehashed as it fills.
    var metadata = [String: String](minimumCapacity: 8)
    var members: [Member] = []

    private static let quote = UInt8(ascii: "\"")
    /// Integers of at most 15 digits are exact as the JSON parser's doubles (below 9e15).
    private static let maxDigits = 15

    init?(_ p: UnsafeRawBufferPointer) {
        var pos = 0
        let end = p.count

        func take(_ byte: UInt8) -> Bool {
            guard pos < end, p[pos] == byte else { return false }
            pos += 1
            return true
        }
        func take(_ s: StaticString) -> Bool {
            let n = s.utf8CodeUnitCount
            guard end - pos >= n else { return false }
            for i in 0..<n where p[pos + i] != s.utf8Start[i] { return false }
            pos += n
            return true
        }
        /// A string of printable ASCII without escapes, at `pos` (its opening quote).
        func string() -> String? {
            guard take(Self.quote) else { return nil }
            let start = pos
            while pos < end {
                let b = p[pos]
                if b == Self.quote { break }
                guard b >= 0x20, b < 0x7F, b != UInt8(ascii: "\\") else { return nil }
                pos += 1
            }
            guard pos < end else { return nil }
            let s = String(decoding: UnsafeRawBufferPointer(rebasing: p[start..<pos]), as: UTF8.self)
            pos += 1
            return s
        }
        /// A non-negative decimal integer as JSON writes it: "0", or no leading zero.
        func integer() -> Int? {
            let start = pos
            var v = 0
            while pos < end, p[pos] >= UInt8(ascii: "0"), p[pos] <= UInt8(ascii: "9") {
                v = v * 10 + Int(p[pos] - UInt8(ascii: "0"))
                pos += 1
            }
            let digits = pos - start
            guard digits > 0, digits <= Self.maxDigits, digits == 1 || p[start] != UInt8(ascii: "0") else { return nil }
            return v
        }

        guard take(UInt8(ascii: "{")) else { return nil }
        var sawMetadata = false
        if !take(UInt8(ascii: "}")) {
            repeat {
                guard let name = string(), take(UInt8(ascii: ":")) else { return nil }
                if name == "__metadata__" {
                    guard !sawMetadata, take(UInt8(ascii: "{")) else { return nil }
                    sawMetadata = true
                    if !take(UInt8(ascii: "}")) {
                        repeat {
                            guard let k = string(), take(UInt8(ascii: ":")), let v = string() else { return nil }
                            // A key given twice is the JSON parser's to refuse.
                            guard metadata.updateValue(v, forKey: k) == nil else { return nil }
                        } while take(UInt8(ascii: ","))
                        guard take(UInt8(ascii: "}")) else { return nil }
                    }
                    continue
                }
                guard take(#"{"dtype":"#), let dtypeName = string(), let dtype = TensorDType(rawValue: dtypeName),
                      take(#","shape":["#) else { return nil }
                var shape: [Int] = []
                if !take(UInt8(ascii: "]")) {
                    repeat {
                        guard let d = integer() else { return nil }
                        shape.append(d)
                    } while take(UInt8(ascii: ","))
                    guard take(UInt8(ascii: "]")) else { return nil }
                }
                guard take(#","data_offsets":["#), let b = integer(), take(UInt8(ascii: ",")), let e = integer(),
                      take("]}") else { return nil }
                guard !members.contains(where: { $0.name == name }) else { return nil }
                members.append(Member(name: name, dtype: dtype, shape: shape, begin: b, end: e))
            } while take(UInt8(ascii: ","))
            guard take(UInt8(ascii: "}")) else { return nil }
        }
        while pos < end {
            guard p[pos] == 0x20 else { return nil }
            pos += 1
        }
    }
}
