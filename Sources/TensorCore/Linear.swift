/// Fully connected layer on row-major activations: `Y[rows × out] = X[rows × in]·Wᵀ + b`.
public enum Linear {
    /// - Parameters:
    ///   - weight: `[outFeatures, inFeatures]` (PyTorch's layout).
    ///   - bias: `[outFeatures]` or nil.
    public static func forward(
        _ input: UnsafePointer<Float>, rows: Int, inFeatures: Int, outFeatures: Int,
        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        output: UnsafeMutablePointer<Float>
    ) {
        Parallel.sgemm(.none, .transposed, m: rows, n: outFeatures, k: inFeatures,
                       a: input, lda: inFeatures, b: weight, ldb: inFeatures,
                       c: output, ldc: outFeatures)
        guard let bias else { return }
        let out = UncheckedBox(output)
        Parallel.chunks(rows, minimumChunk: 16) { range in
            for r in range {
                let row = out.value + r * outFeatures
                for o in 0..<outFeatures { row[o] += bias[o] }
            }
        }
    }
}
