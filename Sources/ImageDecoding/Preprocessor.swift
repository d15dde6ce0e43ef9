/// How an image becomes a square of `resolution` pixels.
public enum CropMode: String, Sendable, CaseIterable {
    /// ADM's `center_crop_arr` (guided-diffusion; DiT, LlamaGen, MAR): halve with Pillow's BOX
    /// while the short side is at least twice the target, resize with BICUBIC so the short side
    /// is the target (sizes rounded half to even, as Python's `round`), crop the centre with floor
    /// offsets.
    case adm
    /// torchvision `Resize(resolution, BICUBIC, antialias)` then `CenterCrop(resolution)` on a PIL
    /// image: the long side is truncated (`int(S·long/short)`), crop offsets are `int(round(d/2))`.
    case resizeCenter = "resize-center"
}

/// A preprocessed view and where it came from.
public struct PreprocessedImage: Sendable, Equatable {
    /// `resolution` × `resolution` RGB.
    public var image: RGBImage
    /// The decoded image's size (after EXIF orientation when applied).
    public var sourceWidth: Int
    public var sourceHeight: Int
    /// The kept square in source pixel coordinates (the resize steps' overall scale applied to the
    /// crop; fractional because ADM's halvings floor).
    public var cropX: Double
    public var cropY: Double
    public var cropWidth: Double
    public var cropHeight: Double
    /// The view is mirrored left to right (after the crop).
    public var isFlipped: Bool
}

/// Which view of an image to produce.
public enum View: Sendable, Equatable, Hashable {
    /// 0: the crop as is.
    case identity
    /// 1: the crop mirrored left to right.
    case horizontalFlip
    /// 2...11: torchvision `TenCrop(S)` applied to the ADM crop at `int(S · tenCropRange)`, as
    /// LlamaGen's code extraction does: index 0...4 = top-left, top-right, bottom-left,
    /// bottom-right, centre; 5...9 = the same five taken from the mirrored image.
    case tenCrop(Int)

    /// The view number stored in cache records (0, 1, 2...11).
    public var number: Int {
        switch self {
        case .identity: return 0
        case .horizontalFlip: return 1
        case .tenCrop(let i): return 2 + i
        }
    }

    /// The view for a record's view number, or nil if out of range.
    public init?(number: Int) {
        switch number {
        case 0: self = .identity
        case 1: self = .horizontalFlip
        case 2...11: self = .tenCrop(number - 2)
        default: return nil
        }
    }
}

/// Turns decoded images or image files into what a tokenizer sees.
///
/// A value type with no mutable shared state: one instance may be used from many threads at once.
///
///     let pre = Preprocessor(resolution: 256, crop: .adm)
///     let rgb = try pre.preprocessFile(atPath: "n01440764/x.JPEG", view: .identity)
///     let chw = rgb.floatCHW()   // 3 × 256 × 256 floats in [-1, 1]
public struct Preprocessor: Sendable, Equatable {
    public var resolution: Int
    public var crop: CropMode
    public var decodeOptions: DecodeOptions
    /// Ten-crop views first crop to `int(resolution · tenCropRange)`; LlamaGen uses 1.1 (and 1.05).
    public var tenCropRange: Double = 1.1
    /// JPEGs only: decode just the rows and columns the kept pixels depend on (with a margin), via
    /// `jpeg_crop_scanline`/`jpeg_skip_scanlines`. The output is identical; it only saves work.
    public var usesRegionDecode: Bool = true
    /// Fast path, off by default because pixels change: decode JPEGs at 1/2, 1/4 or 1/8 scale in
    /// the DCT domain in place of that many ADM box halvings. Only the `adm` crop uses it.
    public var usesDCTScaling: Bool = false

    /// - Precondition: `resolution` > 0.
    public init(resolution: Int, crop: CropMode = .adm, decodeOptions: DecodeOptions = DecodeOptions()) {
        precondition(resolution > 0, "resolution must be positive")
        self.resolution = resolution
        self.crop = crop
        self.decodeOptions = decodeOptions
    }

    /// Reads, decodes and crops one file in one call, with default decode options.
    ///
    ///     let pixels = try Preprocessor.preprocessFile(atPath: p, resolution: 256, crop: .adm, view: .identity)
    ///
    /// - Returns: `resolution` × `resolution` RGB; call ``RGBImage/floatCHW()`` for the encoder's input.
    /// - Throws: ``ImageDecodingError``.
    public static func preprocessFile(atPath path: String, resolution: Int, crop: CropMode = .adm,
                                      view: View = .identity) throws(ImageDecodingError) -> RGBImage {
        try Preprocessor(resolution: resolution, crop: crop).preprocessFile(atPath: path, view: view)
    }

    /// Reads, decodes and crops one file.
    /// - Throws: ``ImageDecodingError``.
    public func preprocessFile(atPath path: String, view: View = .identity) throws(ImageDecodingError) -> RGBImage {
        try preprocess(bytes: ImageDecoder.readFile(path), path: path, view: view)
    }

    /// Decodes and crops one encoded image. Decodes only what the view needs when it can.
    /// - Throws: ``ImageDecodingError``.
    public func preprocess(bytes: [UInt8], path: String = "", view: View = .identity) throws(ImageDecodingError)
        -> RGBImage
    {
        try preprocessDetailed(bytes: bytes, path: path, view: view).image
    }

    /// Like ``preprocess(bytes:path:view:)``, and also says where the result came from: the
    /// source's size and the crop box, which cache records store.
    /// - Throws: ``ImageDecodingError``.
    public func preprocessDetailed(bytes: [UInt8], path: String = "", view: View = .identity)
        throws(ImageDecodingError) -> PreprocessedImage
    {
        let decoded = try ImageDecoder.decodeRegion(bytes: bytes, path: path, options: decodeOptions) { w, h in
            var denom = 1
            if usesDCTScaling && crop == .adm {
                let plan = makePlan(width: w, height: h, view: view)
                denom = 1 << min(plan.boxHalvings, 3)
            }
            // libjpeg's scaled size rounds up; keeping the partial edge pixel maps the whole image
            // onto the scaled grid, which stays closer to the box-halving chain than flooring.
            let sw = (w + denom - 1) / denom, sh = (h + denom - 1) / denom
            guard usesRegionDecode else { return .init(scaleDenominator: denom) }
            let (xs, ys) = makePlan(width: sw, height: sh, view: view).sourceSpan()
            return Self.region(xs: xs, ys: ys, width: sw, height: sh, scaleDenominator: denom)
        }
        let (fw, fh) = (decoded.fullWidth, decoded.fullHeight)
        let tile = PillowResampler.Tile(image: decoded.image, originX: decoded.originX, originY: decoded.originY,
                                        fullWidth: fw, fullHeight: fh)
        let plan = makePlan(width: fw, height: fh, view: view)
        return described(plan.run(tile), plan: plan, decoded: decoded)
    }

    /// Several views of one encoded image, as ``preprocessDetailed(bytes:path:view:)`` gives each,
    /// from one decode: views that share their resize steps (a view and its mirror; the ten
    /// crops) also share one resize, of the rectangle covering all their crops, since each output
    /// pixel of a resize depends only on its own inputs.
    /// - Throws: ``ImageDecodingError``.
    public func preprocessViews(bytes: [UInt8], path: String = "", views: [View])
        throws(ImageDecodingError) -> [PreprocessedImage]
    {
        if views.count <= 1 || usesDCTScaling {
            var out: [PreprocessedImage] = []
            for view in views { out.append(try preprocessDetailed(bytes: bytes, path: path, view: view)) }
            return out
        }
        let decoded = try ImageDecoder.decodeRegion(bytes: bytes, path: path, options: decodeOptions) { w, h in
            guard usesRegionDecode else { return .init() }
            // What every view reads.
            let spans = views.map { makePlan(width: w, height: h, view: $0).sourceSpan() }
            return Self.region(xs: Self.hull(spans.map(\.0)), ys: Self.hull(spans.map(\.1)), width: w, height: h)
        }
        let (fw, fh) = (decoded.fullWidth, decoded.fullHeight)
        let tile = PillowResampler.Tile(image: decoded.image, originX: decoded.originX, originY: decoded.originY,
                                        fullWidth: fw, fullHeight: fh)
        let plans = views.map { makePlan(width: fw, height: fh, view: $0) }
        var resized: [(steps: [Plan.Step], tile: PillowResampler.Tile)] = []
        var out: [PreprocessedImage] = []
        for plan in plans {
            if !resized.contains(where: { $0.steps == plan.steps }) {
                // One run over the rectangle covering the crops of every view with these steps.
                let group = plans.filter { $0.steps == plan.steps }
                let xs = Self.hull(group.map(\.keepX)), ys = Self.hull(group.map(\.keepY))
                let cover = Plan(steps: plan.steps, keepX: xs, keepY: ys, flips: false)
                let (lastW, lastH) = plan.steps.last.map { ($0.outWidth, $0.outHeight) } ?? (fw, fh)
                resized.append((plan.steps, PillowResampler.Tile(image: cover.run(tile), originX: xs.lowerBound,
                                                                 originY: ys.lowerBound, fullWidth: lastW, fullHeight: lastH)))
            }
            let covering = resized.first { $0.steps == plan.steps }!.tile
            let kept = PillowResampler.crop(covering, xs: plan.keepX, ys: plan.keepY).image
            out.append(described(plan.flips ? kept.flippedHorizontally() : kept, plan: plan, decoded: decoded))
        }
        return out
    }

    /// The smallest range covering all of `ranges` (not empty).
    static func hull(_ ranges: [Range<Int>]) -> Range<Int> {
        ranges.dropFirst().reduce(ranges[0]) { min($0.lowerBound, $1.lowerBound)..<max($0.upperBound, $1.upperBound) }
    }

    /// The part of a `width` × `height` (scaled) JPEG to decode for pixels `xs` × `ys`: a margin
    /// keeps libjpeg's crop edges (upsampling context) out of the pixels used.
    static func region(xs: Range<Int>, ys: Range<Int>, width: Int, height: Int, scaleDenominator: Int = 1)
        -> ImageDecoder.RegionRequest
    {
        let margin = 16
        let x0 = max(0, xs.lowerBound - margin), x1 = min(width, xs.upperBound + margin)
        let y0 = max(0, ys.lowerBound - margin), y1 = min(height, ys.upperBound + margin)
        return .init(scaleDenominator: scaleDenominator, x0: x0, width: x1 - x0, y0: y0, height: y1 - y0)
    }

    /// The result with its provenance: the source's size and the crop box in source pixels.
    private func described(_ image: RGBImage, plan: Plan, decoded: ImageDecoder.DecodedRegion) -> PreprocessedImage {
        let (lastW, lastH) = plan.steps.last.map { ($0.outWidth, $0.outHeight) } ?? (decoded.fullWidth, decoded.fullHeight)
        let sx = Double(decoded.sourceWidth) / Double(lastW), sy = Double(decoded.sourceHeight) / Double(lastH)
        return PreprocessedImage(
            image: image, sourceWidth: decoded.sourceWidth, sourceHeight: decoded.sourceHeight,
            cropX: Double(plan.keepX.lowerBound) * sx, cropY: Double(plan.keepY.lowerBound) * sy,
            cropWidth: Double(plan.keepX.count) * sx, cropHeight: Double(plan.keepY.count) * sy,
            isFlipped: plan.flips)
    }

    /// Crops a decoded image.
    public func preprocess(_ image: RGBImage, view: View = .identity) -> RGBImage {
        let tile = PillowResampler.Tile(image: image, originX: 0, originY: 0,
                                        fullWidth: image.width, fullHeight: image.height)
        return makePlan(width: image.width, height: image.height, view: view).run(tile)
    }

    // MARK: - Planning

    /// The resize steps and final rectangle for one view of a `width` × `height` image.
    struct Plan {
        struct Step: Equatable {
            var inWidth, inHeight, outWidth, outHeight: Int
            var filter: PillowResampler.Filter
        }
        var steps: [Step]
        /// The kept square, in the coordinates of the last step's output.
        var keepX: Range<Int>
        var keepY: Range<Int>
        var flips: Bool
        var boxHalvings: Int { steps.filter { $0.filter == .box }.count }

        /// For each step, the output rectangle it must produce; last entry is the source span.
        func spans() -> [(Range<Int>, Range<Int>)] {
            var xs = keepX, ys = keepY
            var out: [(Range<Int>, Range<Int>)] = [(xs, ys)]
            for s in steps.reversed() {
                xs = PillowResampler.inputSpan(for: xs, inSize: s.inWidth, outSize: s.outWidth, filter: s.filter)
                ys = PillowResampler.inputSpan(for: ys, inSize: s.inHeight, outSize: s.outHeight, filter: s.filter)
                out.append((xs, ys))
            }
            return out
        }

        func sourceSpan() -> (Range<Int>, Range<Int>) { spans().last! }

        func run(_ input: PillowResampler.Tile) -> RGBImage {
            let wanted = Array(spans().reversed())  // wanted[0] = source span, wanted[i+1] = step i's output
            var tile = input
            for (i, s) in steps.enumerated() {
                let (xs, ys) = wanted[i + 1]
                tile = PillowResampler.resize(tile, outWidth: s.outWidth, outHeight: s.outHeight, filter: s.filter,
                                              xs: xs, ys: ys)
            }
            let kept = PillowResampler.crop(tile, xs: keepX, ys: keepY).image
            return flips ? kept.flippedHorizontally() : kept
        }
    }

    func makePlan(width: Int, height: Int, view: View) -> Plan {
        var w = width, h = height
        var steps: [Plan.Step] = []
        let side: Int
        if case .tenCrop = view {
            side = Int(Double(resolution) * tenCropRange)
        } else {
            side = resolution
        }
        switch crop {
        case .adm:
            while min(w, h) >= 2 * side {
                steps.append(.init(inWidth: w, inHeight: h, outWidth: w / 2, outHeight: h / 2, filter: .box))
                w /= 2
                h /= 2
            }
            let scale = Double(side) / Double(min(w, h))
            let nw = Int((Double(w) * scale).rounded(.toNearestOrEven))
            let nh = Int((Double(h) * scale).rounded(.toNearestOrEven))
            if nw != w || nh != h {
                steps.append(.init(inWidth: w, inHeight: h, outWidth: nw, outHeight: nh, filter: .bicubic))
            }
            w = nw
            h = nh
        case .resizeCenter:
            let (nw, nh) = w <= h ? (side, Int(Double(side) * Double(h) / Double(w)))
                                  : (Int(Double(side) * Double(w) / Double(h)), side)
            if nw != w || nh != h {
                steps.append(.init(inWidth: w, inHeight: h, outWidth: nw, outHeight: nh, filter: .bicubic))
            }
            w = nw
            h = nh
        }
        // The square of `side` the crop keeps.
        var cx: Int, cy: Int
        switch crop {
        case .adm: (cx, cy) = ((w - side) / 2, (h - side) / 2)
        case .resizeCenter: (cx, cy) = (Self.roundHalf(w - side), Self.roundHalf(h - side))
        }
        var flips = false
        var size = side
        switch view {
        case .identity: break
        case .horizontalFlip: flips = true
        case .tenCrop(let index):
            precondition((0..<10).contains(index), "ten-crop index must be 0...9")
            let s = resolution, d = side - s
            let corners = [(0, 0), (d, 0), (0, d), (d, d), (Self.roundHalf(d), Self.roundHalf(d))]
            var (ox, oy) = corners[index % 5]
            if index >= 5 {
                // Crops of the mirrored image: mirror the offset, crop, then mirror the crop.
                ox = d - ox
                flips = true
            }
            cx += ox
            cy += oy
            size = s
        }
        return Plan(steps: steps, keepX: cx..<(cx + size), keepY: cy..<(cy + size), flips: flips)
    }

    /// Python's `int(round(d / 2.0))`: halves go to the even neighbour.
    static func roundHalf(_ d: Int) -> Int { Int((Double(d) / 2.0).rounded(.toNearestOrEven)) }
}

extension Preprocessor {
    /// The kept rectangle (in the last resize step's output) and whether it is mirrored; for tests
    /// and diagnostics.
    package func makePlanForTesting(width: Int, height: Int, view: View)
        -> (x: Range<Int>, y: Range<Int>, flips: Bool)
    {
        let p = makePlan(width: width, height: height, view: view)
        return (p.keepX, p.keepY, p.flips)
    }
}
