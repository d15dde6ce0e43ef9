import Foundation

/// Multi-head self-attention with the proportional (log-size) key bias, on sgemm.
public enum Attention {
    /// Scratch floats needed for `tokens` rows with `lanes` heads at once (default: the caller's
    /// ``Parallel/lanes``).
    public static func scratchCount(tokens: Int, lanes: Int = Parallel.lanes) -> Int {
        tokens * tokens * max(lanes, 1)
    }

    /// For each head h: `O_h = softmax(Q_h K_hᵀ / √D + ln s_j) V_h`.
    ///
    /// Heads are independent and their products small, so with several lanes (and scratch for
    /// them) each lane takes whole heads, softmax included, with single-threaded sgemm.
    ///
    /// - Parameters:
    ///   - qkv: `[tokens × 3C]`, columns `part·C + h·D + d` (part 0 q, 1 k, 2 v).
    ///   - logSizes: `[tokens]`, `ln(s_j)` per key token, or nil when every size is 1.
    ///   - output: `[tokens × C]`, heads concatenated (`h·D + d`).
    ///   - scores: at least ``scratchCount(tokens:lanes:)`` floats for one lane.
    public static func forward(
        qkv: UnsafePointer<Float>, tokens t: Int, width c: Int, heads: Int,
        logSizes: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>,
        scores: UnsafeMutableBufferPointer<Float>
    ) {
        let d = c / heads
        let scale = 1 / Float(d).squareRoot()
        precondition(scores.count >= t * t, "Attention needs tokens² scratch floats")
        let lanes = scores.count / max(t * t, 1)
        let box = UncheckedBox((output, scores.baseAddress!))
        Parallel.forEach(heads, lanes: lanes) { h, lane in
            let (output, base) = box.value
            let scores = base + lane * t * t
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
