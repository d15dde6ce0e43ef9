internal import COpenBLAS
import Foundation

/// Whether a GEMM operand is read as stored or transposed.
public enum MatrixTranspose: Sendable {
    case none
    case transposed
}

/// The one place TensorCore calls OpenBLAS.
///
/// Every matrix product in the encoder goes through ``sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``
/// (row-major, `C = alpha·op(A)·op(B) + beta·C`), and OpenBLAS always runs it on the calling
/// thread. OpenBLAS cuts a threaded product at points that depend on its thread count, and some
/// of its kernels (Haswell's, Zen's) round an element differently depending on where such a cut
/// puts it in their register tiles; so the encoder never lets OpenBLAS choose a partition and
/// does its own, from the shapes alone (``Parallel``).
public enum BLAS {
    /// OpenBLAS at one thread for the whole process, set before the first product.
    private static let oneThread: Void = { openblas_set_num_threads(1) }()

    /// Stops OpenBLAS's idle worker threads; returns whether this OpenBLAS build can (its
    /// pthreads server exports `blas_thread_shutdown_`; OpenMP builds do not and keep theirs).
    ///
    /// OpenBLAS starts its pool when the library loads, and each worker then spins on
    /// `sched_yield` for about 0.1 s before it sleeps: a tenth of a core-second of pure waste in
    /// a process that never hands OpenBLAS a threaded product, which is every `mtok` process.
    @discardableResult
    public static func stopIdleThreads() -> Bool {
        _ = oneThread
        typealias Shutdown = @convention(c) () -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "blas_thread_shutdown_") else { return false }
        _ = unsafeBitCast(symbol, to: Shutdown.self)()
        return true
    }

    /// The OpenBLAS build and the kernel set it chose for this CPU (or the one forced by
    /// `OPENBLAS_CORETYPE`): what decides the last bits of every product.
    public static let kernel: Kernel = {
        let config = String(cString: openblas_get_config())
        // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"
        let words = config.split(separator: " ")
        let version = words.count > 1 && words[0] == "OpenBLAS" ? String(words[1]) : config
        return Kernel(library: "OpenBLAS", version: version, core: String(cString: openblas_get_corename()))
    }()

    /// Which BLAS computed the products: library, version and core (kernel set) name.
    public struct Kernel: Sendable, Hashable, CustomStringConvertible {
        public let library: String
        public let version: String
        public let core: String
        public var description: String { "\(library) \(version) \(core)" }
    }

    /// Row-major single-precision GEMM, `C[m×n] = alpha·op(A)[m×k]·op(B)[k×n] + beta·C`
    /// (`cblas_sgemm`), on the calling thread.
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
        _ = oneThread
        cblas_sgemm(CblasRowMajor,
                    transA == .none ? CblasNoTrans : CblasTrans,
                    transB == .none ? CblasNoTrans : CblasTrans,
                    blasint(m), blasint(n), blasint(k), alpha,
                    a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}
