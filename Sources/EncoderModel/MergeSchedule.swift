/// The per-layer ToMe merge counts (spec §3.1).
public struct MergeSchedule: Sendable, Hashable {
    /// Base rate r* (or `merge_ratio` when set).
    public let baseRate: Int
    /// Configured r_ℓ after the remainder fix on layer 0.
    public let planned: [Int]
    /// r_ℓ after the run-time clamp `min(r_ℓ, (T − 1) div 2)`; ≤ 0 means no merge.
    public let effective: [Int]
    /// Tokens entering each layer's attention, class token included.
    public let tokensIn: [Int]

    public init(tokens n: Int, merge m: Int, layers l: Int, mergeRatio: Int? = nil) {
        precondition(l >= 2, "the schedule divides by L − 1")
        let base = mergeRatio ?? Self.baseRate(layers: l, merge: m)
        var r = Self.sched(layers: l, rate: base)
        r[0] += m - r.reduce(0, +)
        var t = n + 1
        var eff: [Int] = []
        var tin: [Int] = []
        for rl in r {
            tin.append(t)
            let e = min(rl, (t - 1) / 2)
            eff.append(e)
            if e > 0 { t -= e }
        }
        baseRate = base
        planned = r
        effective = eff.map { max($0, 0) }
        tokensIn = tin
    }

    public init(config: EncoderConfig) {
        self.init(tokens: config.tokenCount, merge: config.mergeNum, layers: config.numAttBlocks,
                  mergeRatio: config.mergeRatio)
    }

    /// `lo = trunc(1.5r)`, `hi = 2r − lo`, `r_ℓ = trunc(lo + ℓ·(hi − lo)/(L − 1))`, in binary64.
    public static func sched(layers l: Int, rate r: Int) -> [Int] {
        let lo = Int((Double(r) * 1.5).rounded(.towardZero))
        let hi = 2 * r - lo
        let delta = Double(hi - lo) / Double(l - 1)
        return (0..<l).map { Int((Double(lo) + delta * Double($0)).rounded(.towardZero)) }
    }

    /// The i whose schedule sum is closest to M, the earliest on equal gaps, stopping once it grows.
    public static func baseRate(layers l: Int, merge m: Int) -> Int {
        var best = 0
        var gap = Int.max
        for i in 0..<max(m, 0) {
            let g = abs(sched(layers: l, rate: i).reduce(0, +) - m)
            if g < gap {
                best = i
                gap = g
            } else if g > gap {
                break
            }
        }
        return best
    }
}
