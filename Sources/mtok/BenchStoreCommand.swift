import ArgumentParser
import Foundation
import ShardReader
import ShardFormat
import ShardWriter
import TensorFiles
import ZstdCore
import Crypto
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
    @Option(help: "Writer threads for --write (default: the cores); comparing counts shows how the writer scales.") var threads: Int?

    func validate() throws {
        guard repeats >= 1, reads >= 1 else { throw ValidationError("--repeats and --reads must be at least 1") }
        if let write, write < 1 { throw ValidationError("--write must be at least 1") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        if let write { return try timeWriter(count: write) }
        let c = try openCache(cache)
        guard c.count > 0 else { throw fail("\(cache) holds no records to read") }
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
        if let threads { options.threads = threads }
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
        let floor = try Self.unavoidableWork(pool, options: options)
        let cpu0 = Self.cpuSeconds()
        let t0 = Date()
        for b in batches { try writer.append(b) }
        let m = try writer.finish()
        let wall = Date().timeIntervalSince(t0)
        let cpu = Self.cpuSeconds() - cpu0
        print("{\"write_records_per_s\": \(Double(count) / wall), \"cpu_seconds\": \(cpu), \"wall_seconds\": \(wall), \"records_per_cpu_second\": \(Double(count) / cpu), \"threads\": \(options.threads), \"compressed_bytes\": \(m.totals.compressedBytes), \"bytes_on_disk\": \(m.totals.bytesOnDisk), \"payload_bytes\": \(m.totals.payloadBytes), \"floor_us_per_record\": {\"serialize_and_payload_sha256\": \(floor.serialize * 1e6), \"compress\": \(floor.compress * 1e6), \"file_sha256\": \(floor.fileHash * 1e6)}, \"ceiling_records_per_s\": \(Double(options.threads) / (floor.serialize + floor.compress + floor.fileHash))}")
    }

    /// CPU seconds per record, on one thread, of the work no writer can skip: serializing and
    /// hashing the payload (the content digest), compressing it, and hashing its frame once more
    /// when the shard is sealed. With `threads` cores, `threads / sum` records/s bounds any writer
    /// of this format at these settings (LMDB, the kernel and syncing come on top).
    static func unavoidableWork(_ pool: [TokenRecord], options: CacheWriter.Options)
        throws -> (serialize: Double, compress: Double, fileHash: Double) {
        let compressor = ZstdCompressor(level: Int32(options.compressionLevel), compressLiterals: options.literalsCompressed)
        // Whole passes are timed (getrusage is too coarse for one record at a time), into one
        // reused buffer as the writer's threads do; compressing is the second pass less the first.
        var bytes: [UInt8] = []
        var t = cpuSeconds()
        for r in pool { _ = RecordCodec.encodeForStorage(r, shuffled: options.shuffle, into: &bytes) }
        let serialize = cpuSeconds() - t
        var frames: [[UInt8]] = []
        frames.reserveCapacity(pool.count)
        t = cpuSeconds()
        for r in pool {
            _ = RecordCodec.encodeForStorage(r, shuffled: options.shuffle, into: &bytes)
            frames.append(try bytes.withUnsafeBytes { try compressor.compress($0) })
        }
        let compress = cpuSeconds() - t - serialize
        t = cpuSeconds()
        var hasher = SHA256()
        for f in frames { f.withUnsafeBytes { hasher.update(bufferPointer: $0) } }
        _ = hasher.finalize()
        let n = Double(pool.count)
        return (serialize / n, compress / n, (cpuSeconds() - t) / n)
    }

    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
}
