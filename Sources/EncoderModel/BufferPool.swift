import Foundation

/// Float buffers kept from one image to the next.
///
/// The CNN stem's activations are several megabytes each: allocated fresh per image they come
/// straight from `mmap`, and first touch then costs a page fault per 4 KiB page (about 12 000 per
/// 256×256 image, a few percent of its time). Buffers handed back here are reused by the next
/// image, on whichever thread. Contents are not cleared: every user writes before it reads.
final class BufferPool: @unchecked Sendable {  // `free` is only touched under `lock`
    private let lock = NSLock()
    private var free: [UnsafeMutableBufferPointer<Float>] = []
    /// Buffers kept at most; beyond that the smallest ones are released.
    private let limit = 16

    /// A buffer of at least `count` floats: the smallest free one that fits, else a new one.
    func take(_ count: Int) -> UnsafeMutableBufferPointer<Float> {
        lock.lock()
        defer { lock.unlock() }
        var best: Int? = nil
        for (i, b) in free.enumerated() where b.count >= count {
            if best == nil || b.count < free[best!].count { best = i }
        }
        if let best { return free.remove(at: best) }
        return .allocate(capacity: max(count, 1))
    }

    func give(_ buffer: UnsafeMutableBufferPointer<Float>) {
        lock.lock()
        defer { lock.unlock() }
        free.append(buffer)
        if free.count > limit {
            free.sort { $0.count > $1.count }
            free.removeLast().deallocate()
        }
    }

    deinit {
        for b in free { b.deallocate() }
    }
}
