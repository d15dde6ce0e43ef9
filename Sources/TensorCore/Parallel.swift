import Dispatch

/// Splits element-wise and per-channel loops over the BLAS thread count.
///
/// Every index is computed by exactly one task with the same arithmetic whatever the split, so
/// results never depend on the thread count; only the wall time does.
enum Parallel {
    /// Runs `body(range)` over `0..<count` cut into at most ``BLAS/threadCount`` contiguous chunks.
    static func chunks(_ count: Int, minimumChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        let tasks = min(BLAS.threadCount, max(1, count / max(minimumChunk, 1)))
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
}

/// Carries a non-Sendable closure or pointer into `concurrentPerform`; each task touches a disjoint range.
struct UncheckedBox<T>: @unchecked Sendable {  // callers guarantee disjoint writes per task
    let value: T
    init(_ value: T) { self.value = value }
}
