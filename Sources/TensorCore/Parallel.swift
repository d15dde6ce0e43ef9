import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Work splitting over the configured thread count (``BLAS/threadCount``).
///
/// Every index is computed by exactly one task with the same arithmetic whatever the split, so
/// results never depend on the thread count; only the wall time does.
public enum Parallel {
    /// Threads the caller may use: the configured count, or 1 inside a ``forEach(_:lanes:_:)`` lane.
    public static var lanes: Int { pthread_getspecific(insideLane) != nil ? 1 : BLAS.threadCount }

    /// Runs `body(range)` over `0..<count` cut into at most ``lanes`` contiguous chunks.
    public static func chunks(_ count: Int, minimumChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        let tasks = min(lanes, max(1, count / max(minimumChunk, 1)))
        if tasks <= 1 {
            body(0..<count)
            return
        }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedBox(body)
            DispatchQueue.concurrentPerform(iterations: tasks) { t in
                box.value((count * t / tasks)..<(count * (t + 1) / tasks))
            }
        }
    }

    /// Runs `body(item, lane)` once for every item of `0..<count`, on up to `lanes` threads that
    /// claim items one at a time; `lane` (below `lanes`) tells a task which per-lane scratch is its own.
    ///
    /// Independent items (images, convolution tiles, attention heads) are often too small for
    /// OpenBLAS to split well, and the elementwise work between its calls would leave its threads
    /// waiting, so each lane runs whole items with single-threaded sgemm instead. OpenBLAS's thread
    /// count is process-wide: it is 1 while the lanes run and restored afterwards; ``lanes`` is 1
    /// inside a lane, so nested calls stay on it. OpenBLAS computes every element of a product in
    /// the same order whatever its thread count, so the bytes are unchanged.
    public static func forEach(_ count: Int, lanes requested: Int = lanes,
                               _ body: (_ item: Int, _ lane: Int) -> Void) {
        let tasks = min(requested, count, lanes)
        if tasks <= 1 {
            for i in 0..<count { body(i, 0) }
            return
        }
        let next = Atomic<Int>(0)
        BLAS.withSingleThreadedCalls {
            withoutActuallyEscaping(body) { body in
                let box = UncheckedBox(body)
                DispatchQueue.concurrentPerform(iterations: tasks) { lane in
                    let outer = pthread_getspecific(insideLane)
                    pthread_setspecific(insideLane, UnsafeRawPointer(bitPattern: 1))  // any non-nil value
                    defer { pthread_setspecific(insideLane, outer) }
                    while true {
                        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                        if i >= count { break }
                        box.value(i, lane)
                    }
                }
            }
        }
    }

    /// Runs `body` with OpenBLAS at one thread when ``lanes`` > 1 (the work inside splits its
    /// products over the lanes itself, see ``sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``).
    /// OpenBLAS's idle workers spin for a while after each threaded product; when threaded
    /// products alternate with lane sections, that spinning takes a core from the lanes.
    public static func withLaneProducts<R>(_ body: () throws -> R) rethrows -> R {
        if lanes <= 1 { return try body() }
        return try BLAS.withSingleThreadedCalls(body)
    }

    /// ``BLAS/sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)`` with the longer side of C cut in two
    /// (at a multiple of 16), the halves on separate lanes with single-threaded sgemm; with one
    /// lane (inside a lane, or one thread) the product stays whole, saving the second packing of
    /// the operand the halves share.
    ///
    /// The cut never splits the sum along `k`, and it is made only when each half still holds at
    /// least ``splitMinimumMACs`` multiply-adds: below about 100³ OpenBLAS (SkylakeX kernels)
    /// switches to small-matrix kernels that round differently, so with both halves above that,
    /// every element is computed by the same kernel in the same order as in the whole product,
    /// and the bytes do not depend on whether it was cut.
    public static func sgemm(
        _ transA: MatrixTranspose, _ transB: MatrixTranspose,
        m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let byRows = m >= n
        let side = byRows ? m : n
        let blocks = side >= 64 && m * n * k >= 2 * splitMinimumMACs ? 2 : 1
        if blocks == 1 || lanes == 1 {
            BLAS.sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                       beta: beta, c: c, ldc: ldc)
            return
        }
        let step = (side + blocks * 16 - 1) / (blocks * 16) * 16
        let box = UncheckedBox(c)
        forEach(blocks, lanes: blocks) { block, _ in
            let lo = block * step, hi = min(side, lo + step)
            if byRows {
                BLAS.sgemm(transA, transB, m: hi - lo, n: n, k: k, alpha: alpha,
                           a: a + (transA == .none ? lo * lda : lo), lda: lda, b: b, ldb: ldb,
                           beta: beta, c: box.value + lo * ldc, ldc: ldc)
            } else {
                BLAS.sgemm(transA, transB, m: m, n: hi - lo, k: k, alpha: alpha,
                           a: a, lda: lda, b: b + (transB == .none ? lo : lo * ldb), ldb: ldb,
                           beta: beta, c: box.value + lo, ldc: ldc)
            }
        }
    }

    /// Smallest product, in multiply-adds, that ``sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``
    /// hands to a lane on its own (4× OpenBLAS's small-matrix limit of 100³).
    static let splitMinimumMACs = 4_000_000
}

/// Thread-specific flag set while a thread runs a ``Parallel/forEach(_:lanes:_:)`` lane.
private let insideLane: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
    return key
}()

/// Carries a non-Sendable closure or pointer into `concurrentPerform`; each task touches a disjoint range.
struct UncheckedBox<T>: @unchecked Sendable {  // callers guarantee disjoint writes per task
    let value: T
    init(_ value: T) { self.value = value }
}
