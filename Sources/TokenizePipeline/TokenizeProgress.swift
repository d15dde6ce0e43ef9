import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Progress on stderr: a live bar (done/total, images/s, ETA, failures) on a terminal; a plain
/// line every `interval` seconds otherwise (logs of batch jobs).
public final class TokenizeProgress: @unchecked Sendable {  // counters guarded by `lock`
    private let lock = NSLock()
    private var total = 0
    private var done = 0
    private var doneAtStart = 0
    private var failures = 0
    private var started = Date()
    private var running = false
    private var thread: Thread?
    private let isTerminal: Bool
    private let interval: Double
    private let label: String

    public init(label: String = "", interval: Double? = nil) {
        isTerminal = isatty(STDERR_FILENO) != 0
        self.interval = interval ?? (isTerminal ? 0.5 : 5)
        self.label = label
    }

    func begin(total: Int, done: Int) {
        lock.lock()
        self.total = total
        self.done = done
        doneAtStart = done
        started = Date()
        running = true
        lock.unlock()
        let t = Thread { [weak self] in
            while let self, self.isRunning {
                Thread.sleep(forTimeInterval: self.interval)
                if self.isRunning { self.draw(final: false) }
            }
        }
        thread = t
        t.start()
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    func advance(failures: Int) {
        lock.lock()
        done += 1
        self.failures = failures
        lock.unlock()
    }

    func end() {
        lock.lock()
        running = false
        lock.unlock()
        draw(final: true)
    }

    private func draw(final: Bool) {
        lock.lock()
        let (done, total, failures, fresh) = (self.done, self.total, self.failures, self.done - doneAtStart)
        let elapsed = Date().timeIntervalSince(started)
        lock.unlock()
        let rate = elapsed > 0 ? Double(fresh) / elapsed : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let prefix = label.isEmpty ? "" : label + " "
        let text = String(format: "%@%d/%d images  %.1f img/s  ETA %@  failures %d", prefix, done, total, rate, Self.duration(eta), failures)
        if isTerminal {
            let width = 28
            let filled = total > 0 ? min(width, width * done / total) : width
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            FileHandle.standardError.write(Data("\r[\(bar)] \(text)\u{1B}[K\(final ? "\n" : "")".utf8))
        } else if !final {
            FileHandle.standardError.write(Data("progress: \(text)\n".utf8))
        }
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}
