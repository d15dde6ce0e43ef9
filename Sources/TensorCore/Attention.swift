import Foundation

/// Multi-head self-attention with the proportional (log-size) key bias, on sgemm.
public enum Attention {
    /// Scratch floats needed for `tokens` rows.
    public static func scratchCount(tokens: Int) -> Int { tokens * tokens }

    /// For each head h: `O_h = softmax(Q_h K_hᵀ / √D + ln s_j) V_h`.
    ///
    /// - Parameters:
    ///   - qkv: `[tokens × 3C]`, columns `part·C + h·D + d` (part 0 q, 1 k, 2 v).
    ///   - logSizes: `[tokens]`, `ln(s_j)` per key token, or nil when every size is 1.
    ///   - output: `[tokens × C]`, heads concatenated (`h·D + d`).
    ///   - scores: ``scratchCount(tokens:)`` floats.
    public static func forward(
        qkv: UnsafePointer<Float>, tokens t: Int, width c: Int, heads: Int,
        logSizes: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>,
        scores: UnsafeMutablePointer<Float>
    ) {
        let d = c / heads
        let scale = 1 / Float(d).squareRoot()
        for h in 0..<heads {
            let q = qkv + h * d
            let k = qkv + c + h * d
            let v = qkv + 2 * c + h * d
            BLAS.sgemm(.none, .transposed, m: t, n: t, k: d, alpha: scale,
                       a: q, lda: 3 * c, b: k, ldb: 3 * c, c: scores, ldc: t)
            for i in 0..<t {
                let row = scores + i * t
                if let logSizes {
                    for j in 0..<t { row[j] += logSizes[j] }
                }
                softmaxInPlace(row, count: t)
            }
            BLAS.sgemm(.none, .none, m: t, n: d, k: t,
                       a: scores, lda: t, b: v, ldb: 3 * c, c: output + h * d, ldc: c)
        }
    }

    /// Softmax of one row: subtract the max, exponentiate, divide by the sum.
    @inlinable
    public static func softmaxInPlace(_ row: UnsafeMutablePointer<Float>, count: Int) {
        var mx = -Float.infinity
        for j in 0..<count { mx = Swift.max(mx, row[j]) }
        var sum: Float = 0
        for j in 0..<count {
            let e = Foundation.exp(row[j] - mx)
            row[j] = e
            sum += e
        }
        // Divide (not multiply by 1/sum) as the reference does, for last-ulp agreement.
        for j in 0..<count { row[j] /= sum }
    }
}
