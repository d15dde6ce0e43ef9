/// Geometry of a 2-D cross-correlation with square kernel, stride and symmetric zero padding.
public struct ConvGeometry: Sendable, Hashable {
    public var inChannels: Int
    public var outChannels: Int
    public var kernel: Int
    public var stride: Int
    public var padding: Int

    public init(inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    public func outputSide(_ side: Int) -> Int { (side + 2 * padding - kernel) / stride + 1 }

}

/// Convolution of one channel-major image by im2col + sgemm.
public enum Conv2D {
    /// Output columns per im2col tile. Small enough that the tile written by im2col is still in
    /// cache when sgemm packs it (1024 measured a little faster than 4096 on the dev machine's user
    /// time); it depends only on the layer's shape, never on the batch, so every image runs the
    /// same sequence of GEMMs.
    static let tileColumns = 1024

    /// Scratch floats that ``forward(_:height:width:geometry:weight:bias:output:scratch:accumulate:)``
    /// needs to run `lanes` tiles at once (default: the caller's ``Parallel/lanes``).
    public static func scratchCount(_ g: ConvGeometry, height: Int, width: Int,
                                    lanes: Int = Parallel.lanes) -> Int {
        if g.kernel == 1 && g.stride == 1 && g.padding == 0 { return 0 }
        let layout = TileLayout(g, height: height, width: width)
        return layout.shared + min(max(lanes, 1), layout.count) * layout.perLane
    }

    /// Stride-1 convolutions on large planes skip the full im2col: a tile expanded only along x
    /// (`[ci, kx, row, x]`, k× the input instead of k²×) serves all k kernel rows by offsetting
    /// the GEMM operand one image row per ky, with k accumulating GEMMs. It needs the weights
    /// regrouped by ky per call, which pays off only while the plane is large next to the weights.
    static func usesRowShift(_ g: ConvGeometry, height: Int, width: Int) -> Bool {
        g.stride == 1 && g.kernel > 1 && g.outputSide(height) * g.outputSide(width) >= 4 * g.outChannels
    }

    /// How a layer's output rows are cut into GEMM tiles and what scratch each tile needs.
    struct TileLayout {
        let rows: Int      // output rows per tile (the last tile may have fewer)
        let count: Int     // tiles
        let shared: Int    // scratch floats shared by all tiles (regrouped weights)
        let perLane: Int   // scratch floats each concurrently running tile needs

        init(_ g: ConvGeometry, height: Int, width: Int) {
            let oh = g.outputSide(height), ow = g.outputSide(width)
            rows = min(oh, max(1, Conv2D.tileColumns / ow))
            count = (oh + rows - 1) / rows
            let k = g.kernel
            if Conv2D.usesRowShift(g, height: height, width: width) {
                shared = g.outChannels * g.inChannels * k * k
                perLane = g.inChannels * k * (rows + k - 1) * ow
            } else {
                shared = 0
                perLane = rows * ow * g.inChannels * k * k
            }
        }
    }

    /// `output[co, y, x] = bias[co] + Σ weight[co, ci, ky, kx] · input[ci, y·s − p + ky, x·s − p + kx]`.
    ///
    /// The output is computed in tiles of whole rows whose layout depends only on the layer's shape.
    /// A layer of several tiles runs them on the lanes (as many at once as the scratch holds),
    /// each tile's products whole; a layer of one tile cuts its products by shape
    /// (``Parallel/sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``). Either way the products
    /// depend on the shape alone, so the bytes do not depend on the thread count.
    ///
    /// - Parameters:
    ///   - input: `inChannels × height × width`.
    ///   - weight: `[outChannels, inChannels, k, k]` row-major (PyTorch's layout, no flip).
    ///   - bias: `[outChannels]` or nil.
    ///   - output: `outChannels × oh × ow`.
    ///   - scratch: at least ``scratchCount(_:height:width:lanes:)`` floats for one lane; more
    ///     lanes run when it holds more.
    ///   - accumulate: add the convolution to what `output` holds (a residual sum without an extra
    ///     pass over memory) instead of overwriting it.
    public static func forward(
        _ input: UnsafePointer<Float>, height: Int, width: Int, geometry g: ConvGeometry,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>,
        scratch: UnsafeMutableBufferPointer<Float> = UnsafeMutableBufferPointer(start: nil, count: 0),
        accumulate: Bool = false
    ) {
        let beta: Float = accumulate ? 1 : 0
        let oh = g.outputSide(height), ow = g.outputSide(width)
        let plane = oh * ow
        let kk = g.inChannels * g.kernel * g.kernel
        if g.kernel == 1 && g.stride == 1 && g.padding == 0 {
            Parallel.sgemm(.none, .none, m: g.outChannels, n: plane, k: g.inChannels,
                           a: weight, lda: g.inChannels, b: input, ldb: height * width,
                           beta: beta, c: output, ldc: plane)
        } else {
            let layout = TileLayout(g, height: height, width: width)
            precondition(scratch.count >= layout.shared + layout.perLane, "Conv2D needs scratch for k>1")
            let base = scratch.baseAddress!
            let lanes = (scratch.count - layout.shared) / layout.perLane
            let rowShift = usesRowShift(g, height: height, width: width)
            let k = g.kernel, cin = g.inChannels, cout = g.outChannels
            if rowShift {
                // Weights regrouped as [ky][co][ci][kx], so each ky is a plain cout × (cin·k) matrix.
                for ky in 0..<k {
                    for co in 0..<cout {
                        for ci in 0..<cin {
                            for kx in 0..<k {
                                base[((ky * cout + co) * cin + ci) * k + kx] = weight[((co * cin + ci) * k + ky) * k + kx]
                            }
                        }
                    }
                }
            }
            let regrouped = UnsafePointer(base)
            let out = UncheckedBox(output)
            // Tiles are the parallel unit when there are several; then a product cut in blocks
            // would only pack its weights once more per block.
            let product = layout.count > 1 ? BLAS.sgemm : Parallel.sgemm
            Parallel.forEach(layout.count, lanes: lanes) { tile, lane in
                let output = out.value
                let work = base + layout.shared + lane * layout.perLane
                let y0 = tile * layout.rows
                let rows = min(layout.rows, oh - y0)
                if rowShift {
                    let extent = rows + k - 1
                    expandRows(input, height: height, width: width, g: g, y0: y0, extent: extent, ow: ow, out: work)
                    for ky in 0..<k {
                        product(.none, .none, cout, rows * ow, cin * k, 1,
                                regrouped + ky * cout * cin * k, cin * k,
                                work + ky * ow, extent * ow, ky == 0 ? beta : 1,
                                output + y0 * ow, plane)
                    }
                } else {
                    let n = rows * ow
                    im2col(input, height: height, width: width, g: g, y0: y0, rows: rows, ow: ow, col: work)
                    product(.none, .none, cout, n, kk, 1, weight, kk, work, n, beta, output + y0 * ow, plane)
                }
            }
        }
        if let bias {
            let out = UncheckedBox(output)
            Parallel.chunks(g.outChannels) { channels in
                for co in channels {
                    let b = bias[co]
                    let p = out.value + co * plane
                    for i in 0..<plane { p[i] += b }
                }
            }
        }
    }

    /// `out[ci, kx, r, x] = input[ci, y0 + r − p, x − p + kx]` (zero outside) for `r < extent`.
    static func expandRows(
        _ input: UnsafePointer<Float>, height: Int, width: Int, g: ConvGeometry,
        y0: Int, extent: Int, ow: Int, out: UnsafeMutablePointer<Float>
    ) {
        let k = g.kernel, p = g.padding
        let box = UncheckedBox(out)
        Parallel.chunks(g.inChannels) { channels in
            for ci in channels {
                let src = input + ci * height * width
                for kx in 0..<k {
                    let xLo = max(0, p - kx)
                    let xHi = min(ow, width + p - kx)  // exclusive
                    for r in 0..<extent {
                        let d = box.value + ((ci * k + kx) * extent + r) * ow
                        let iy = y0 + r - p
                        if iy < 0 || iy >= height || xHi <= xLo {
                            d.update(repeating: 0, count: ow)
                            continue
                        }
                        if xLo > 0 { d.update(repeating: 0, count: xLo) }
                        (d + xLo).update(from: src + iy * width - p + kx + xLo, count: xHi - xLo)
                        if xHi < ow { (d + xHi).update(repeating: 0, count: ow - xHi) }
                    }
                }
            }
        }
    }

    /// Column matrix `[(ci, ky, kx), (y − y0)·ow + x]` for output rows `y0 ..< y0 + rows`.
    static func im2col(
        _ input: UnsafePointer<Float>, height: Int, width: Int, g: ConvGeometry,
        y0: Int, rows: Int, ow: Int, col: UnsafeMutablePointer<Float>
    ) {
        let k = g.kernel, s = g.stride, p = g.padding
        let n = rows * ow
        let out = UncheckedBox(col)
        Parallel.chunks(g.inChannels) { channels in
            let col = out.value
            for ci in channels {
                let src = input + ci * height * width
                for ky in 0..<k {
                    for kx in 0..<k {
                        let dstRow = col + ((ci * k + ky) * k + kx) * n
                        // Output columns whose input column x·s − p + kx lies inside the image.
                        let xLo = max(0, (p - kx + s - 1) / s)
                        let xHi = min(ow, (width - 1 + p - kx) / s + 1)  // exclusive
                        for r in 0..<rows {
                            let iy = (y0 + r) * s - p + ky
                            let d = dstRow + r * ow
                            if iy < 0 || iy >= height || xHi <= xLo {
                                d.update(repeating: 0, count: ow)
                                continue
                            }
                            if xLo > 0 { d.update(repeating: 0, count: xLo) }
                            let rowSrc = src + iy * width - p + kx
                            if s == 1 {
                                (d + xLo).update(from: rowSrc + xLo, count: xHi - xLo)
                            } else {
                                for x in xLo..<xHi { d[x] = rowSrc[x * s] }
                            }
                            if xHi < ow { (d + xHi).update(repeating: 0, count: ow - xHi) }
                        }
                    }
                }
            }
        }
    }
}
