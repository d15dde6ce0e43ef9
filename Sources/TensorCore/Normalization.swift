import Foundation

/// GroupNorm and LayerNorm with statistics accumulated in `Double`.
///
/// Two passes (mean, then the mean of squared deviations) in binary64 keep the variance accurate
/// even for groups of 2^21 values with a large mean; the single-pass E[x²] − E[x]² form loses
/// digits exactly there. Each statistic is summed in one fixed order per image.
public enum Normalization {
    /// GroupNorm over one image `[channels × spatial]`, optionally followed by SiLU.
    ///
    /// Group `g` covers channels `[g·c/groups, (g+1)·c/groups)` × all positions; biased variance;
    /// `y = (x − μ)/√(σ² + eps)·w_c + b_c`. `output` may alias `input`.
    public static func groupNorm(
        _ input: UnsafePointer<Float>, channels: Int, spatial: Int, groups: Int, eps: Float,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
        output: UnsafeMutablePointer<Float>, silu: Bool
    ) {
        precondition(channels % groups == 0, "GroupNorm: \(channels) channels not divisible by \(groups)")
        let per = channels / groups
        let count = per * spatial
        var meanRstd = [Double](repeating: 0, count: 2 * groups)
        meanRstd.withUnsafeMutableBufferPointer { stats in
            let out = UncheckedBox(stats.baseAddress!)
            Parallel.chunks(groups) { range in
                for g in range {
                    let x = input + g * count
                    // Sum deviations from the first value: x − x₀ is exact near the data's level,
                    // so float partial sums see the spread, not a large common offset.
                    let origin = x[0]
                    let mean = Double(origin) + sumOfDeviations(x, count: count, from: origin) / Double(count)
                    let sq = sumOfSquaredDeviations(x, count: count, mean: mean)
                    out.value[2 * g] = mean
                    out.value[2 * g + 1] = 1.0 / (sq / Double(count) + Double(eps)).squareRoot()
                }
            }
        }
        let stats = UncheckedBox(meanRstd)
        let dst = UncheckedBox(output)
        Parallel.chunks(channels) { range in
            for c in range {
                let g = c / per
                let mean = stats.value[2 * g], rstd = stats.value[2 * g + 1]
                // y = ((x − m) − δ)·(rstd·w) + b with m = mean rounded to float and δ its residual:
                // x − m is exact for x near the mean, so a large common offset costs no digits
                // (the folded x·scale + shift form cancels catastrophically there).
                let m = Float(mean)
                let delta = Float(mean - Double(m))
                let scale = Float(rstd) * weight[c]
                let shift = bias[c]
                let src = input + c * spatial
                let d = dst.value + c * spatial
                let mv = SIMD16<Float>(repeating: m), dv = SIMD16<Float>(repeating: delta)
                let sv = SIMD16<Float>(repeating: scale), bv = SIMD16<Float>(repeating: shift)
                // 16 lanes at a time; the tail goes through the same vector code in one lane so
                // every element gets identical arithmetic wherever it sits.
                @inline(__always) func normalize(_ v: SIMD16<Float>) -> SIMD16<Float> { ((v - mv) - dv) * sv + bv }
                if silu {
                    var i = 0
                    while i + 16 <= spatial {
                        let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self)
                        UnsafeMutableRawPointer(d + i).storeBytes(of: Activation.silu(normalize(v)),
                                                                  as: SIMD16<Float>.self)
                        i += 16
                    }
                    while i < spatial {
                        d[i] = Activation.silu(normalize(SIMD16<Float>(repeating: src[i])))[0]
                        i += 1
                    }
                } else {
                    for i in 0..<spatial { d[i] = normalize(SIMD16<Float>(repeating: src[i]))[0] }
                }
            }
        }
    }

    /// Values per binary32 partial sum: short runs keep float error ~1e-6 relative before each run
    /// is added into a binary64 total; 16 independent lanes let the loop vectorise.
    static let run = 256

    /// Σ f(x) in a fixed order: 16-lane float partial sums of `lane` over runs of ``run`` values,
    /// the run's leftover values through `tail` in Double, each run totalled in Double. Both sums
    /// below use it, so they share one summation order.
    @inline(__always)
    static func runSum(_ x: UnsafePointer<Float>, count: Int, lane: (SIMD16<Float>) -> SIMD16<Float>,
                       tail: (Float) -> Double) -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let n = min(run, count - i)
            var lanes = SIMD16<Float>()
            var j = 0
            while j + 16 <= n {
                lanes += lane(UnsafeRawPointer(x + i + j).loadUnaligned(as: SIMD16<Float>.self))
                j += 16
            }
            var partial = Double(lanes.sum())
            while j < n {
                partial += tail(x[i + j])
                j += 1
            }
            total += partial
            i += n
        }
        return total
    }

    /// Σ (x − origin), with ``runSum(_:count:lane:tail:)``'s order and precision.
    static func sumOfDeviations(_ x: UnsafePointer<Float>, count: Int, from origin: Float) -> Double {
        let ov = SIMD16<Float>(repeating: origin)
        return runSum(x, count: count, lane: { $0 - ov }, tail: { Double($0) - Double(origin) })
    }

    /// Σ (x − mean)², with ``runSum(_:count:lane:tail:)``'s order and precision.
    static func sumOfSquaredDeviations(_ x: UnsafePointer<Float>, count: Int, mean: Double) -> Double {
        let m = Float(mean)
        let mv = SIMD16<Float>(repeating: m)
        let total = runSum(x, count: count, lane: { let d = $0 - mv; return d * d },
                           tail: { let d = Double($0) - mean; return d * d })
        // The deviations were taken from the float-rounded mean; correct to the exact mean:
        // Σ(x − μ)² = Σ(x − m)² − n(m − μ)².
        let shift = Double(m) - mean
        return max(total - Double(count) * shift * shift, 0)
    }

    /// LayerNorm over the last axis of `[rows × width]` (biased variance). `output` may alias `input`.
    public static func layerNorm(
        _ input: UnsafePointer<Float>, rows: Int, width: Int, eps: Float,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
        output: UnsafeMutablePointer<Float>
    ) {
        let dst = UncheckedBox(output)
        Parallel.chunks(rows, minimumChunk: 16) { range in
            for r in range {
                let src = input + r * width
                let out = dst.value + r * width
                var sum = 0.0
                for i in 0..<width { sum += Double(src[i]) }
                let mean = sum / Double(width)
                var sq = 0.0
                for i in 0..<width {
                    let d = Double(src[i]) - mean
                    sq += d * d
                }
                let rstd = 1.0 / (sq / Double(width) + Double(eps)).squareRoot()
                for i in 0..<width {
                    out[i] = Float((Double(src[i]) - mean) * rstd) * weight[i] + bias[i]
                }
            }
        }
    }
}
