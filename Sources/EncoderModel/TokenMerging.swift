import TensorCore

/// One layer of ToMe bipartite soft matching and size-weighted merging (spec §3.2–3.4).
enum TokenMerging {
    /// Merges `r` tokens of `x` (`[t × c]`) in place and returns the old → new position map.
    ///
    /// - Parameters:
    ///   - metric: `[t × d]` mean-over-heads key vectors; normalised here (destroyed).
    ///   - sizes: token sizes, updated in place (length becomes `t − r`).
    ///   - scores: scratch of `⌈t/2⌉·⌊t/2⌋` floats.
    ///   - merged: scratch of `t × c` floats; receives nothing the caller reads.
    /// - Returns: nil if a metric vector has zero norm.
    static func merge(
        x: UnsafeMutablePointer<Float>, tokens t: Int, width c: Int,
        metric: UnsafeMutablePointer<Float>, metricWidth d: Int, r: Int,
        sizes: inout [Float], scores: UnsafeMutablePointer<Float>, merged: UnsafeMutablePointer<Float>
    ) -> [Int]? {
        // 1. n_i = μ_i / ‖μ_i‖ (no epsilon; a zero norm is an error).
        for i in 0..<t {
            let row = metric + i * d
            var sq: Float = 0
            for k in 0..<d { sq += row[k] * row[k] }
            let norm = sq.squareRoot()
            if !(norm > 0) { return nil }
            for k in 0..<d { row[k] /= norm }
        }
        // 2–3. A = even positions, B = odd positions; S = n_A n_Bᵀ via strided operands.
        let na = (t + 1) / 2, nb = t / 2
        Parallel.sgemm(.none, .transposed, m: na, n: nb, k: d,
                       a: metric, lda: 2 * d, b: metric + d, ldb: 2 * d, c: scores, ldc: nb)
        // 4. Best partner per A row: first maximum (lowest b); the cls row (a = 0) scores −∞.
        var best = [Int](repeating: 0, count: na)
        var val = [Float](repeating: -.infinity, count: na)
        for a in 1..<na {
            let row = scores + a * nb
            var bi = 0
            var bv = row[0]
            for b in 1..<nb where row[b] > bv {
                bv = row[b]
                bi = b
            }
            if bv.isNaN { return nil }
            best[a] = bi
            val[a] = bv
        }
        // 5. Stable descending order by val: ties keep a ascending (spec §3.5).
        let order = (0..<na).sorted { val[$0] != val[$1] ? val[$0] > val[$1] : $0 < $1 }
        let src = Array(order[0..<r])
        let unm = order[r...].sorted()
        let nUnm = na - r
        // 6. Old → new map.
        var map = [Int](repeating: 0, count: t)
        for (rank, a) in unm.enumerated() { map[2 * a] = rank }
        for b in 0..<nb { map[2 * b + 1] = nUnm + b }
        for a in src { map[2 * a] = nUnm + best[a] }
        // Size-weighted average, as the reference computes it: every row becomes (Σ s·x) / Σ s,
        // B rows accumulate their src rows in src order (descending score).
        let newT = t - r
        var newSizes = [Float](repeating: 0, count: newT)
        for (rank, a) in unm.enumerated() {
            let s = sizes[2 * a]
            let from = x + 2 * a * c, to = merged + rank * c
            for k in 0..<c { to[k] = s * from[k] }
            newSizes[rank] = s
        }
        for b in 0..<nb {
            let s = sizes[2 * b + 1]
            let from = x + (2 * b + 1) * c, to = merged + (nUnm + b) * c
            for k in 0..<c { to[k] = s * from[k] }
            newSizes[nUnm + b] = s
        }
        for a in src {
            let s = sizes[2 * a]
            let from = x + 2 * a * c, to = merged + (nUnm + best[a]) * c
            for k in 0..<c { to[k] += s * from[k] }
            newSizes[nUnm + best[a]] += s
        }
        for n in 0..<newT {
            let s = newSizes[n]
            let from = merged + n * c, to = x + n * c
            for k in 0..<c { to[k] = from[k] / s }
        }
        sizes = newSizes
        return map
    }
}
