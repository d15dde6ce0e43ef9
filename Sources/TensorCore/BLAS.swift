internal import COpenBLAS

/// Whether a GEMM operand is read as stored or transposed.
public enum MatrixTranspose: Sendable {
    case none
    case transposed
}

/// The one place TensorCore calls OpenBLAS.
///
/// Every matrix product in the encoder goes through ``sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``
/// (row-major, `C = alpha·op(A)·op(B) + beta·C`). OpenBLAS keeps one process-wide thread pool, so
/// the thread count is a process-wide setting too.
public enum BLAS {
    /// OpenBLAS worker threads used by each GEMM call (`openblas_get_num_threads`).
    public static var threadCount: Int {
        Int(openblas_get_num_threads())
    }

    /// Sets the OpenBLAS worker-thread count for the whole process (`openblas_set_num_threads`).
    ///
    /// A fixed count keeps results reproducible: OpenBLAS partitions each product over its threads
    /// without changing the reduction order along `k`, but the guarantee this project tests is
    /// "same bytes for the same configuration", and the thread count is part of it.
    public static func setThreadCount(_ count: Int) {
        precondition(count >= 1, "thread count must be at least 1")
        openblas_set_num_threads(Int32(count))
    }

    /// Row-major single-precision GEMM, `C[m×n] = alpha·op(A)[m×k]·op(B)[k×n] + beta·C` (`cblas_sgemm`).
    @inlinable
    public static func sgemm(
        _ transA: MatrixTranspose, _ transB: MatrixTranspose,
        m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        _sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }

    @usableFromInline
    static func _sgemm(
        _ transA: MatrixTranspose, _ transB: MatrixTranspose,
        _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int,
        _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float,
        _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        cblas_sgemm(CblasRowMajor,
                    transA == .none ? CblasNoTrans : CblasTrans,
                    transB == .none ? CblasNoTrans : CblasTrans,
                    blasint(m), blasint(n), blasint(k), alpha,
                    a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}
