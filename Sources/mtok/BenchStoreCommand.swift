import ArgumentParser
import Foundation
import ShardReader

/// Read-side measurements for tools/store/bench_store.py; prints one JSON object.
struct BenchStoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-store", abstract: "Measure random and sequential reads of a cache (JSON out).",
        shouldDisplay: false)

    @Argument(help: "The cache directory.") var cache: String
    @Option(help: "Random reads to time.") var reads = 20000
    @Option(help: "Seed for the random indices.") var seed: UInt64 = 1
    @Option(help: "Repetitions; the median is reported.") var repeats = 3

    func run() throws {
        let c = try openCache(cache)
        var rng = SplitMix(state: seed)
        let indices = (0..<reads).map { _ in Int(rng.next() % UInt64(c.count)) }
        var randomRates: [Double] = []
        var scanRates: [Double] = []
        var scanRecordRates: [Double] = []
        var checksum = 0
        for _ in 0..<repeats {
            var t = Date()
            for i in indices { checksum &+= try c.record(at: i).tokenCount }
            randomRates.append(Double(reads) / Date().timeIntervalSince(t))
            t = Date()
            var bytes = 0
            for i in 0..<c.count {
                let p = try c.payload(at: i)
                bytes += p.count
                checksum &+= Int(p[p.count / 2])
            }
            let secs = Date().timeIntervalSince(t)
            scanRates.append(Double(bytes) / secs / 1e6)
            scanRecordRates.append(Double(c.count) / secs)
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        print("{\"random_reads_per_s\": \(median(randomRates)), \"scan_payload_mb_per_s\": \(median(scanRates)), \"scan_records_per_s\": \(median(scanRecordRates)), \"records\": \(c.count), \"checksum\": \(checksum)}")
    }
}

struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
