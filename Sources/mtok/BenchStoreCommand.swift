import ArgumentParser
import Foundation
import ShardReader
import ShardFormat
import ShardWriter
import TensorFiles
#if canImport(Glibc)
import Glibc
#endif

/// Read-side measurements for tools/store/bench_store.py; prints one JSON object.
struct BenchStoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-store", abstract: "Measure random and sequential reads of a cache (JSON out).",
        shouldDisplay: false)

    @Argument(help: "The cache directory.") var cache: String
    @Option(help: "Random reads to time.") var reads = 20000
    @Option(help: "Seed for the random indices.") var seed: UInt64 = 1
    @Option(help: "Repetitions; the median is reported.") var repeats = 3
    @Option(help: "Instead of reading CACHE, write this many ImageNet-256-shaped records into it and time the writer alone.")
    var write: Int?
    @Option(name: .customLong("compression-level"), help: "zstd level for --write.") var compressionLevel = 3

    func run() throws {
        if let write { return try timeWriter(count: write) }
        let c = try openCache(cache)
        var rng = SplitMix64(seed: seed)
        let indices = (0..<reads).map { _ in Int(rng.next() % UInt64(c.count)) }
        var randomRates: [Double] = []
        var randomCPURates: [Double] = []
        var scanRates: [Double] = []
        var scanRecordRates: [Double] = []
        var checksum = 0
        for _ in 0..<repeats {
            var t = Date()
            let cpu = Self.cpuSeconds()
            for i in indices { checksum &+= try c.record(at: i).tokenCount }
            randomRates.append(Double(reads) / Date().timeIntervalSince(t))
            randomCPURates.append(Double(reads) / (Self.cpuSeconds() - cpu))
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
        print("{\"random_reads_per_s\": \(median(randomRates)), \"random_reads_per_cpu_second\": \(median(randomCPURates)), \"scan_payload_mb_per_s\": \(median(scanRates)), \"scan_records_per_s\": \(median(scanRecordRates)), \"records\": \(c.count), \"checksum\": \(checksum)}")
    }
}

extension BenchStoreCommand {
    /// Times `CacheWriter` on pre-generated records (1,024 distinct ones, cycled with new ids), so
    /// record generation is not measured. Reports wall and CPU seconds per record.
    func timeWriter(count: Int) throws {
        var gen = SyntheticRecords()
        gen.groupDType = .u16
        gen.indexDType = .u32
        let pool = (0..<1024).map(gen.record)
        var options = CacheWriter.Options()
        options.compressionLevel = compressionLevel
        let writer = try CacheWriter(path: cache, settings: gen.settings, options: options)
        let batch = 2048
        var batches: [[ShardFormat.TokenRecord]] = []
        var i = 0
        while i < count {
            let n = min(batch, count - i)
            batches.append((i..<(i + n)).map { j in
                var r = pool[j % pool.count]
                r.id = String(format: "bench/%09d", j)
                return r
            })
            i += n
        }
        let cpu0 = Self.cpuSeconds()
        let t0 = Date()
        for b in batches { try writer.append(b) }
        let m = try writer.finish()
        let wall = Date().timeIntervalSince(t0)
        let cpu = Self.cpuSeconds() - cpu0
        print("{\"write_records_per_s\": \(Double(count) / wall), \"cpu_seconds\": \(cpu), \"wall_seconds\": \(wall), \"records_per_cpu_second\": \(Double(count) / cpu), \"threads\": \(options.threads), \"compressed_bytes\": \(m.totals.compressedBytes), \"bytes_on_disk\": \(m.totals.bytesOnDisk), \"payload_bytes\": \(m.totals.payloadBytes)}")
    }

    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
}
