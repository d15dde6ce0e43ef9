internal import CImageShims
import Synchronization

/// Separable resampling with Pillow's arithmetic (`ImagingResample` on 8-bit images), so that
/// results match Pillow's `Image.resize` pixel for pixel.
///
/// The facts reproduced: weights come from the filter evaluated at
/// `(i + xmin − center + 0.5) · (1 / filterscale)` (a product, as in Pillow), where
/// `center = (x + 0.5) · scale` and the support grows with `filterscale = max(scale, 1)` when
/// shrinking; bounds are truncated from `center ± support + 0.5`; weights are normalised in double
/// precision, then turned into 22-bit fixed point rounding away from zero; sums start at half a
/// unit and are shifted down and clamped. Each pass is rounded to 8 bits before the next, so the
/// order of the passes shows in the pixels: Pillow 13 runs the vertical pass first when the
/// height shrinks by more than twice as many pixels as the width (``verticalFirst``), the
/// horizontal one first otherwise (Pillow before 12.2 always ran the horizontal pass first,
/// 12.2 and 12.3 only for images over 100 times taller than wide).
/// A pass is skipped when its dimension does not change.
///
/// Every output pixel depends only on its own window, so a caller may ask for just a rectangle of
/// the output; it comes out identical to the same rectangle of a full resize.
enum PillowResampler {
    enum Filter {
        case box
        case bicubic

        var support: Double {
            switch self {
            case .box: return 0.5
            case .bicubic: return 2.0
            }
        }

        @inline(__always)
        func weight(_ x: Double) -> Double {
            switch self {
            case .box:
                return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0
            case .bicubic:
                // Keys' cubic convolution with a = -0.5, evaluated in the same order as Pillow.
                let a = -0.5
                let t = x < 0 ? -x : x
                if t < 1.0 { return ((a + 2.0) * t - (a + 3.0)) * t * t + 1 }
                if t < 2.0 { return (((t - 5) * t + 8) * t - 4) * a }
                return 0.0
            }
        }
    }

    /// Pillow's PRECISION_BITS for 8-bit images (MTOK_RESAMPLE_PRECISION_BITS in the C kernels).
    static let precisionBits = 22

    /// Windows and fixed-point weights for every output of one axis resized from `inSize` to
    /// `outSize`. They depend only on those sizes and the filter, and a dataset has few distinct
    /// sizes, so they are computed once and shared (see ``coefficients(inSize:outSize:filter:)``).
    final class Coefficients: Sendable {
        let taps: Int
        let start: [Int32]   // first input index per output
        let count: [Int32]   // inputs used per output
        let weights: [Int32] // `taps` per output
        /// Every window is inputs 2x and 2x + 1 with weights of one half each: BOX halving of an
        /// even size, which the kernels compute as byte averages.
        let isEvenBoxHalving: Bool

        init(inSize: Int, outSize: Int, filter: Filter) {
            let scale = Double(inSize) / Double(outSize)
            let filterscale = max(scale, 1.0)
            let support = filter.support * filterscale
            let taps = Int(support.rounded(.up)) * 2 + 1
            var start = [Int32](repeating: 0, count: outSize)
            var count = [Int32](repeating: 0, count: outSize)
            var weights = [Int32](repeating: 0, count: outSize * taps)
            var k = [Double](repeating: 0, count: taps)
            let one = Double(1 << PillowResampler.precisionBits)
            for xx in 0..<outSize {
                let center = (Double(xx) + 0.5) * scale
                let ss = 1.0 / filterscale
                var xmin = Int(center - support + 0.5)  // truncation, as C's (int) cast
                if xmin < 0 { xmin = 0 }
                var xmax = Int(center + support + 0.5)
                if xmax > inSize { xmax = inSize }
                xmax -= xmin
                var ww = 0.0
                for x in 0..<xmax {
                    let w = filter.weight((Double(x + xmin) - center + 0.5) * ss)
                    k[x] = w
                    ww += w
                }
                for x in 0..<xmax {
                    let v = ww != 0.0 ? k[x] / ww : k[x]
                    weights[xx * taps + x] = v < 0 ? Int32(-0.5 + v * one) : Int32(0.5 + v * one)
                }
                start[xx] = Int32(xmin)
                count[xx] = Int32(xmax)
            }
            let half = Int32(1 << (PillowResampler.precisionBits - 1))
            isEvenBoxHalving = (0..<outSize).allSatisfy { x in
                start[x] == 2 * x && count[x] == 2 && weights[x * taps] == half && weights[x * taps + 1] == half
            }
            self.taps = taps
            self.start = start
            self.count = count
            self.weights = weights
        }
    }

    private struct CoefficientsKey: Hashable {
        var inSize: Int
        var outSize: Int
        var isBox: Bool
    }

    /// Shared by all threads; emptied when it grows past `cacheLimit` sizes, so a dataset of
    /// endlessly varied sizes costs no more than computing every time.
    private static let cache = Mutex<[CoefficientsKey: Coefficients]>([:])
    private static let cacheLimit = 512

    /// The coefficients of an axis resized from `inSize` to `outSize`, from the cache when there.
    static func coefficients(inSize: Int, outSize: Int, filter: Filter) -> Coefficients {
        let key = CoefficientsKey(inSize: inSize, outSize: outSize, isBox: filter == .box)
        if let c = cache.withLock({ $0[key] }) { return c }
        // Computed outside the lock; two threads may both compute a missing entry (same result).
        let c = Coefficients(inSize: inSize, outSize: outSize, filter: filter)
        cache.withLock { table in
            if table.count >= cacheLimit { table.removeAll(keepingCapacity: true) }
            table[key] = c
        }
        return c
    }

    /// The outputs `range` of one axis and their coefficients.
    struct Axis {
        let range: Range<Int>
        let coefficients: Coefficients
        var taps: Int { coefficients.taps }

        init(inSize: Int, outSize: Int, filter: Filter, range: Range<Int>) {
            self.range = range
            coefficients = PillowResampler.coefficients(inSize: inSize, outSize: outSize, filter: filter)
        }

        /// The windows of `range`, their first inputs shifted down by `origin`.
        func starts(minus origin: Int) -> [Int32] {
            coefficients.start[range].map { $0 - Int32(origin) }
        }

        var counts: ArraySlice<Int32> { coefficients.count[range] }

        /// Calls `body` with the weights of `range` (`taps` per output).
        func withWeights<R>(_ body: (UnsafePointer<Int32>) -> R) -> R {
            coefficients.weights.withUnsafeBufferPointer { body($0.baseAddress! + range.lowerBound * taps) }
        }

        /// The input indices the outputs `range` read.
        var inputSpan: Range<Int> {
            guard !range.isEmpty else { return 0..<0 }
            var lo = Int.max, hi = Int.min
            for i in range where coefficients.count[i] > 0 {
                let s = Int(coefficients.start[i])
                lo = min(lo, s)
                hi = max(hi, s + Int(coefficients.count[i]))
            }
            return lo <= hi ? lo..<hi : 0..<0
        }
    }

    /// The input span needed to produce `outRange` of an axis resized from `inSize` to `outSize`.
    static func inputSpan(for outRange: Range<Int>, inSize: Int, outSize: Int, filter: Filter) -> Range<Int> {
        if inSize == outSize { return outRange }
        return Axis(inSize: inSize, outSize: outSize, filter: filter, range: outRange).inputSpan
    }

    /// A piece of a larger image: `image` holds the pixels whose top-left corner is at
    /// (`originX`, `originY`) of an image `fullWidth` × `fullHeight`.
    struct Tile {
        var image: RGBImage
        var originX: Int
        var originY: Int
        var fullWidth: Int
        var fullHeight: Int
    }

    /// Resizes the full image that `tile` is part of to `outWidth` × `outHeight`, computing only
    /// the output rectangle `xs` × `ys`. The tile must cover the inputs that rectangle reads.
    static func resize(_ tile: Tile, outWidth: Int, outHeight: Int, filter: Filter,
                       xs: Range<Int>, ys: Range<Int>) -> Tile {
        var current = tile
        let needH = outWidth != tile.fullWidth
        let needV = outHeight != tile.fullHeight
        if needH && needV && verticalFirst(inWidth: tile.fullWidth, inHeight: tile.fullHeight,
                                           outWidth: outWidth, outHeight: outHeight) {
            // The vertical pass on the input columns the horizontal windows of `xs` read, then
            // the horizontal pass on its rows.
            let hAxis = Axis(inSize: tile.fullWidth, outSize: outWidth, filter: filter, range: xs)
            let vAxis = Axis(inSize: tile.fullHeight, outSize: outHeight, filter: filter, range: ys)
            let rows = tile.originY..<(tile.originY + tile.image.height)
            current = crop(current, xs: hAxis.inputSpan, ys: rows)
            current = vertical(current, axis: vAxis, outHeight: outHeight)
            return horizontal(current, axis: hAxis, rows: ys, outWidth: outWidth)
        }
        // Rows the vertical pass reads (or, with no vertical pass, the rows wanted).
        let vAxis = needV ? Axis(inSize: tile.fullHeight, outSize: outHeight, filter: filter, range: ys) : nil
        let rowSpan = vAxis?.inputSpan ?? ys
        if needH {
            let hAxis = Axis(inSize: tile.fullWidth, outSize: outWidth, filter: filter, range: xs)
            current = horizontal(current, axis: hAxis, rows: rowSpan, outWidth: outWidth)
        } else {
            current = crop(current, xs: xs, ys: rowSpan)
        }
        if let vAxis {
            current = vertical(current, axis: vAxis, outHeight: outHeight)
        } else {
            current = crop(current, xs: xs, ys: ys)
        }
        return current
    }

    /// Pillow 13's choice of pass order (`ImagingResampleInner`): vertical first when the height
    /// shrinks, and by more than twice as many pixels as the width does.
    static func verticalFirst(inWidth: Int, inHeight: Int, outWidth: Int, outHeight: Int) -> Bool {
        let dy = inHeight - outHeight, dx = inWidth - outWidth
        return dy > 0 && dy > 2 * dx
    }

    /// The sub-rectangle `xs` × `ys` (full-image coordinates) of a tile that covers it.
    static func crop(_ t: Tile, xs: Range<Int>, ys: Range<Int>) -> Tile {
        let x = xs.lowerBound - t.originX, y = ys.lowerBound - t.originY
        if x == 0 && y == 0 && xs.count == t.image.width && ys.count == t.image.height { return t }
        return Tile(image: t.image.cropped(x: x, y: y, width: xs.count, height: ys.count),
                    originX: xs.lowerBound, originY: ys.lowerBound, fullWidth: t.fullWidth, fullHeight: t.fullHeight)
    }

    private static func horizontal(_ t: Tile, axis: Axis, rows: Range<Int>, outWidth: Int) -> Tile {
        let ow = axis.range.count, oh = rows.count
        let stride = t.image.width * 3
        let out = [UInt8](unsafeUninitializedCapacity: ow * oh * 3) { dst, initialized in
            t.image.pixels.withUnsafeBufferPointer { src in
                let first = src.baseAddress! + (rows.lowerBound - t.originY) * stride
                if ow == 0 || oh == 0 {
                    // Nothing to compute.
                } else if axis.coefficients.isEvenBoxHalving {
                    // Pairwise byte averages: far cheaper per pixel than two transposes.
                    let x0 = 2 * axis.range.lowerBound - t.originX
                    mtok_resample_box_halve_rgb(first + x0 * 3, stride, dst.baseAddress!, ow * 3, Int32(oh), Int32(ow))
                } else {
                    let starts = axis.starts(minus: t.originX)
                    let counts = Array(axis.counts)
                    // Only the columns some window reads are transposed.
                    let lo = Int(starts.min() ?? 0)
                    let hi = zip(starts, counts).map { Int($0 + $1) }.max() ?? lo
                    let cols = max(hi - lo, 1)
                    let shifted = starts.map { $0 - Int32(lo) }
                    // Scratch space the kernel fully writes before reading: no zero fill.
                    let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: (cols + ow) * oh * 3)
                    let acc = UnsafeMutablePointer<Int32>.allocate(capacity: oh * 3)
                    defer {
                        scratch.deallocate()
                        acc.deallocate()
                    }
                    axis.withWeights { weights in
                        mtok_resample_horizontal_rgb_transposed(first + lo * 3, stride, Int32(oh), Int32(cols),
                                                                dst.baseAddress!, ow * 3, Int32(ow), shifted, counts,
                                                                weights, Int32(axis.taps), scratch,
                                                                scratch + cols * oh * 3, acc)
                    }
                }
            }
            initialized = ow * oh * 3
        }
        return Tile(image: RGBImage(width: ow, height: oh, pixels: out), originX: axis.range.lowerBound,
                    originY: rows.lowerBound, fullWidth: outWidth, fullHeight: t.fullHeight)
    }

    private static func vertical(_ t: Tile, axis: Axis, outHeight: Int) -> Tile {
        let rowBytes = t.image.width * 3
        let oh = axis.range.count
        let starts = axis.starts(minus: t.originY)
        let counts = Array(axis.counts)
        let acc = UnsafeMutablePointer<Int32>.allocate(capacity: rowBytes)  // scratch: no zero fill
        defer { acc.deallocate() }
        let out = [UInt8](unsafeUninitializedCapacity: rowBytes * oh) { dst, initialized in
            t.image.pixels.withUnsafeBufferPointer { src in
                axis.withWeights { weights in
                    mtok_resample_vertical(src.baseAddress!, rowBytes, dst.baseAddress!, Int32(oh), starts, counts,
                                           weights, Int32(axis.taps), acc)
                }
            }
            initialized = rowBytes * oh
        }
        return Tile(image: RGBImage(width: t.image.width, height: oh, pixels: out), originX: t.originX,
                    originY: axis.range.lowerBound, fullWidth: t.fullWidth, fullHeight: outHeight)
    }
}
