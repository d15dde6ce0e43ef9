import TensorCore

/// The two quantizers of spec §4.
enum Quantizers {
    /// LFQ index of each `z`-vector: bit c set iff `u_c > 0` (strict; NaN gives 0), channel 0 = LSB.
    static func lfq(_ latents: UnsafePointer<Float>, tokens k: Int, width z: Int, stride: Int) -> [UInt32] {
        (0..<k).map { i in
            var index: UInt32 = 0
            let u = latents + i * stride
            for ch in 0..<z where u[ch] > 0 { index |= 1 << UInt32(ch) }
            return index
        }
    }

    /// Codebook VQ: `argmin_j ‖u‖² + ‖e_j‖² − 2 u·e_j` in fp32, in that term order; first minimum wins.
    static func vq(_ latents: UnsafePointer<Float>, tokens k: Int, width z: Int, stride: Int,
                   codebook: UnsafePointer<Float>, entries n: Int, codebookNorms: [Float]) -> [UInt32] {
        let dots = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
        defer { dots.deallocate() }
        BLAS.sgemm(.none, .transposed, m: k, n: n, k: z,
                   a: latents, lda: stride, b: codebook, ldb: z, c: dots, ldc: n)
        return (0..<k).map { i in
            let u = latents + i * stride
            var uu: Float = 0
            for ch in 0..<z { uu += u[ch] * u[ch] }
            let row = dots + i * n
            var best = 0
            var bestDist = Float.infinity
            for j in 0..<n {
                let dist = (uu + codebookNorms[j]) - 2 * row[j]
                if dist < bestDist {
                    bestDist = dist
                    best = j
                }
            }
            return UInt32(best)
        }
    }

    static func squaredNorms(_ codebook: UnsafePointer<Float>, entries n: Int, width z: Int) -> [Float] {
        (0..<n).map { j in
            var s: Float = 0
            for ch in 0..<z { s += codebook[j * z + ch] * codebook[j * z + ch] }
            return s
        }
    }
}
