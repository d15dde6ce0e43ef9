import ArgumentParser
import Foundation
import ShardReader

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a cache: manifest vs files and hashes (fast), or every record too (--deep). Exit 0 only if clean.",
        discussion: "Exit status: 0 clean; 1 faults found; 2 no fault, but the cache is unfinished (resume it with the same tokenize command).")

    @Argument(help: "The cache directory.") var cache: String
    @Flag(help: "Read, checksum and schema-check every record; check the id index and the content digest.") var deep = false
    @Flag(help: "With --deep: also recompute every payload's SHA-256 and the content digest from the payloads.") var rehash = false
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "Threads for hashing shard files and checking records (default: all cores).") var threads: Int?

    func validate() throws {
        if rehash && !deep { throw ValidationError("--rehash recomputes what --deep reads: pass --deep too") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let report = CacheVerifier.verify(path: cache, deep: deep, rehash: rehash,
                                          threads: threads ?? ProcessInfo.processInfo.activeProcessorCount)
        if json {
            try printJSON(report)
        } else {
            for f in report.faults { print("FAULT  \(f)") }
            for s in report.shardsElsewhere { print("NOTE   \(s.shard) lives outside the cache, at \(s.path)") }
            if let line = arithmeticLine(report.arithmetic.map { ($0.madeBy, $0.records) }) {
                print("NOTE   arithmetic: \(line)")
            }
            let rate = report.seconds > 0 ? Double(report.payloadBytesChecked) / report.seconds / 1e9 : 0
            let what = deep ? "deep: \(report.recordsChecked) records, \(formatBytes(report.payloadBytesChecked)) payload, \(String(format: "%.2f", rate)) GB/s"
                            : "fast: \(report.shards) shard(s), \(report.records) records"
            if let unfinished = report.unfinished { print("UNFINISHED \(unfinished)") }
            print(report.isClean ? "OK     \(cache) (\(what))"
                  : report.faults.isEmpty ? "NOT FINISHED \(cache): no fault in what is committed (\(what))"
                  : "FAILED \(cache): \(report.faults.count) fault(s) (\(what))")
        }
        if !report.faults.isEmpty { throw ExitCode(1) }
        if report.unfinished != nil { throw ExitCode(2) }
    }
}
