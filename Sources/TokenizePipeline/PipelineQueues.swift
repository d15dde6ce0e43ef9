import Foundation
import ShardFormat
import ShardWriter

/// What the two in-order queues below share: results keyed by input index, finished in any
/// order by several threads and taken back in order by one, and a stop that wakes everyone.
class OrderedResults<T>: @unchecked Sendable {  // all state is guarded by `cond`
    let cond = NSCondition()
    var ready: [Int: T] = [:]
    var stopped = false
    var consumed: Int

    init(first: Int) { consumed = first }

    /// Result `consumed`, waiting for it while `pending()` (checked under the lock) says it may
    /// still come; nil once stopped or once it cannot come.
    func takeNext(while pending: () -> Bool) -> T? {
        cond.lock()
        defer { cond.unlock() }
        while !stopped && pending() && ready[consumed] == nil { cond.wait() }
        guard !stopped, let r = ready.removeValue(forKey: consumed) else { return nil }
        consumed += 1
        cond.broadcast()
        return r
    }

    func stop() {
        cond.lock()
        stopped = true
        ready.removeAll()
        cond.broadcast()
        cond.unlock()
    }
}

/// Hands input indices to decode workers and gives their results back in input order.
///
/// Workers may run ahead of the consumer by at most `window` inputs, which bounds the memory
/// held in decoded images.
final class PreparedQueue: OrderedResults<TokenizeJob.Prepared>, @unchecked Sendable {
    private var next: Int
    private let end: Int
    private let window: Int

    init(range: Range<Int>, window: Int) {
        next = range.lowerBound
        end = range.upperBound
        self.window = window
        super.init(first: range.lowerBound)
    }

    /// The next index to prepare, or nil when there is none or the queue stopped.
    func claim() -> Int? {
        cond.lock()
        defer { cond.unlock() }
        while !stopped && next < end && next >= consumed + window { cond.wait() }
        guard !stopped, next < end else { return nil }
        next += 1
        return next - 1
    }

    func put(_ p: TokenizeJob.Prepared) {
        cond.lock()
        ready[p.index] = p
        cond.broadcast()
        cond.unlock()
    }

    /// The next result in input order, or nil at the end (or after `stop`).
    func take() -> TokenizeJob.Prepared? { takeNext { consumed < end } }
}

/// Carries encoded inputs from the encoder lanes to the consumer, in input order.
///
/// Lanes claim inputs one at a time and finish them in any order; the consumer takes them back in
/// order. A lane may claim only while fewer than `window` claimed inputs wait for the consumer,
/// which bounds the memory held in encoded records.
final class EncodedQueue: OrderedResults<TokenizeJob.Encoded>, @unchecked Sendable {
    /// Inputs claimed so far, counted like `consumed` from the first input.
    private var claimed: Int
    private let window: Int
    private var lanesRunning: Int
    private var laneSeconds = 0.0

    init(first: Int, window: Int, lanes: Int) {
        claimed = first
        self.window = window
        lanesRunning = lanes
        super.init(first: first)
    }

    /// Waits until the window has room for one more input; false once the queue stopped.
    func reserve() -> Bool {
        cond.lock()
        defer { cond.unlock() }
        while !stopped && claimed >= consumed + window { cond.wait() }
        if stopped { return false }
        claimed += 1
        return true
    }

    /// Gives back a reservation a lane could not use (no input left).
    func unreserve() {
        cond.lock()
        claimed -= 1
        cond.unlock()
    }

    func put(_ e: TokenizeJob.Encoded, seconds: Double) {
        cond.lock()
        ready[e.index] = e
        laneSeconds += seconds
        cond.broadcast()
        cond.unlock()
    }

    /// A lane has no more inputs.
    func laneFinished() {
        cond.lock()
        lanesRunning -= 1
        cond.broadcast()
        cond.unlock()
    }

    /// The next result in input order, or nil once every lane has finished without producing it
    /// (the inputs ran out, or the queue stopped).
    func take() -> TokenizeJob.Encoded? { takeNext { lanesRunning > 0 } }

    /// Seconds the lanes spent encoding, summed over lanes.
    var encodingSeconds: Double {
        cond.lock()
        defer { cond.unlock() }
        return laneSeconds
    }
}

/// Appends encoded batches to the cache on its own thread, at most two batches behind the encoder.
/// Failures of a batch are logged before the batch is committed, so after a crash the log can be
/// cut back to the committed resume point.
final class WriterThread: @unchecked Sendable {  // state guarded by `cond`; `writer` used only on the thread
    private struct Job {
        var records: [TokenRecord]
        var failures: [FailureLog.Entry]
        var inputsDone: Int
    }

    private let cond = NSCondition()
    private var jobs: [Job] = []
    private var closed = false
    private var busy = false
    private var failure: (any Error)?
    private var thread: Thread?

    init(writer: CacheWriter, failuresPath: String) {
        let box = UncheckedBox(writer)
        let t = Thread { [unowned self] in
            while let job = self.nextJob() {
                do {
                    try FailureLog.append(job.failures, to: failuresPath)
                    try box.value.append(job.records, inputsDone: job.inputsDone)
                } catch {
                    self.fail(error)
                }
                self.done()
            }
        }
        thread = t
        t.start()
    }

    private func nextJob() -> Job? {
        cond.lock()
        defer { cond.unlock() }
        while jobs.isEmpty && !closed { cond.wait() }
        if jobs.isEmpty { return nil }
        busy = true
        return jobs.removeFirst()
    }

    private func done() {
        cond.lock()
        busy = false
        cond.broadcast()
        cond.unlock()
    }

    private func fail(_ error: any Error) {
        cond.lock()
        if failure == nil { failure = error }
        jobs.removeAll()
        cond.unlock()
    }

    func submit(records: [TokenRecord], failures: [FailureLog.Entry], inputsDone: Int) throws {
        cond.lock()
        defer { cond.unlock() }
        while jobs.count >= 2 && failure == nil { cond.wait() }
        if let failure { throw failure }
        jobs.append(Job(records: records, failures: failures, inputsDone: inputsDone))
        cond.broadcast()
    }

    /// Waits until every submitted batch is committed; rethrows a write error.
    func drain() throws {
        cond.lock()
        defer { cond.unlock() }
        while (!jobs.isEmpty || busy) && failure == nil { cond.wait() }
        if let failure { throw failure }
    }

    func close() {
        cond.lock()
        closed = true
        cond.broadcast()
        cond.unlock()
        if let thread { while !thread.isFinished { usleep(1000) } }
    }
}
