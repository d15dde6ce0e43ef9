import Foundation

/// A parsed JSON value, from a small strict parser for untrusted headers.
///
/// Safetensors headers are parsed once per record on every read, so Foundation's
/// `JSONSerialization` (tens of microseconds per call) would dominate a 10 KB record's read.
/// This parser works on raw bytes, bounds its nesting depth, and rejects anything that is not
/// RFC 8259 JSON.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case let (.bool(a), .bool(b)): a == b
        case let (.number(a), .number(b)): a == b
        case let (.string(a), .string(b)): a == b
        case let (.array(a), .array(b)): a == b
        // Objects are equal as maps: member order carries no meaning in JSON.
        case let (.object(a), .object(b)):
            a.count == b.count && a.allSatisfy { key, value in b.first { $0.0 == key }?.1 == value }
        default: false
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case let .object(members) = self { return members.first { $0.0 == key }?.1 }
        return nil
    }

    public var stringValue: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    /// The value as an exact non-negative integer, if it is one.
    public var intValue: Int? {
        if case let .number(d) = self, d >= 0, d < 9.0e15, d.rounded(.towardZero) == d { return Int(d) }
        return nil
    }
}

public struct JSONParseError: Error, CustomStringConvertible, Sendable {
    public let offset: Int
    public let reason: String
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

extension JSONValue {
    public static let maxDepth = 32

    /// Parses one JSON document that must fill `bytes` (trailing whitespace allowed).
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        var parser = Parser(bytes: bytes)
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.pos == bytes.count else { throw parser.fail("trailing characters") }
        return value
    }

    public static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        let result: Result<JSONValue, JSONParseError> = bytes.withUnsafeBytes { raw in
            Result { () throws(JSONParseError) in try parse(raw) }
        }
        return try result.get()
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        var pos = 0

        func fail(_ reason: String) -> JSONParseError { JSONParseError(offset: pos, reason: reason) }

        mutating func skipWhitespace() {
            while pos < bytes.count {
                switch bytes[pos] {
                case 0x20, 0x09, 0x0A, 0x0D: pos += 1
                default: return
                }
            }
        }

        mutating func expect(_ literal: StaticString) throws(JSONParseError) {
            let n = literal.utf8CodeUnitCount
            guard pos + n <= bytes.count else { throw fail("unexpected end") }
            for i in 0..<n where bytes[pos + i] != literal.utf8Start[i] { throw fail("bad literal") }
            pos += n
        }

        mutating func value(depth: Int) throws(JSONParseError) -> JSONValue {
            guard depth < JSONValue.maxDepth else { throw fail("nesting deeper than \(JSONValue.maxDepth)") }
            skipWhitespace()
            guard pos < bytes.count else { throw fail("unexpected end") }
            switch bytes[pos] {
            case UInt8(ascii: "{"):
                pos += 1
                var members: [(String, JSONValue)] = []
                // Keys seen, once an object is past a few members (a linear search before that).
                var keys = Set<String>()
                skipWhitespace()
                if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
                while true {
                    skipWhitespace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                    let key = try string()
                    // Parsers differ on a repeated key (first or last wins), so a file that has
                    // one would read differently in another language: refuse it.
                    if members.count < 8 {
                        if members.contains(where: { $0.0 == key }) { throw fail("key \(JSONValue.quoted(key)) appears twice") }
                    } else {
                        if keys.isEmpty { keys = Set(members.map(\.0)) }
                        guard keys.insert(key).inserted else { throw fail("key \(JSONValue.quoted(key)) appears twice") }
                    }
                    skipWhitespace()
                    try expect(":")
                    members.append((key, try value(depth: depth + 1)))
                    skipWhitespace()
                    guard pos < bytes.count else { throw fail("unexpected end") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
                    throw fail("expected , or }")
                }
            case UInt8(ascii: "["):
                pos += 1
                var items: [JSONValue] = []
                skipWhitespace()
                if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                while true {
                    items.append(try value(depth: depth + 1))
                    skipWhitespace()
                    guard pos < bytes.count else { throw fail("unexpected end") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                    throw fail("expected , or ]")
                }
            case UInt8(ascii: "\""):
                return .string(try string())
            case UInt8(ascii: "t"): try expect("true"); return .bool(true)
            case UInt8(ascii: "f"): try expect("false"); return .bool(false)
            case UInt8(ascii: "n"): try expect("null"); return .null
            default:
                return .number(try number())
            }
        }

        mutating func number() throws(JSONParseError) -> Double {
            let start = pos
            var isInteger = true
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            let digitsStart = pos
            while pos < bytes.count {
                let c = bytes[pos]
                if c >= 0x30 && c <= 0x39 { pos += 1; continue }
                if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
                    || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") { isInteger = false; pos += 1; continue }
                break
            }
            guard pos > digitsStart else { throw fail("expected a value") }
            if isInteger, pos - digitsStart <= 15 {
                var v = 0
                for i in digitsStart..<pos { v = v * 10 + Int(bytes[i] - 0x30) }
                return bytes[start] == UInt8(ascii: "-") ? -Double(v) : Double(v)
            }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
            guard let d = Double(text) else { throw fail("bad number \(text)") }
            return d
        }

        mutating func string() throws(JSONParseError) -> String {
            pos += 1  // opening quote
            let start = pos
            // Fast path: no escapes.
            while pos < bytes.count {
                let c = bytes[pos]
                if c == UInt8(ascii: "\"") {
                    let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
                    pos += 1
                    return s
                }
                if c == UInt8(ascii: "\\") { break }
                if c < 0x20 { throw fail("control character in string") }
                pos += 1
            }
            var out = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<pos]))
            while pos < bytes.count {
                let c = bytes[pos]
                if c == UInt8(ascii: "\"") { pos += 1; return String(decoding: out, as: UTF8.self) }
                if c < 0x20 { throw fail("control character in string") }
                if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
                pos += 1
                guard pos < bytes.count else { break }
                let e = bytes[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        try expect("\\u")
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default: throw fail("bad escape")
                }
            }
            throw fail("unterminated string")
        }

        mutating func hex4() throws(JSONParseError) -> UInt32 {
            guard pos + 4 <= bytes.count else { throw fail("short \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[pos]
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw fail("bad hex digit")
                }
                v = v << 4 | d
                pos += 1
            }
            return v
        }
    }
}

extension JSONValue {
    /// `s` as a JSON string literal (with quotes): how messages show untrusted text such as ids,
    /// so a control character in one cannot garble a terminal or split a log line.
    public static func quoted(_ s: String) -> String {
        var out: [UInt8] = []
        appendQuoted(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `s` as a JSON string literal (with quotes), escaping what RFC 8259 requires.
    public static func appendQuoted(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

extension JSONValue {
    /// The first place, in `self`'s member order, where `other` differs: its path (`a.b[2]`) and
    /// the two values there (nil for a member one side lacks); nil when the two are equal.
    public func firstDifference(from other: JSONValue, at path: String = "") -> (path: String, mine: JSONValue?, theirs: JSONValue?)? {
        switch (self, other) {
        case let (.object(a), .object(b)):
            for (key, value) in a {
                let here = path.isEmpty ? key : path + "." + key
                guard let theirs = other[key] else { return (here, value, nil) }
                if let d = value.firstDifference(from: theirs, at: here) { return d }
            }
            if let (key, value) = b.first(where: { key, _ in self[key] == nil }) {
                return (path.isEmpty ? key : path + "." + key, nil, value)
            }
            return nil
        case let (.array(a), .array(b)) where a.count == b.count:
            for (i, (x, y)) in zip(a, b).enumerated() {
                if let d = x.firstDifference(from: y, at: path + "[\(i)]") { return d }
            }
            return nil
        default:
            return self == other ? nil : (path, self, other)
        }
    }

    /// The first difference as "PATH is X there, Y `here`" (values shortened to 80 characters),
    /// or nil when the two are equal: how refusals of other settings say what differs.
    public func describeFirstDifference(from other: JSONValue, prefix: String = "", here: String) -> String? {
        guard let d = firstDifference(from: other) else { return nil }
        func show(_ v: JSONValue?) -> String {
            guard let v else { return "absent" }
            let text = v.jsonText
            return text.count <= 80 ? text : String(text.prefix(77)) + "..."
        }
        return "\(prefix)\(d.path) is \(show(d.mine)) there, \(show(d.theirs)) \(here)"
    }

    /// Compact JSON text, keys sorted; for messages.
    public var jsonText: String { compactText() }

    /// Compact JSON text with keys sorted, the text `JSONEncoder` makes of this value
    /// (`.sortedKeys`, `.withoutEscapingSlashes`), written directly: the encoder spends
    /// microseconds a value, seconds on a large settings object. With `limit`, the text stops
    /// once it passes that many bytes and ends with "…" (for display).
    public func compactText(limit: Int = .max) -> String {
        var out: [UInt8] = []
        func write(_ v: JSONValue) {
            guard out.count <= limit else { return }
            switch v {
            case .null: out += "null".utf8
            case let .bool(b): out += (b ? "true" : "false").utf8
            case let .number(d):
                // As `encode(to:)`: whole numbers as integers.
                if d.rounded(.towardZero) == d, abs(d) < 9.0e15 { out += String(Int(d)).utf8 } else { out += "\(d)".utf8 }
            case let .string(s): Self.appendQuoted(s, to: &out)
            case let .array(items):
                out.append(UInt8(ascii: "["))
                for (i, item) in items.enumerated() {
                    if i > 0 { out.append(UInt8(ascii: ",")) }
                    write(item)
                }
                out.append(UInt8(ascii: "]"))
            case let .object(members):
                out.append(UInt8(ascii: "{"))
                for (i, (key, value)) in members.sorted(by: { $0.0 < $1.0 }).enumerated() {
                    if i > 0 { out.append(UInt8(ascii: ",")) }
                    Self.appendQuoted(key, to: &out)
                    out.append(UInt8(ascii: ":"))
                    write(value)
                }
                out.append(UInt8(ascii: "}"))
            }
        }
        write(self)
        return out.count > limit ? String(decoding: out.prefix(limit), as: UTF8.self) + "…" : String(decoding: out, as: UTF8.self)
    }
}

extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        if var array = try? decoder.unkeyedContainer() {
            var items: [JSONValue] = []
            while !array.isAtEnd { items.append(try array.decode(JSONValue.self)) }
            self = .array(items)
            return
        }
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            self = .object(try object.allKeys.sorted { $0.stringValue < $1.stringValue }.map {
                ($0.stringValue, try object.decode(JSONValue.self, forKey: $0))
            })
            return
        }
        let single = try decoder.singleValueContainer()
        if single.decodeNil() { self = .null }
        else if let b = try? single.decode(Bool.self) { self = .bool(b) }
        else if let d = try? single.decode(Double.self) { self = .number(d) }
        else { self = .string(try single.decode(String.self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var c = encoder.singleValueContainer()
            try c.encodeNil()
        case let .bool(b):
            var c = encoder.singleValueContainer()
            try c.encode(b)
        case let .number(d):
            var c = encoder.singleValueContainer()
            if d.rounded(.towardZero) == d, abs(d) < 9.0e15 { try c.encode(Int(d)) } else { try c.encode(d) }
        case let .string(s):
            var c = encoder.singleValueContainer()
            try c.encode(s)
        case let .array(items):
            var c = encoder.unkeyedContainer()
            for item in items { try c.encode(item) }
        case let .object(members):
            var c = encoder.container(keyedBy: AnyKey.self)
            for (k, v) in members { try c.encode(v, forKey: AnyKey(stringValue: k)) }
        }
    }

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
