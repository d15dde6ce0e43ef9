import TensorFiles
import Testing
import ImageDecoding

/// Compares decodes and crops with Pillow's, within `tolerance` (1 level of 255, from cases.json)
/// on every sample. In practice they are identical; the tolerance allows for libjpeg-turbo
/// versions that round an IDCT differently.
@Suite("Golden fixtures from Pillow")
struct GoldenFixtureTests {
    @Test("decode matches Pillow", arguments: Fixtures.decodeCases)
    func decodeMatches(_ c: FixtureCase) throws {
        let image = try ImageDecoder.decode(bytes: Fixtures.bytes(c.input), path: c.input, options: c.decodeOptions)
        guard let expectedName = c.decode else { return }  // only has to decode
        let expected = try Fixtures.image(expectedName)
        let diff = Fixtures.maxDifference(image, expected)
        #expect(diff != nil, "size \(image.width)x\(image.height) vs \(expected.width)x\(expected.height)")
        #expect((diff ?? 99) <= Fixtures.tolerance, "max difference \(diff ?? -1) (\(c.note))")
    }

    @Test("crops and views match Pillow, with and without region decode", arguments: Fixtures.decodeCases)
    func cropsMatch(_ c: FixtureCase) throws {
        let bytes = try Fixtures.bytes(c.input)
        for output in c.outputs ?? [] {
            let crop = try #require(CropMode(rawValue: output.crop))
            let view = try #require(View(number: output.view))
            let expected = try Fixtures.image(output.expected)
            var pre = Preprocessor(resolution: output.resolution, crop: crop, decodeOptions: c.decodeOptions)
            for region in [true, false] {
                pre.usesRegionDecode = region
                let got = try pre.preprocess(bytes: bytes, path: c.input, view: view)
                let diff = Fixtures.maxDifference(got, expected)
                #expect(diff != nil && diff! <= Fixtures.tolerance,
                        "\(output.expected) region=\(region): max difference \(diff ?? -1)")
            }
        }
    }
}

@Suite("Bad input")
struct BadInputTests {
    @Test("each bad file fails with its kind", arguments: Fixtures.errorCases)
    func failsWithKind(_ c: FixtureCase) throws {
        let kind = try #require(ImageDecodingError.Kind(rawValue: c.error ?? ""))
        let bytes = try Fixtures.bytes(c.input)
        let error = #expect(throws: ImageDecodingError.self) {
            _ = try ImageDecoder.decode(bytes: bytes, path: c.input, options: c.decodeOptions)
        }
        #expect(error?.kind == kind, "\(c.input): \(error.map(String.init(describing:)) ?? "no error")")
        #expect(error?.path == c.input)
        // The cropping path (region decode) must report the same.
        let pre = Preprocessor(resolution: 32, crop: .adm, decodeOptions: c.decodeOptions)
        let again = #expect(throws: ImageDecodingError.self) {
            _ = try pre.preprocess(bytes: bytes, path: c.input)
        }
        #expect(again?.kind == kind)
    }

    @Test("every error kind a file can cause is covered by a fixture")
    func kindsCovered() {
        let covered = Set(Fixtures.errorCases.compactMap(\.error))
        for kind in ImageDecodingError.Kind.allCases where kind != .io {
            #expect(covered.contains(kind.rawValue), "no fixture for \(kind)")
        }
    }

    @Test("a missing file is an io error naming the path")
    func missingFile() {
        let error = #expect(throws: ImageDecodingError.self) {
            _ = try ImageDecoder.decodeFile(atPath: "/nonexistent/x.jpg")
        }
        #expect(error?.kind == .io)
        #expect(error?.path == "/nonexistent/x.jpg")
    }

    @Test("every prefix and many bit flips of a JPEG and a PNG fail cleanly or decode")
    func neverCrashes() throws {
        for name in ["photo_ihc_rgb_space.jpg", "photo_camera_gray8.png", "exif_orientation_6.jpg"] {
            let good = try Fixtures.bytes(name)
            var rng = SplitMix64(seed: UInt64(good.count))
            for cut in stride(from: 0, to: good.count, by: max(1, good.count / 97)) {
                _ = try? ImageDecoder.decode(bytes: Array(good[..<cut]))
            }
            for _ in 0..<150 {
                var bad = good
                for _ in 0..<4 {
                    bad[Int.random(in: 0..<bad.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
                }
                _ = try? Preprocessor(resolution: 16).preprocess(bytes: bad)
            }
        }
    }
}

/// A small seeded generator, so a failing mutation can be reproduced.
@Suite("Region decode")
struct RegionDecodeTests {
    static let jpegs = Fixtures.decodeCases
        .filter { $0.decodeOptions == DecodeOptions() && $0.input.hasSuffix(".jpg") && !$0.input.hasPrefix("png_") }
        .map(\.input)
        .reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }

    /// Decoding only the rows and columns a crop needs must change no pixel, for every sampling
    /// layout and view, including sizes that leave large margins.
    @Test("region decode is identical to whole-image decode", arguments: jpegs)
    func identical(_ name: String) throws {
        let bytes = try Fixtures.bytes(name)
        for crop in CropMode.allCases {
            for resolution in [8, 24, 50, 77] {
                for view in [View.identity, .horizontalFlip, .tenCrop(1), .tenCrop(7)] {
                    var pre = Preprocessor(resolution: resolution, crop: crop)
                    pre.usesRegionDecode = true
                    let region = try pre.preprocess(bytes: bytes, view: view)
                    pre.usesRegionDecode = false
                    let whole = try pre.preprocess(bytes: bytes, view: view)
                    #expect(region == whole, "\(crop) \(resolution) \(view)")
                }
            }
        }
    }

    /// The views of one decode (what the tokenizer uses: a view and its mirror, or the ten
    /// crops) are, pixel for pixel and box for box, each view preprocessed on its own.
    @Test("views from one decode equal each view decoded alone", arguments: jpegs + ["photo_camera_gray8.png"])
    func viewsFromOneDecode(_ name: String) throws {
        let bytes = try Fixtures.bytes(name)
        let sets: [[View]] = [[.identity, .horizontalFlip], [.horizontalFlip], [.horizontalFlip, .identity],
                              (0..<10).map { View.tenCrop($0) }]
        for crop in CropMode.allCases {
            for resolution in [8, 24, 50, 77] {
                for views in sets {
                    for region in [true, false] {
                        var pre = Preprocessor(resolution: resolution, crop: crop)
                        pre.usesRegionDecode = region
                        let together = try pre.preprocessViews(bytes: bytes, views: views)
                        let alone = try views.map { try pre.preprocessDetailed(bytes: bytes, view: $0) }
                        #expect(together == alone, "\(name) \(crop) \(resolution) \(views) region=\(region)")
                    }
                }
            }
        }
    }
}
