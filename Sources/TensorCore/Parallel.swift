import Dispatch
import Synchronization

/// Work splitting over the configured thread count (``BLAS/threadCount``).
///
/// Every index is computed by exactly one task with the same arithmetic whatever the split, so
/// results never depend on the thread count; only the wall time does.
public enum Parallel {
    /// Threads the caller may use: the configured count, or 1 inside a ``forEach(_:lanes:_:)`` lane.
    public static var lanes: Int { BLAS.threadCount }

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
    /// count is process-wide: it is 1 while the lanes run (so ``lanes`` is 1 inside one and nested
    /// calls stay on their lane) and restored afterwards. OpenBLAS computes every element of a
    /// product in the same order whatever its thread count, so the bytes are unchanged.
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
                    while true {
                        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                        if i >= count { break }
                        box.value(i, lane)
                    }
                }
            }
        }
    }
}

/// Carries a non-Sendable closure or pointer into `concurrentPerform`; each task touches a disjoint range.
struct UncheckedBox<T>: @unchecked Sendable {  // callers guarantee disjoint writes per task
    let value: T
    init(_ value: T) { self.value = value }
}
