import Testing
@testable import ImageDecoding

/// The resampling kernels (byte-average BOX halving, the transposed horizontal pass, the vertical
/// pass) against a plain scalar evaluation of the same fixed-point sums, on sizes that take every
/// path: even and odd sizes halved, bicubic up and down, whole images and sub-rectangles of tiles.
/// The Pillow fixtures check the arithmetic itself; this checks the fast paths keep it.
@Suite("Resampling kernels")
struct ResamplerKernelTests {
    /// Deterministic noise with flat runs and hard edges, which exercise clamping.
    static func image(_ w: Int, _ h: Int, seed: UInt64) -> RGBImage {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        for i in pixels.indices {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            pixels[i] = (i / 3) % 7 == 0 ? 255 : UInt8(truncatingIfNeeded: state >> 24)
        }
        return RGBImage(width: w, height: h, pixels: pixels)
    }

    static func clip(_ v: Int64) -> UInt8 {
        let s = v >> Int64(PillowResampler.precisionBits)
        return UInt8(max(0, min(255, s)))
    }

    /// Pillow's two passes, one output value at a time: horizontal (rounded to 8 bits), then vertical.
    static func reference(_ img: RGBImage, outWidth: Int, outHeight: Int, filter: PillowResampler.Filter) -> RGBImage {
        let half = Int64(1) << Int64(PillowResampler.precisionBits - 1)
        var cur = img
        if outWidth != img.width {
            let c = PillowResampler.Coefficients(inSize: img.width, outSize: outWidth, filter: filter)
            var out = [UInt8](repeating: 0, count: outWidth * cur.height * 3)
            for y in 0..<cur.height {
                for x in 0..<outWidth {
                    for ch in 0..<3 {
                        var acc = half
                        for i in 0..<Int(c.count[x]) {
                            let px = Int64(cur.pixels[(y * cur.width + Int(c.start[x]) + i) * 3 + ch])
                            acc += px * Int64(c.weights[x * c.taps + i])
                        }
                        out[(y * outWidth + x) * 3 + ch] = clip(acc)
                    }
                }
            }
            cur = RGBImage(width: outWidth, height: cur.height, pixels: out)
        }
        if outHeight != img.height {
            let c = PillowResampler.Coefficients(inSize: img.height, outSize: outHeight, filter: filter)
            var out = [UInt8](repeating: 0, count: cur.width * outHeight * 3)
            for y in 0..<outHeight {
                for b in 0..<(cur.width * 3) {
                    var acc = half
                    for i in 0..<Int(c.count[y]) {
                        acc += Int64(cur.pixels[(Int(c.start[y]) + i) * cur.width * 3 + b]) * Int64(c.weights[y * c.taps + i])
                    }
                    out[y * cur.width * 3 + b] = clip(acc)
                }
            }
            cur = RGBImage(width: cur.width, height: outHeight, pixels: out)
        }
        return cur
    }

    static let cases: [(Int, Int, Int, Int, PillowResampler.Filter)] = [
        (384, 256, 192, 128, .box),   // even halving both ways: byte averages
        (384, 255, 192, 127, .box),   // even width, odd height
        (383, 257, 191, 128, .box),   // odd both ways: general weights
        (12, 10, 6, 5, .box),         // narrower than one vector step
        (22, 4, 11, 2, .box),
        (192, 127, 97, 64, .bicubic),
        (97, 64, 130, 88, .bicubic),  // enlarging
        (65, 65, 64, 64, .bicubic),
        (300, 40, 300, 17, .bicubic), // vertical pass only
        (41, 300, 17, 300, .bicubic), // horizontal pass only
    ]

    @Test("full resizes match the scalar sums", arguments: cases.indices)
    func fullResize(_ i: Int) {
        let (w, h, ow, oh, filter) = Self.cases[i]
        let img = Self.image(w, h, seed: UInt64(i))
        let tile = PillowResampler.Tile(image: img, originX: 0, originY: 0, fullWidth: w, fullHeight: h)
        let got = PillowResampler.resize(tile, outWidth: ow, outHeight: oh, filter: filter, xs: 0..<ow, ys: 0..<oh)
        #expect(got.image == Self.reference(img, outWidth: ow, outHeight: oh, filter: filter))
    }

    @Test("a rectangle computed from a tile equals that rectangle of the full resize", arguments: cases.indices)
    func rectangleFromTile(_ i: Int) {
        let (w, h, ow, oh, filter) = Self.cases[i]
        let img = Self.image(w, h, seed: UInt64(100 + i))
        let full = Self.reference(img, outWidth: ow, outHeight: oh, filter: filter)
        let xs = (ow / 5)..<(ow - ow / 4), ys = (oh / 3)..<(oh - oh / 6)
        // The tile is just the inputs the rectangle reads, so kernels see non-zero origins.
        let sx = PillowResampler.inputSpan(for: xs, inSize: w, outSize: ow, filter: filter)
        let sy = PillowResampler.inputSpan(for: ys, inSize: h, outSize: oh, filter: filter)
        let tile = PillowResampler.Tile(image: img.cropped(x: sx.lowerBound, y: sy.lowerBound, width: sx.count, height: sy.count),
                                        originX: sx.lowerBound, originY: sy.lowerBound, fullWidth: w, fullHeight: h)
        let got = PillowResampler.resize(tile, outWidth: ow, outHeight: oh, filter: filter, xs: xs, ys: ys)
        #expect(got.originX == xs.lowerBound && got.originY == ys.lowerBound)
        #expect(got.image == full.cropped(x: xs.lowerBound, y: ys.lowerBound, width: xs.count, height: ys.count))
    }

    @Test("cached coefficients are the ones computed afresh, and shared")
    func coefficientCache() {
        for (inSize, outSize, filter) in [(384, 192, PillowResampler.Filter.box), (255, 127, .box), (127, 64, .bicubic),
                                          (64, 130, .bicubic)] {
            let cached = PillowResampler.coefficients(inSize: inSize, outSize: outSize, filter: filter)
            let fresh = PillowResampler.Coefficients(inSize: inSize, outSize: outSize, filter: filter)
            #expect(cached.taps == fresh.taps && cached.start == fresh.start && cached.count == fresh.count
                    && cached.weights == fresh.weights && cached.isEvenBoxHalving == fresh.isEvenBoxHalving)
            #expect(PillowResampler.coefficients(inSize: inSize, outSize: outSize, filter: filter) === cached)
        }
        // BOX and BICUBIC of the same sizes are different entries.
        #expect(PillowResampler.coefficients(inSize: 384, outSize: 192, filter: .bicubic).taps
                != PillowResampler.coefficients(inSize: 384, outSize: 192, filter: .box).taps)
        #expect(PillowResampler.Coefficients(inSize: 384, outSize: 192, filter: .box).isEvenBoxHalving)
        #expect(!PillowResampler.Coefficients(inSize: 383, outSize: 191, filter: .box).isEvenBoxHalving)
    }

    @Test("float CHW is the same expression per byte value")
    func floatCHWValues() {
        let img = RGBImage(width: 256, height: 1, pixels: (0..<768).map { UInt8(($0 / 3 + 85 * ($0 % 3)) % 256) })
        let f = img.floatCHW()
        for x in 0..<256 {
            for c in 0..<3 {
                let v = Float(img.pixels[x * 3 + c]) / 127.5 - 1
                #expect(f[c * 256 + x].bitPattern == v.bitPattern)
            }
        }
    }
}
