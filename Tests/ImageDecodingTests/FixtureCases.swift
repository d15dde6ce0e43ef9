import Foundation
import Testing
import ImageDecoding

/// The golden cases written by tools/image_fixtures.py (Pillow's outputs), read from the
/// committed fixtures; no Pillow at test time.
struct FixtureCase: Decodable, Sendable, CustomTestStringConvertible {
    struct Output: Decodable, Sendable {
        var crop: String
        var resolution: Int
        var view: Int
        var expected: String
    }

    struct Options: Decodable, Sendable {
        var applyExif: Bool?
        var background: String?
        var acceptTruncated: Bool?
        var maxPixels: Int?
    }

    var input: String
    var note: String
    var options: Options
    var decode: String?
    var outputs: [Output]?
    var error: String?

    var testDescription: String {
        let opts = [options.applyExif == true ? "exif" : nil, options.background,
                    options.acceptTruncated == true ? "accept-truncated" : nil,
                    options.maxPixels.map { "max \($0)" }].compactMap { $0 }
        return input + (opts.isEmpty ? "" : " [\(opts.joined(separator: ","))]")
    }

    var decodeOptions: DecodeOptions {
        var o = DecodeOptions()
        o.appliesExifOrientation = options.applyExif ?? false
        if options.background == "white" { o.alphaBackground = .white }
        o.acceptsTruncatedJPEG = options.acceptTruncated ?? false
        if let m = options.maxPixels { o.maxPixels = m }
        return o
    }
}

struct FixtureFile: Decodable {
    var tolerance: Int
    var cases: [FixtureCase]
}

enum Fixtures {
    static let directory: URL = {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("Fixtures folder missing from the test bundle")
        }
        return url
    }()

    static let file: FixtureFile = {
        do {
            let data = try Data(contentsOf: directory.appendingPathComponent("cases.json"))
            return try JSONDecoder().decode(FixtureFile.self, from: data)
        } catch {
            fatalError("cannot read cases.json: \(error)")
        }
    }()

    static var tolerance: Int { file.tolerance }
    static var decodeCases: [FixtureCase] { file.cases.filter { $0.error == nil } }
    static var errorCases: [FixtureCase] { file.cases.filter { $0.error != nil } }

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func bytes(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: directory.appendingPathComponent(name)))
    }

    /// Expected outputs are 8-bit RGB PNGs: decoded with libpng, no conversion involved.
    static func image(_ name: String) throws -> RGBImage {
        try ImageDecoder.decode(bytes: bytes(name), path: name)
    }

    /// The largest per-sample difference, or nil when the sizes differ.
    static func maxDifference(_ a: RGBImage, _ b: RGBImage) -> Int? {
        guard a.width == b.width, a.height == b.height else { return nil }
        var worst = 0
        for i in 0..<a.pixels.count {
            worst = max(worst, abs(Int(a.pixels[i]) - Int(b.pixels[i])))
        }
        return worst
    }
}
