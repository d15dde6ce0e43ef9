import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Work splitting over the configured thread count.
///
/// Every partition of work (product blocks, convolution tiles, attention heads, images) is
/// decided from the shapes alone; the thread count only decides which thread computes which
/// block. So the bytes never depend on the thread count, on any OpenBLAS kernel set; only the
/// wall time does.
public enum Parallel {
    /// The configured thread count (default: every core the process may use).
    public static var threadCount: Int { configured.load(ordering: .relaxed) }

    /// Sets the thread count for the whole process.
    public static func setThreadCount(_ count: Int) {
        precondition(count >= 1, "thread count must be at least 1")
        configured.store(count, ordering: .relaxed)
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

    private static let configured = Atomic<Int>(max(1, ProcessInfo.processInfo.activeProcessorCount))
    private static let turns = NSLock()

    /// Threads the caller may use: the configured count, or 1 inside a ``forEach(_:lanes:_:)`` lane.
    public static var lanes: Int { pthread_getspecific(insideLane) != nil ? 1 : threadCount }

    /// Runs `body(range)` over `0..<count` cut into at most ``lanes`` contiguous chunks. For
    /// elementwise work and independent reductions only: where the chunks fall depends on the
    /// thread count.
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
    /// Independent items (images, convolution tiles, attention heads, product blocks) each run
    /// whole on one lane; ``lanes`` is 1 inside a lane, so nested work runs on it in order. Which
    /// lane takes an item never changes what the item computes.
    public static func forEach(_ count: Int, lanes requested: Int = lanes,
                               _ body: (_ item: Int, _ lane: Int) -> Void) {
        let tasks = min(requested, count, lanes)
        if tasks <= 1 {
            for i in 0..<count { body(i, 0) }
            return
        }
        let next = Atomic<Int>(0)
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

    /// ``BLAS/sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)`` cut into ``productBlocks(m:n:k:)``
    /// blocks along the longer side of C, the blocks run on the lanes (in order on one lane).
    ///
    /// The cut depends on the shape alone, so every element is computed by the same OpenBLAS
    /// call, whatever the thread count and whether the caller is itself on a lane. (Cutting
    /// only when there are threads to use changes bytes: some kernel sets, Haswell's and Zen's
    /// among them, round an element differently depending on its place in their register tiles.)
    public static func sgemm(
        _ transA: MatrixTranspose, _ transB: MatrixTranspose,
        m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let blocks = productBlocks(m: m, n: n, k: k)
        if blocks.count == 1 {
            BLAS.sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                       beta: beta, c: c, ldc: ldc)
            return
        }
        let byRows = m >= n
        let box = UncheckedBox(c)
        forEach(blocks.count, lanes: blocks.count) { block, _ in
            let range = blocks[block]
            let lo = range.lowerBound
            if byRows {
                BLAS.sgemm(transA, transB, m: range.count, n: n, k: k, alpha: alpha,
                           a: a + (transA == .none ? lo * lda : lo), lda: lda, b: b, ldb: ldb,
                           beta: beta, c: box.value + lo * ldc, ldc: ldc)
            } else {
                BLAS.sgemm(transA, transB, m: m, n: range.count, k: k, alpha: alpha,
                           a: a, lda: lda, b: b + (transB == .none ? lo : lo * ldb), ldb: ldb,
                           beta: beta, c: box.value + lo, ldc: ldc)
            }
        }
    }

    /// The blocks of the longer side of C (rows when `m >= n`) that
    /// ``sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)`` computes as separate products: two
    /// halves cut at a multiple of 16 when each half holds at least ``splitMinimumMACs``
    /// multiply-adds, else the whole side. A function of the shape only.
    ///
    /// Two, not one per thread: the encoder's lanes mostly take whole images, so a product is
    /// cut only for the images left over when a batch does not divide among the threads, and a
    /// smaller block would pack the operand the blocks share once more per block.
    public static func productBlocks(m: Int, n: Int, k: Int) -> [Range<Int>] {
        let side = max(m, n)
        guard side >= 64, m * n * k >= 2 * splitMinimumMACs else { return [0..<side] }
        let step = (side + 31) / 32 * 16
        return [0..<step, step..<side]
    }

    /// Smallest product, in multiply-adds, that ``sgemm(_:_:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:)``
    /// computes as a block of its own: below this, a second packing of the shared operand costs
    /// more than a second lane gains.
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
