import ArgumentParser
import Foundation
import ImageDecoding
import ShardFormat
import ShardReader
import TensorFiles

/// Prints a one-line error to stderr and exits with `code`: how every command reports bad input.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    FileHandle.standardError.write(Data(("mtok: " + message + "\n").utf8))
    return ExitCode(code)
}

/// Opens a cache for reading or exits with a one-line reason.
func openCache(_ path: String) throws -> TokenCache {
    do {
        return try TokenCache(path: path)
    } catch {
        throw fail("\(error)")
    }
}

/// An id as it is, or, when it holds a backslash or a character that moves the cursor or
/// breaks a line (C0 and C1 controls, DEL, U+2028, U+2029), as the inside of a JSON string
/// literal: ids are any UTF-8 text, and one sample or field must stay on one line.
func printableId(_ id: String) -> String {
    func escaped(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || (0x7F...0x9F).contains(u.value) || u.value == 0x2028 || u.value == 0x2029 || u == "\\"
    }
    guard id.unicodeScalars.contains(where: escaped) else { return id }
    var out = ""
    for u in id.unicodeScalars {
        switch u {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where escaped(u): out += String(format: "\\u%04x", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out
}

/// Writes a command's output file, or exits with a one-line reason ("No such file or directory"),
/// never Foundation's error dump.
func writeOutput(_ bytes: some Sequence<UInt8>, to path: String) throws {
    do {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    } catch {
        throw fail("cannot write \(path): \(describeFileError(error))")
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try e.encode(value), as: UTF8.self))
}

func formatBytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
        v /= 1024
        u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[u])
}

/// One line saying which arithmetic made a cache's records, plainly when more than one did
/// (such records are close but not bit-identical to a run on one kernel set); nil when the
/// cache does not record it.
func arithmeticLine(_ uses: [(madeBy: Manifest.Arithmetic?, records: Int)]) -> String? {
    guard !uses.isEmpty else { return nil }
    func name(_ a: Manifest.Arithmetic?) -> String { a.map { "\($0)" } ?? "unrecorded" }
    if uses.count == 1 { return "all records by \(name(uses[0].madeBy))" }
    let list = uses.map { "\($0.records) by \(name($0.madeBy))" }.joined(separator: "; ")
    return "MIXED: records made by \(uses.count) different arithmetics (\(list)); records of different kernels differ in their last bits"
}

/// How images are decoded, for `preprocess` and `tokenize` alike (`DecodeOptions`; the defaults
/// are Pillow's `convert("RGB")`, what tokenizers were trained on).
struct DecodeFlags: ParsableArguments {
    @Flag(help: "Rotate JPEGs as their EXIF orientation says (ignored by default, as in training).")
    var applyExif = false

    @Option(help: "Composite alpha over this colour, as R,G,B (alpha is dropped by default).")
    var background: String?

    @Flag(help: "Accept truncated JPEGs (libjpeg fills the missing rows with gray).")
    var acceptTruncated = false

    @Option(help: "Refuse images with more pixels than this.")
    var maxPixels: Int = DecodeOptions().maxPixels

    func validate() throws {
        if let background, Self.colour(background) == nil {
            throw ValidationError("--background must be R,G,B with values 0...255")
        }
        guard maxPixels > 0 else { throw ValidationError("--max-pixels must be positive") }
    }

    var options: DecodeOptions {
        var o = DecodeOptions()
        o.appliesExifOrientation = applyExif
        o.alphaBackground = background.flatMap(Self.colour)
        o.acceptsTruncatedJPEG = acceptTruncated
        o.maxPixels = maxPixels
        return o
    }

    static func colour(_ text: String) -> RGBColor? {
        let parts = text.split(separator: ",").map { UInt8($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 3, let r = parts[0], let g = parts[1], let b = parts[2] else { return nil }
        return RGBColor(red: r, green: g, blue: b)
    }
}
