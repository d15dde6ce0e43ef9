import Testing
import ImageDecoding

@Suite("Decode policy")
struct PolicyTests {
    @Test("the format comes from the bytes: a PNG named .jpg decodes as the PNG")
    func pngNamedJPG() throws {
        let viaName = try ImageDecoder.decode(bytes: Fixtures.bytes("png_named.jpg"), path: "png_named.jpg")
        let real = try ImageDecoder.decode(bytes: Fixtures.bytes("photo_coffee_rgb8.png"))
        #expect(viaName == real)
    }

    @Test("EXIF orientation is ignored by default and applied on request", arguments: 1...8)
    func exif(_ orientation: Int) throws {
        let bytes = try Fixtures.bytes("exif_orientation_\(orientation).jpg")
        let plain = try ImageDecoder.decode(bytes: bytes)
        #expect(plain.width == 24 && plain.height == 40)
        var options = DecodeOptions()
        options.appliesExifOrientation = true
        let turned = try ImageDecoder.decode(bytes: bytes, options: options)
        let swaps = orientation >= 5
        #expect(turned.width == (swaps ? 40 : 24) && turned.height == (swaps ? 24 : 40))
        if orientation == 1 { #expect(turned == plain) } else { #expect(turned != plain) }
        // Orientation 6 turns clockwise: the old bottom-left corner becomes the top-left one.
        if orientation == 6 {
            #expect(turned[0, 0] == plain[0, plain.height - 1])
        }
    }

    @Test("alpha is dropped by default and composited over the background on request")
    func alpha() throws {
        let bytes = try Fixtures.bytes("photo_ihc_rgba.png")
        let dropped = try ImageDecoder.decode(bytes: bytes)
        var options = DecodeOptions()
        options.alphaBackground = .white
        let white = try ImageDecoder.decode(bytes: bytes, options: options)
        options.alphaBackground = .black
        let black = try ImageDecoder.decode(bytes: bytes, options: options)
        // Column 0 has alpha 0: pure background. The last column has alpha 255: the colour itself.
        #expect(white[0, 10] == (255, 255, 255))
        #expect(black[0, 10] == (0, 0, 0))
        #expect(white[dropped.width - 1, 10] == dropped[dropped.width - 1, 10])
        #expect(dropped != white)
    }

    @Test("CMYK is inverted only when the Adobe marker says so")
    func cmykInversionRule() throws {
        let adobe = try ImageDecoder.decode(bytes: Fixtures.bytes("photo_chelsea_cmyk_adobe.jpg"))
        let plain = try ImageDecoder.decode(bytes: Fixtures.bytes("photo_chelsea_cmyk_plain.jpg"))
        // Same stored samples, read as complementary inks: a different picture. Each file's
        // exact expected output (Pillow's arithmetic, with or without the inversion) is in the
        // golden cases; here, the plain one.
        #expect(adobe != plain)
        let reference = try Fixtures.image("expected/photo_chelsea_cmyk_plain.decode.png")
        #expect(Fixtures.maxDifference(plain, reference)! <= Fixtures.tolerance)
    }

    @Test("a truncated JPEG is an error unless accepted; accepted, it has full size")
    func truncatedOption() throws {
        let bytes = try Fixtures.bytes("truncated_baseline.jpg")
        #expect(throws: ImageDecodingError.self) { _ = try ImageDecoder.decode(bytes: bytes) }
        var options = DecodeOptions()
        options.acceptsTruncatedJPEG = true
        let image = try ImageDecoder.decode(bytes: bytes, options: options)
        let full = try ImageDecoder.decode(bytes: Fixtures.bytes("photo_chelsea_420.jpg"))
        #expect(image.width == full.width && image.height == full.height)
    }
}

@Suite("Geometry of views")
struct GeometryTests {
    /// A 300x200 image whose pixel (x, y) encodes x and y, so crops can be located exactly.
    static let coordinates: RGBImage = {
        var px = [UInt8]()
        for y in 0..<200 { for x in 0..<300 { px += [UInt8(x % 256), UInt8(y), UInt8(x / 256)] } }
        return RGBImage(width: 300, height: 200, pixels: px)
    }()

    @Test("hflip mirrors the identity view")
    func hflip() {
        let pre = Preprocessor(resolution: 40, crop: .resizeCenter)
        let id = pre.preprocess(Self.coordinates, view: .identity)
        let flipped = pre.preprocess(Self.coordinates, view: .horizontalFlip)
        #expect(flipped == id.flippedHorizontally())
        #expect(flipped != id)
    }

    @Test("ten-crop: corners, centre, and crops of the mirrored image")
    func tenCrop() {
        // 300x200 at 100: ADM crop to 110 (no halving: 200 < 220), bicubic to 165x110, centre 110.
        let pre = Preprocessor(resolution: 100, crop: .adm)
        var big = Preprocessor(resolution: 110, crop: .adm)
        big.tenCropRange = 1.1
        let whole = big.preprocess(Self.coordinates, view: .identity)
        #expect(whole.width == 110)
        let d = 10
        let expected: [(Int, Int, Bool)] = [(0, 0, false), (d, 0, false), (0, d, false), (d, d, false), (5, 5, false),
                                            (d, 0, true), (0, 0, true), (d, d, true), (0, d, true), (5, 5, true)]
        for (i, (x, y, mirrored)) in expected.enumerated() {
            let crop = whole.cropped(x: x, y: y, width: 100, height: 100)
            let got = pre.preprocess(Self.coordinates, view: .tenCrop(i))
            #expect(got == (mirrored ? crop.flippedHorizontally() : crop), "ten-crop \(i)")
        }
    }

    @Test("ten-crop centre uses round-half-even offsets, mirrored for the flipped five")
    func tenCropOddMargin() {
        // 256 -> crop range 281: margin 25, centre offset round(12.5) = 12; mirrored: 25 - 12 = 13.
        let pre = Preprocessor(resolution: 256, crop: .adm)
        let plan = pre.makePlanForTesting(width: 400, height: 300, view: .tenCrop(4))
        #expect(plan.x.count == 256 && plan.flips == false)
        let mirrored = pre.makePlanForTesting(width: 400, height: 300, view: .tenCrop(9))
        #expect(plan.x.lowerBound - mirrored.x.lowerBound == -1 && mirrored.flips)
    }

    @Test("view numbers round-trip")
    func viewNumbers() {
        for n in 0...11 { #expect(View(number: n)?.number == n) }
        #expect(View(number: 12) == nil)
    }

    @Test("float CHW is x/127.5 - 1, channel planes first")
    func floatCHW() {
        let img = RGBImage(width: 2, height: 1, pixels: [0, 255, 51, 255, 0, 102])
        let f = img.floatCHW()
        #expect(f == [-1, 1, 1, -1, Float(51) / 127.5 - 1, Float(102) / 127.5 - 1])
    }
}

@Suite("DCT-scaling fast path")
struct FastPathTests {
    /// The fast path replaces box halvings by libjpeg's scaled IDCT: not exact, but close. The
    /// benchmark reports its distance on full-size photos. These 32-pixel crops of small, textured
    /// photos are its worst case (measured means up to about 9 levels); the bound catches a broken
    /// path (wrong colours or geometry).
    @Test("fast path stays close to the exact path and is off by default",
          arguments: ["photo_chelsea_420.jpg", "photo_coffee_422_progressive.jpg", "photo_rocket_440.jpg"])
    func close(_ name: String) throws {
        let bytes = try Fixtures.bytes(name)
        var pre = Preprocessor(resolution: 32, crop: .adm)
        #expect(pre.usesDCTScaling == false)
        let exact = try pre.preprocess(bytes: bytes)
        pre.usesDCTScaling = true
        let fast = try pre.preprocess(bytes: bytes)
        #expect(fast.width == 32 && fast.height == 32)
        var total = 0
        for i in 0..<exact.pixels.count { total += abs(Int(exact.pixels[i]) - Int(fast.pixels[i])) }
        let mean = Double(total) / Double(exact.pixels.count)
        #expect(mean < 10, "mean difference \(mean)")
        #expect(fast != exact)  // it really took the other path
    }
}

@Suite("Provenance")
struct ProvenanceTests {
    @Test("source size and crop box of the ADM centre crop")
    func cropBox() throws {
        // chelsea: 225x150 at 64 -> halve to 112x75 -> bicubic to 96x64 -> keep x 16..<80.
        let pre = Preprocessor(resolution: 64, crop: .adm)
        let r = try pre.preprocessDetailed(bytes: Fixtures.bytes("photo_chelsea_420.jpg"), view: .horizontalFlip)
        #expect(r.sourceWidth == 225 && r.sourceHeight == 150)
        #expect(r.image.width == 64 && r.isFlipped)
        #expect(abs(r.cropX - 16 * 225.0 / 96) < 1e-9 && r.cropY == 0)
        #expect(abs(r.cropWidth - 64 * 225.0 / 96) < 1e-9 && abs(r.cropHeight - 150) < 1e-9)
        #expect(r.image == (try pre.preprocess(bytes: Fixtures.bytes("photo_chelsea_420.jpg"), view: .horizontalFlip)))
    }
}
