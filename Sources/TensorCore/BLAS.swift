internal import COpenBLAS
import Foundation
import Synchronization

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
    /// The configured thread count: what GEMM calls use outside the encoder's single-threaded
    /// sections (during one, OpenBLAS runs at 1 and this is the count it returns to afterwards).
    public static var threadCount: Int {
        singleThreaded.withLock { state in Int(state.depth > 0 ? state.saved : openblas_get_num_threads()) }
    }

    /// Sets the OpenBLAS worker-thread count for the whole process (`openblas_set_num_threads`).
    ///
    /// A fixed count keeps results reproducible: OpenBLAS partitions each product over its threads
    /// without changing the reduction order along `k`, but the guarantee this project tests is
    /// "same bytes for the same configuration", and the thread count is part of it.
    public static func setThreadCount(_ count: Int) {
        precondition(count >= 1, "thread count must be at least 1")
        singleThreaded.withLock { state in
            if state.depth > 0 {
                state.saved = Int32(count)  // applied when the single-threaded sections end
            } else {
                openblas_set_num_threads(Int32(count))
            }
        }
    }

    /// Runs `body` with the thread count set to `count`, then restores it. Callers of this
    /// function take turns, so concurrent tests that each need their own count do not mix them.
    public static func withThreadCount<R>(_ count: Int, _ body: () throws -> R) rethrows -> R {
        turns.lock()
        defer { turns.unlock() }
        let before = threadCount
        setThreadCount(count)
        defer { setThreadCount(before) }
        return try body()
    }

    private static let turns = NSLock()

    /// Open single-threaded sections and the thread count to restore when the last one ends.
    private static let singleThreaded = Mutex<(depth: Int, saved: Int32)>((0, 1))

    /// Runs `body` with OpenBLAS at one thread, then restores the count; see
    /// ``Parallel/forEach(_:lanes:_:)``. Sections may overlap (several encoders in one process):
    /// the count stays 1 until the last one ends, which costs speed, never bytes.
    static func withSingleThreadedCalls<R>(_ body: () throws -> R) rethrows -> R {
        singleThreaded.withLock { state in
            if state.depth == 0 {
                state.saved = openblas_get_num_threads()
                openblas_set_num_threads(1)
            }
            state.depth += 1
        }
        defer {
            singleThreaded.withLock { state in
                state.depth -= 1
                if state.depth == 0 { openblas_set_num_threads(state.saved) }
            }
        }
        return try body()
    }

    /// Stops OpenBLAS's idle worker threads; returns whether this OpenBLAS build can (its
    /// pthreads server exports `blas_thread_shutdown_`; OpenMP builds do not and keep theirs).
    ///
    /// OpenBLAS starts its pool when the library loads, and each worker then spins on
    /// `sched_yield` for about 0.1 s before it sleeps: in a process that never hands OpenBLAS a
    /// threaded product (every `mtok` reader command, and the encoder's single-threaded lanes)
    /// that is a tenth of a core-second of pure waste, taken from the threads doing the work. The
    /// next product that wants several threads starts the pool again.
    @discardableResult
    public static func stopIdleThreads() -> Bool {
        typealias Shutdown = @convention(c) () -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "blas_thread_shutdown_") else { return false }
        _ = unsafeBitCast(symbol, to: Shutdown.self)()
        return true
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
