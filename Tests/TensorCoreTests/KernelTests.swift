import Foundation
import Synchronization
import Testing
@testable import TensorCore

/// Kernels against naive binary64 loops.
@Suite struct KernelTests {
    struct Rng {
        var state: UInt64
        mutating func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24) * 2 - 1
        }
        mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
    }

    static let geometries: [ConvGeometry] = [
        ConvGeometry(inChannels: 5, outChannels: 7, kernel: 3, stride: 1, padding: 1),   // row-shift path
        ConvGeometry(inChannels: 4, outChannels: 500, kernel: 3, stride: 1, padding: 1), // im2col path
        ConvGeometry(inChannels: 4, outChannels: 6, kernel: 3, stride: 2, padding: 1),
        ConvGeometry(inChannels: 6, outChannels: 3, kernel: 1),
        ConvGeometry(inChannels: 3, outChannels: 8, kernel: 4, stride: 4),
    ]

    @Test func bothStrideOnePathsAreTested() {
        #expect(Conv2D.usesRowShift(Self.geometries[0], height: 40, width: 40))
        #expect(!Conv2D.usesRowShift(Self.geometries[1], height: 40, width: 40))
    }

    @Test(arguments: geometries, [false, true])
    func convolutionMatchesNaive(_ g: ConvGeometry, accumulate: Bool) {
        var rng = Rng(state: 1)
        let h = 40, w = 40  // 40 output rows span two 1024-column im2col tiles
        let input = rng.array(g.inChannels * h * w)
        let weight = rng.array(g.outChannels * g.inChannels * g.kernel * g.kernel)
        let bias = rng.array(g.outChannels)
        let oh = g.outputSide(h), ow = g.outputSide(w)
        // With accumulate the output starts at 0.5 and must end at 0.5 + conv; without, its NaNs
        // must all be overwritten.
        var out = [Float](repeating: accumulate ? 0.5 : .nan, count: g.outChannels * oh * ow)
        var scratch = [Float](repeating: .nan, count: Conv2D.scratchCount(g, height: h, width: w))
        scratch.withUnsafeMutableBufferPointer { s in
            Conv2D.forward(input, height: h, width: w, geometry: g, weight: weight, bias: bias,
                           output: &out, scratch: s, accumulate: accumulate)
        }
        var worst = 0.0
        for co in 0..<g.outChannels {
            for y in 0..<oh {
                for x in 0..<ow {
                    var acc = Double(bias[co]) + (accumulate ? 0.5 : 0)
                    for ci in 0..<g.inChannels {
                        for ky in 0..<g.kernel {
                            for kx in 0..<g.kernel {
                                let iy = y * g.stride - g.padding + ky, ix = x * g.stride - g.padding + kx
                                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                                acc += Double(weight[((co * g.inChannels + ci) * g.kernel + ky) * g.kernel + kx])
                                    * Double(input[(ci * h + iy) * w + ix])
                            }
                        }
                    }
                    let got = Double(out[(co * oh + y) * ow + x])
                    worst = got.isNaN ? .infinity : max(worst, abs(acc - got))
                }
            }
        }
        #expect(worst < 1e-5, "max |Δ| \(worst)")
    }

    /// A large common offset is where a single-pass E[x²] − E[x]² variance falls apart.
    @Test func groupNormIsAccurateWithLargeMean() {
        var rng = Rng(state: 2)
        let c = 64, s = 1000, groups = 32
        let input = rng.array(c * s).map { 1000 + $0 * 0.01 }
        let weight = rng.array(c), bias = rng.array(c)
        var out = [Float](repeating: 0, count: c * s)
        Normalization.groupNorm(input, channels: c, spatial: s, groups: groups, eps: 1e-6,
                                weight: weight, bias: bias, output: &out, silu: false)
        var worst = 0.0
        let per = c / groups * s
        for g in 0..<groups {
            let xs = input[(g * per)..<((g + 1) * per)].map(Double.init)
            let mean = xs.reduce(0, +) / Double(per)
            let variance = xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(per)
            for i in 0..<per {
                let ch = (g * per + i) / s
                let want = (xs[i] - mean) / (variance + 1e-6).squareRoot() * Double(weight[ch]) + Double(bias[ch])
                worst = max(worst, abs(want - Double(out[g * per + i])))
            }
        }
        #expect(worst < 1e-4, "max |Δ| \(worst)")
    }

    @Test func groupNormWithSiLUMatchesScalar() {
        var rng = Rng(state: 3)
        let c = 32, s = 256
        let input = rng.array(c * s).map { $0 * 5 }
        let weight = rng.array(c), bias = rng.array(c)
        var fused = [Float](repeating: 0, count: c * s)
        var plain = [Float](repeating: 0, count: c * s)
        Normalization.groupNorm(input, channels: c, spatial: s, groups: 32, eps: 1e-6, weight: weight, bias: bias,
                                output: &fused, silu: true)
        Normalization.groupNorm(input, channels: c, spatial: s, groups: 32, eps: 1e-6, weight: weight, bias: bias,
                                output: &plain, silu: false)
        for i in 0..<(c * s) {
            let want = Activation.silu(plain[i])
            #expect(abs(fused[i] - want) <= 4e-7 * max(1, abs(want)), "element \(i)")
        }
    }

    @Test func vectorExpIsWithinAFewUlp() {
        var worst: Float = 0
        var x: Float = -87
        while x < 88 {
            let got = Activation.exp(SIMD16<Float>(repeating: x))[0]
            let want = Foundation.exp(Double(x))
            worst = max(worst, Float(abs(Double(got) - want) / want))
            x += 0.0173
        }
        #expect(worst < 4e-7, "max relative error \(worst)")
        #expect(Activation.silu(SIMD16<Float>(repeating: -200))[0] == 0)
    }

    @Test func vectorErfIsWithinAboutOneUlp() {
        var worst = 0.0
        var x: Float = -6
        while x < 6 {
            let got = Double(Activation.erf(SIMD16<Float>(repeating: x))[0])
            let want = Foundation.erf(Double(x))
            worst = max(worst, abs(got - want) / Double(Float(abs(want)).ulp))
            x += 0.000731
        }
        #expect(worst < 1.5, "max error \(worst) ulp")
        #expect(Activation.erf(SIMD16<Float>(repeating: 0))[0] == 0)
        #expect(Activation.erf(SIMD16<Float>(repeating: 50))[0] == 1)
        #expect(Activation.erf(SIMD16<Float>(repeating: -50))[0] == -1)
    }

    @Test func geluInPlaceMatchesTheFormula() {
        var rng = Rng(state: 8)
        let values = rng.array(16 * 7 + 5).map { $0 * 8 }
        var got = values
        Activation.gelu(&got, count: got.count)
        for (t, g) in zip(values, got) {
            let want = 0.5 * Double(t) * (1 + Foundation.erf(Double(t) / 2.0.squareRoot()))
            #expect(abs(Double(g) - want) <= 4e-7 * max(1, abs(want)), "gelu(\(t))")
            #expect(g == Activation.gelu(SIMD16<Float>(repeating: t))[0])
        }
    }

    @Test func attentionMatchesNaive() {
        var rng = Rng(state: 4)
        let t = 9, c = 8, heads = 2, d = c / heads
        let qkv = rng.array(t * 3 * c)
        let logSizes = (0..<t).map { Float(Foundation.log(Double($0 % 3 + 1))) }
        var out = [Float](repeating: 0, count: t * c)
        var scores = [Float](repeating: 0, count: Attention.scratchCount(tokens: t))
        scores.withUnsafeMutableBufferPointer { s in
            Attention.forward(qkv: qkv, tokens: t, width: c, heads: heads, logSizes: logSizes, output: &out,
                              scores: s)
        }
        for h in 0..<heads {
            for i in 0..<t {
                var logits = (0..<t).map { j -> Double in
                    var dot = 0.0
                    for k in 0..<d { dot += Double(qkv[i * 3 * c + h * d + k]) * Double(qkv[j * 3 * c + c + h * d + k]) }
                    return dot / Double(d).squareRoot() + Double(logSizes[j])
                }
                let mx = logits.max()!
                logits = logits.map { Foundation.exp($0 - mx) }
                let total = logits.reduce(0, +)
                for k in 0..<d {
                    var o = 0.0
                    for j in 0..<t { o += logits[j] / total * Double(qkv[j * 3 * c + 2 * c + h * d + k]) }
                    #expect(abs(o - Double(out[i * c + h * d + k])) < 1e-5)
                }
            }
        }
    }

    /// Tiles and heads run concurrently (one lane each, single-threaded sgemm) or one after the
    /// other (each product cut over the lanes): the bytes must not differ.
    @Test(arguments: geometries)
    func convolutionBytesDoNotDependOnLanes(_ g: ConvGeometry) {
        var rng = Rng(state: 5)
        let h = 40, w = 40
        let input = rng.array(g.inChannels * h * w)
        let weight = rng.array(g.outChannels * g.inChannels * g.kernel * g.kernel)
        let bias = rng.array(g.outChannels)
        let count = g.outChannels * g.outputSide(h) * g.outputSide(w)
        func run(threads: Int, lanes: Int) -> [Float] {
            var out = [Float](repeating: 0.25, count: count)
            var scratch = [Float](repeating: .nan, count: Conv2D.scratchCount(g, height: h, width: w, lanes: lanes))
            Parallel.withThreadCount(threads) {
                scratch.withUnsafeMutableBufferPointer { s in
                    Conv2D.forward(input, height: h, width: w, geometry: g, weight: weight, bias: bias,
                                   output: &out, scratch: s, accumulate: true)
                }
            }
            return out
        }
        let reference = run(threads: 1, lanes: 1)
        #expect(run(threads: 2, lanes: 1) == reference)
        #expect(run(threads: 2, lanes: 2) == reference)
        #expect(run(threads: 3, lanes: 3) == reference)
    }

    @Test func attentionBytesDoNotDependOnLanes() {
        var rng = Rng(state: 6)
        let t = 37, c = 64, heads = 4
        let qkv = rng.array(t * 3 * c)
        let logSizes = (0..<t).map { Float(Foundation.log(Double($0 % 4 + 1))) }
        func run(threads: Int, lanes: Int) -> [Float] {
            var out = [Float](repeating: 0, count: t * c)
            var scores = [Float](repeating: .nan, count: Attention.scratchCount(tokens: t, lanes: lanes))
            Parallel.withThreadCount(threads) {
                scores.withUnsafeMutableBufferPointer { s in
                    Attention.forward(qkv: qkv, tokens: t, width: c, heads: heads, logSizes: logSizes,
                                      output: &out, scores: s)
                }
            }
            return out
        }
        let reference = run(threads: 1, lanes: 1)
        #expect(run(threads: 2, lanes: 1) == reference)
        #expect(run(threads: 2, lanes: 2) == reference)
    }

    /// ``Parallel/sgemm`` gives the same bytes for every thread count and inside a lane (where it
    /// runs its blocks in order), for the encoder's shapes (cut in halves, and whole below the
    /// limit) and every transpose combination; and it agrees with a binary64 product.
    @Test(arguments: [(257, 1536, 512), (257, 512, 2048), (512, 256, 4608), (256, 1024, 384),
                      (129, 128, 64), (144, 18, 512), (200, 64, 700)],
          [MatrixTranspose.none, .transposed])
    func productBytesDoNotDependOnThreads(_ shape: (Int, Int, Int), _ transA: MatrixTranspose) {
        let (m, n, k) = shape
        var rng = Rng(state: 7)
        let a = rng.array(m * k), b = rng.array(k * n), c0 = rng.array(m * n)
        let lda = transA == .none ? k : m
        for transB in [MatrixTranspose.none, .transposed] {
            let ldb = transB == .none ? n : k
            for beta: Float in [0, 1] {
                func product(threads: Int, insideLane: Bool = false) -> [Float] {
                    var c = c0
                    Parallel.withThreadCount(threads) {
                        c.withUnsafeMutableBufferPointer { out in
                            let box = UncheckedBox(out.baseAddress!)
                            Parallel.forEach(insideLane ? 2 : 1, lanes: 2) { item, _ in
                                guard item == 0 else { return }
                                Parallel.sgemm(transA, transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb,
                                               beta: beta, c: box.value, ldc: n)
                            }
                        }
                    }
                    return c
                }
                let reference = product(threads: 1)
                let label = "\(m)×\(n)×\(k) \(transA) \(transB) beta \(beta) on \(BLAS.kernel)"
                for threads in [2, 3] { #expect(product(threads: threads) == reference, "\(label) threads \(threads)") }
                #expect(product(threads: 2, insideLane: true) == reference, "\(label) inside a lane")
                // Spot-check rows against binary64 (the product is exact to within k float roundings).
                var worst = 0.0
                for i in stride(from: 0, to: m, by: max(1, m / 7)) {
                    for j in stride(from: 0, to: n, by: max(1, n / 7)) {
                        var acc = Double(beta) * Double(c0[i * n + j])
                        for p in 0..<k {
                            let x = transA == .none ? a[i * k + p] : a[p * m + i]
                            let y = transB == .none ? b[p * n + j] : b[j * k + p]
                            acc += Double(x) * Double(y)
                        }
                        worst = max(worst, abs(acc - Double(reference[i * n + j])))
                    }
                }
                #expect(worst < 1e-5 * Double(k), "\(label): max |Δ| \(worst)")
            }
        }
    }

    /// Blocks cover the side once, in order, cut at a multiple of 16, and only large products are cut.
    @Test func productBlocksDependOnTheShapeOnly() {
        #expect(Parallel.productBlocks(m: 257, n: 1536, k: 512) == [0..<768, 768..<1536])
        #expect(Parallel.productBlocks(m: 1000, n: 256, k: 4608) == [0..<512, 512..<1000])
        #expect(Parallel.productBlocks(m: 129, n: 128, k: 64) == [0..<129])
        #expect(Parallel.productBlocks(m: 40, n: 100_000, k: 100) == [0..<50_000, 50_000..<100_000])
        #expect(Parallel.productBlocks(m: 48, n: 2048, k: 64) == [0..<2048])  // 6.3 M multiply-adds: whole
    }

    @Test func lanesAreOneInsideALane() {
        Parallel.withThreadCount(2) {
            #expect(Parallel.lanes == 2)
            let seen = Mutex<[Int]>([])
            Parallel.forEach(4) { _, _ in
                let lanes = Parallel.lanes
                seen.withLock { $0.append(lanes) }
            }
            #expect(seen.withLock { $0 } == [1, 1, 1, 1])
            #expect(Parallel.lanes == 2)
        }
    }

    /// `mtok` stops OpenBLAS's pool at start; products afterwards run on the calling thread
    /// with the same bytes.
    @Test func productsAfterStoppingIdleThreadsAreUnchanged() {
        let n = 384
        let a = (0..<(n * n)).map { Float(($0 * 7919) % 1009) / 1009 - 0.5 }
        let b = (0..<(n * n)).map { Float(($0 * 104_729) % 997) / 997 - 0.5 }
        func product() -> [Float] {
            var c = [Float](repeating: 0, count: n * n)
            BLAS.sgemm(.none, .none, m: n, n: n, k: n, a: a, lda: n, b: b, ldb: n, c: &c, ldc: n)
            return c
        }
        let before = product()
        BLAS.stopIdleThreads()
        #expect(product() == before)
    }

    @Test func kernelIsNamed() {
        #expect(BLAS.kernel.library == "OpenBLAS")
        #expect(BLAS.kernel.version.first?.isNumber == true, "version \(BLAS.kernel.version)")
        #expect(!BLAS.kernel.core.isEmpty)
        // Set by KernelFamilyTests when it runs this suite under a forced kernel set: proves the
        // child really computed with it (OpenBLAS ignores a name it does not know).
        if let expected = ProcessInfo.processInfo.environment["MTOK_EXPECT_KERNEL"] {
            #expect(BLAS.kernel.core == expected)
        }
    }

    /// Everything inside one turn: other suites run in parallel and take their own turns with
    /// other counts, so a count read outside a turn may be theirs.
    @Test func threadCountIsSettable() {
        Parallel.withThreadCount(3) {
            #expect(Parallel.threadCount == 3)
            Parallel.setThreadCount(1)
            #expect(Parallel.threadCount == 1)
            Parallel.setThreadCount(2)
            #expect(Parallel.threadCount == 2)
        }
    }
}
