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
        for g in 0..<groups {
            let base = g * per * spatial
            var sum = 0.0
            for i in 0..<count { sum += Double(input[base + i]) }
            let mean = sum / Double(count)
            var sq = 0.0
            for i in 0..<count {
                let d = Double(input[base + i]) - mean
                sq += d * d
            }
            let rstd = 1.0 / (sq / Double(count) + Double(eps)).squareRoot()
            for c in g * per..<(g + 1) * per {
                let scale = Float(rstd) * weight[c]
                let shift = bias[c] - Float(mean * rstd) * weight[c]
                let src = input + c * spatial
                let dst = output + c * spatial
                if silu {
                    for i in 0..<spatial { dst[i] = Activation.silu(src[i] * scale + shift) }
                } else {
                    for i in 0..<spatial { dst[i] = src[i] * scale + shift }
                }
            }
        }
    }

    /// LayerNorm over the last axis of `[rows × width]` (biased variance). `output` may alias `input`.
    public static func layerNorm(
        _ input: UnsafePointer<Float>, rows: Int, width: Int, eps: Float,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
        output: UnsafeMutablePointer<Float>
    ) {
        for r in 0..<rows {
            let src = input + r * width
            let dst = output + r * width
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
                dst[i] = Float((Double(src[i]) - mean) * rstd) * weight[i] + bias[i]
            }
        }
    }
}
