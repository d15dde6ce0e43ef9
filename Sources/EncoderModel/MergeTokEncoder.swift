import Foundation
import TensorCore

/// The MergeTok/MergeVQ encoder forward pass on the CPU (spec §2–§4).
///
/// `Sendable`: one instance may serve several threads, each image getting its own activations
/// (reused from image to image). Every image runs the identical sequence of products, each
/// partitioned by its shape alone, whatever the batch it arrived in and the thread count, so the
/// bytes depend on neither. ``Parallel/threadCount`` threads (set it with
/// ``Parallel/setThreadCount(_:)``) share the work: whole images of a batch, convolution tiles and
/// attention heads on separate lanes, and the remaining large products in halves
/// (``Parallel/sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``); OpenBLAS always runs on one
/// thread. The bytes still depend on the OpenBLAS kernel set (``BLAS/kernel``), which caches record.
public final class MergeTokEncoder: Sendable {
    /// Identifies the arithmetic of this implementation: bump it with any change that can alter
    /// an output bit (kernel order, fused steps). Caches record it, so a run resumed by a build
    /// that computes differently is refused instead of mixing the two.
    public static let arithmeticRevision = 3

    public let weights: EncoderWeights
    public let config: EncoderConfig
    public let schedule: MergeSchedule
    private let codebookNorms: [Float]
    /// The CNN stem's activation and scratch buffers, reused across images.
    private let buffersKept = BufferPool()

    /// Floats in one input image, `3 × R × R`.
    public var inputCount: Int { config.inChannels * config.resolution * config.resolution }

    public init(weights: EncoderWeights) {
        self.weights = weights
        config = weights.config
        schedule = MergeSchedule(config: weights.config)
        if config.quantizer == .vq, let n = config.codebookSize {
            codebookNorms = Quantizers.squaredNorms(weights.pointer("quantize.embedding.weight"),
                                                    entries: n, width: config.zChannels)
        } else {
            codebookNorms = []
        }
    }

    /// Encodes a batch of channel-major `[3, R, R]` images in [−1, 1].
    /// - Throws: ``EncoderError/invalidInput(_:)`` for a wrong-sized image,
    ///   ``EncoderError/degenerateMetric(layer:)`` for a zero-norm merge metric.
    ///
    /// With several threads (``Parallel/lanes``) whole images run concurrently, one per lane,
    /// which keeps every core on useful work; the `count % lanes` images left over run one at a
    /// time with the threads working inside each image.
    public func encode(batch: [[Float]]) throws -> [EncodedImage] {
        for image in batch where image.count != inputCount {
            throw EncoderError.invalidInput("expected \(inputCount) floats (3×\(config.resolution)²), got \(image.count)")
        }
        let lanes = Parallel.lanes
        let spread = lanes > 1 ? batch.count / lanes * lanes : 0
        var results = [Result<EncodedImage, any Error>?](repeating: nil, count: batch.count)
        results.withUnsafeMutableBufferPointer { slots in
            Parallel.forEach(spread) { i, _ in
                slots[i] = Result { try encode(image: batch[i]) }
            }
        }
        for i in spread..<batch.count {
            results[i] = Result { try encode(image: batch[i]) }
        }
        // The first failing image in batch order decides the error, however the lanes ran.
        return try results.map { try $0!.get() }
    }

    /// Encodes one image.
    ///
    /// `trace`, for tests and debugging, receives (name, shape, values) at each stage:
    /// `conv_in` and `down.{i}` (CNN stem, C×H×W), or `conv_in` and `stem` (ViT stem);
    /// `tokens` (T×C, class token first), `blocks.{ℓ}` (T×C after block ℓ), and `head`
    /// (K × conv_out channels, before the VAE split and quantization).
    public func encode(image: [Float], trace: ((String, [Int], [Float]) -> Void)? = nil) throws -> EncodedImage {
        guard image.count == inputCount else {
            throw EncoderError.invalidInput("expected \(inputCount) floats (3×\(config.resolution)²), got \(image.count)")
        }
        return try image.withUnsafeBufferPointer { pixels in
            try forward(pixels.baseAddress!, trace: trace)
        }
    }

    // MARK: Forward

    private func w(_ name: String) -> UnsafePointer<Float> { weights.pointer("encoder." + name) }

    private func forward(_ input: UnsafePointer<Float>,
                         trace: ((String, [Int], [Float]) -> Void)?) throws -> EncodedImage {
        let c = config.width
        let n = config.tokenCount
        // Stem: features `[C × N]` channel-major.
        let features = UnsafeMutablePointer<Float>.allocate(capacity: c * n)
        defer { features.deallocate() }
        if config.isIsotropic {
            isotropicStem(input, into: features, trace: trace)
        } else {
            cnnStem(input, into: features, trace: trace)
        }
        // Tokens `[T × C]` with the class token first (spec §2.3); no positional embedding.
        var t = n + 1
        let x = UnsafeMutablePointer<Float>.allocate(capacity: t * c)
        defer { x.deallocate() }
        (x).update(from: w("attn.cls_token"), count: c)
        transpose(features, rows: c, columns: n, into: x + c)
        trace?("tokens", [t, c], Array(UnsafeBufferPointer(start: x, count: t * c)))
        var sizes = [Float](repeating: 1, count: t)
        var pos = Array(0...n)
        var merged = false
        let ws = TransformerScratch(tokens: t, width: c)
        defer { ws.deallocate() }
        for layer in 0..<config.numAttBlocks {
            let r = schedule.effective[layer]
            try block(layer, x: x, tokens: &t, sizes: &sizes, sizesAreOne: !merged, pos: &pos, r: r, ws: ws)
            if r > 0 { merged = true }
            trace?("blocks.\(layer)", [t, c], Array(UnsafeBufferPointer(start: x, count: t * c)))
        }
        let k = t - 1
        precondition(k == config.keptTokens, "schedule validated at load")
        // Head (spec §2.5): channel-major [C × K] → GroupNorm+SiLU → 1×1 conv. The m×m grid of the
        // reference is only a storage layout (GN spans all tokens, the conv is 1×1), so it is skipped.
        let hidden = UnsafeMutablePointer<Float>.allocate(capacity: c * k)
        defer { hidden.deallocate() }
        transpose(x + c, rows: k, columns: c, into: hidden)
        Normalization.groupNorm(hidden, channels: c, spatial: k, groups: 32, eps: 1e-6,
                                weight: w("norm_out.weight"), bias: w("norm_out.bias"),
                                output: hidden, silu: true)
        let zOut = config.headChannels
        let z = config.zChannels
        var head = [Float](repeating: 0, count: k * zOut)
        head.withUnsafeMutableBufferPointer { h in
            Parallel.sgemm(.transposed, .transposed, m: k, n: zOut, k: c,
                           a: hidden, lda: k, b: w("conv_out.weight"), ldb: c, c: h.baseAddress!, ldc: zOut)
            let bias = w("conv_out.bias")
            for i in 0..<k {
                for o in 0..<zOut { h[i * zOut + o] += bias[o] }
            }
        }
        trace?("head", [k, zOut], head)
        var latents = [Float](repeating: 0, count: k * z)
        var logvar: [Float]? = nil
        for i in 0..<k {
            for o in 0..<z { latents[i * z + o] = head[i * zOut + o] }
        }
        if config.vae {
            var lv = [Float](repeating: 0, count: k * z)
            for i in 0..<k {
                for o in 0..<z { lv[i * z + o] = min(max(head[i * zOut + z + o], -30), 20) }
            }
            logvar = lv
        }
        let indices: [UInt32] = latents.withUnsafeBufferPointer { lat in
            switch config.quantizer {
            case .lfq:
                return Quantizers.lfq(lat.baseAddress!, tokens: k, width: z, stride: z)
            case .vq:
                return Quantizers.vq(lat.baseAddress!, tokens: k, width: z, stride: z,
                                     codebook: weights.pointer("quantize.embedding.weight"),
                                     entries: config.codebookSize ?? 0, codebookNorms: codebookNorms)
            }
        }
        let groups = (0..<n).map { UInt16(pos[$0 + 1] - 1) }
        return EncodedImage(latents: latents, logvar: logvar, indices: indices, groups: groups,
                            sizes: sizes[1...].map { Int($0) })
    }

    // MARK: Stems

    private func isotropicStem(_ input: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                               trace: ((String, [Int], [Float]) -> Void)?) {
        let c = config.width, p = config.patchSize, r = config.resolution
        let g = ConvGeometry(inChannels: config.inChannels, outChannels: c, kernel: p, stride: p)
        let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: Conv2D.scratchCount(g, height: r, width: r))
        defer { scratch.deallocate() }
        Conv2D.forward(input, height: r, width: r, geometry: g, weight: w("conv_in.0.weight"),
                       bias: w("conv_in.0.bias"), output: out, scratch: scratch)
        let n = config.tokenCount
        trace?("conv_in", [c, config.gridSide, config.gridSide], Array(UnsafeBufferPointer(start: out, count: c * n)))
        // GroupNorm with C groups: per-channel normalisation over the er×er positions.
        Normalization.groupNorm(out, channels: c, spatial: n, groups: c, eps: 1e-6,
                                weight: w("conv_in.1.weight"), bias: w("conv_in.1.bias"),
                                output: out, silu: false)
        trace?("stem", [c, config.gridSide, config.gridSide], Array(UnsafeBufferPointer(start: out, count: c * n)))
    }

    private func cnnStem(_ input: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                         trace: ((String, [Int], [Float]) -> Void)?) {
        let cfg = config
        let r = cfg.resolution
        // Largest activation and convolution scratch over every convolution of the stem.
        let stemConv = ConvGeometry(inChannels: cfg.inChannels, outChannels: cfg.ch, kernel: 3, padding: 1)
        var maxAct = cfg.ch * r * r
        var maxScratch = Conv2D.scratchCount(stemConv, height: r, width: r)
        var s = r
        for level in 0..<cfg.levels {
            let cin = cfg.levelInput(level), cout = cfg.levelOutput(level)
            maxAct = max(maxAct, max(cin, cout) * s * s)
            for (i, o, stride) in [(cin, cout, 1), (cout, cout, 1), (cout, cout, 2)] {
                let g = ConvGeometry(inChannels: i, outChannels: o, kernel: 3, stride: stride, padding: 1)
                maxScratch = max(maxScratch, Conv2D.scratchCount(g, height: s, width: s))
            }
            if level < cfg.levels - 1 { s /= 2 }
        }
        let buffers = [maxAct, maxAct, maxAct, maxScratch].map { buffersKept.take($0) }
        defer { buffers.forEach(buffersKept.give) }
        var a = buffers[0].baseAddress!
        var b = buffers[1].baseAddress!
        let h = buffers[2].baseAddress!
        let scratch = buffers[3]

        Conv2D.forward(input, height: r, width: r, geometry: stemConv,
                       weight: w("conv_in.weight"), bias: nil, output: a, scratch: scratch)
        trace?("conv_in", [cfg.ch, r, r], Array(UnsafeBufferPointer(start: a, count: cfg.ch * r * r)))
        s = r
        var width = cfg.ch
        for level in 0..<cfg.levels {
            let cout = cfg.levelOutput(level)
            for blockIndex in 0..<cfg.resBlocks(level: level) {
                let p = "down.\(level).block.\(blockIndex)."
                let cin = width
                let plane = s * s
                // h = conv1(SiLU(GN1(x)))
                Normalization.groupNorm(a, channels: cin, spatial: plane, groups: 32, eps: 1e-6,
                                        weight: w(p + "norm1.weight"), bias: w(p + "norm1.bias"),
                                        output: h, silu: true)
                let g1 = ConvGeometry(inChannels: cin, outChannels: cout, kernel: 3, padding: 1)
                Conv2D.forward(h, height: s, width: s, geometry: g1, weight: w(p + "conv1.weight"),
                               bias: nil, output: b, scratch: scratch)
                // out = shortcut(x) + conv2(SiLU(GN2(h))), the conv accumulating onto the shortcut.
                Normalization.groupNorm(b, channels: cout, spatial: plane, groups: 32, eps: 1e-6,
                                        weight: w(p + "norm2.weight"), bias: w(p + "norm2.bias"),
                                        output: h, silu: true)
                let g2 = ConvGeometry(inChannels: cout, outChannels: cout, kernel: 3, padding: 1)
                if cin != cout {
                    let gs = ConvGeometry(inChannels: cin, outChannels: cout, kernel: 1)
                    Conv2D.forward(a, height: s, width: s, geometry: gs, weight: w(p + "nin_shortcut.weight"),
                                   bias: nil, output: b)
                } else {
                    swap(&a, &b)
                }
                Conv2D.forward(h, height: s, width: s, geometry: g2, weight: w(p + "conv2.weight"),
                               bias: nil, output: b, scratch: scratch, accumulate: true)
                swap(&a, &b)
                width = cout
            }
            if level < cfg.levels - 1 {
                let g = ConvGeometry(inChannels: cout, outChannels: cout, kernel: 3, stride: 2, padding: 1)
                Conv2D.forward(a, height: s, width: s, geometry: g, weight: w("down.\(level).downsample.weight"),
                               bias: w("down.\(level).downsample.bias"), output: b, scratch: scratch)
                swap(&a, &b)
                s /= 2
            }
            trace?("down.\(level)", [width, s, s], Array(UnsafeBufferPointer(start: a, count: width * s * s)))
        }
        out.update(from: a, count: cfg.width * cfg.tokenCount)
    }

    // MARK: Transformer block (spec §2.4)

    private func block(_ layer: Int, x: UnsafeMutablePointer<Float>, tokens t: inout Int,
                       sizes: inout [Float], sizesAreOne: Bool, pos: inout [Int], r: Int,
                       ws: TransformerScratch) throws {
        let c = config.width, heads = config.heads, d = config.headWidth
        let p = "attn.blocks.\(layer)."
        Normalization.layerNorm(x, rows: t, width: c, eps: 1e-5, weight: w(p + "norm1.weight"),
                                bias: w(p + "norm1.bias"), output: ws.u)
        Linear.forward(ws.u, rows: t, inFeatures: c, outFeatures: 3 * c, weight: w(p + "attn.qkv.weight"),
                       bias: w(p + "attn.qkv.bias"), output: ws.qkv)
        var logSizes: [Float] = []
        if !sizesAreOne { logSizes = sizes.map { Foundation.log($0) } }
        logSizes.withUnsafeBufferPointer { ls in
            Attention.forward(qkv: ws.qkv, tokens: t, width: c, heads: heads,
                              logSizes: sizesAreOne ? nil : ls.baseAddress, output: ws.o, scores: ws.scores)
        }
        Linear.forward(ws.o, rows: t, inFeatures: c, outFeatures: c, weight: w(p + "attn.proj.weight"),
                       bias: w(p + "attn.proj.bias"), output: ws.u)
        let g1 = w(p + "ls1.gamma")
        residualAdd(x, ws.u, gamma: g1, rows: t, width: c)
        if r > 0 {
            // Metric: mean over heads of the key vectors (after the qkv bias).
            for i in 0..<t {
                let kRow = ws.qkv + i * 3 * c + c
                for k in 0..<d {
                    var sum: Float = 0
                    for h in 0..<heads { sum += kRow[h * d + k] }
                    ws.metric[i * d + k] = sum / Float(heads)
                }
            }
            guard let map = TokenMerging.merge(x: x, tokens: t, width: c, metric: ws.metric, metricWidth: d, r: r,
                                               sizes: &sizes, scores: ws.scores.baseAddress!, merged: ws.o) else {
                throw EncoderError.degenerateMetric(layer: layer)
            }
            for j in 0..<pos.count { pos[j] = map[pos[j]] }
            t -= r
        }
        Normalization.layerNorm(x, rows: t, width: c, eps: 1e-5, weight: w(p + "norm2.weight"),
                                bias: w(p + "norm2.bias"), output: ws.u)
        Linear.forward(ws.u, rows: t, inFeatures: c, outFeatures: 4 * c, weight: w(p + "mlp.fc1.weight"),
                       bias: w(p + "mlp.fc1.bias"), output: ws.hidden)
        Activation.gelu(ws.hidden, count: t * 4 * c)
        Linear.forward(ws.hidden, rows: t, inFeatures: 4 * c, outFeatures: c, weight: w(p + "mlp.fc2.weight"),
                       bias: w(p + "mlp.fc2.bias"), output: ws.u)
        let g2 = w(p + "ls2.gamma")
        residualAdd(x, ws.u, gamma: g2, rows: t, width: c)
    }
}

/// `dst[j, i] = src[i, j]` for a row-major `rows × columns` source, in 16×16 blocks so that
/// neither side is walked with a stride of a whole row per element.
private func transpose(_ src: UnsafePointer<Float>, rows: Int, columns: Int, into dst: UnsafeMutablePointer<Float>) {
    let block = 16
    for i0 in stride(from: 0, to: rows, by: block) {
        for j0 in stride(from: 0, to: columns, by: block) {
            for i in i0..<min(i0 + block, rows) {
                for j in j0..<min(j0 + block, columns) { dst[j * rows + i] = src[i * columns + j] }
            }
        }
    }
}

/// `x += u ⊙ γ` row by row (LayerScale residual), rows split over the lanes.
private func residualAdd(_ x: UnsafeMutablePointer<Float>, _ u: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
                         rows: Int, width c: Int) {
    Parallel.chunks(rows, minimumChunk: 16) { range in
        for i in range {
            for ch in 0..<c { x[i * c + ch] += u[i * c + ch] * gamma[ch] }
        }
    }
}

/// Per-call transformer buffers, sized for the first (largest) layer.
struct TransformerScratch {
    let u, qkv, o, hidden, metric: UnsafeMutablePointer<Float>
    /// Attention scores for every lane; token merging uses the first `⌈t/2⌉·⌊t/2⌋` floats.
    let scores: UnsafeMutableBufferPointer<Float>

    init(tokens t: Int, width c: Int) {
        u = .allocate(capacity: t * c)
        qkv = .allocate(capacity: t * 3 * c)
        o = .allocate(capacity: t * c)
        hidden = .allocate(capacity: t * 4 * c)
        scores = .allocate(capacity: Attention.scratchCount(tokens: t))
        metric = .allocate(capacity: t * c)
    }

    func deallocate() {
        for p in [u, qkv, o, hidden, metric] { p.deallocate() }
        scores.deallocate()
    }
}
