import ArgumentParser
import Foundation
import ShardReader

struct StreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "Read the samples one rank sees in an epoch (Schemas/STREAM.md): ids, indices, or throughput.",
        discussion: """
            --start is a global position: the number of samples the whole job consumed in this epoch, so a job \
            can resume with another world size. Without --ids or --indices every sample is decoded and the \
            throughput is printed.
            """)

    @Argument(help: "The cache directory.") var cache: String
    @Option(help: "This rank (0 ..< world size).") var rank = 0
    @Option(name: .customLong("world-size"), help: "Number of ranks.") var worldSize = 1
    @Option(help: "Epoch.") var epoch: UInt64 = 0
    @Option(help: "Seed.") var seed: UInt64 = 0
    @Option(help: "Global position to resume from.") var start = 0
    @Option(help: "Stop after this many samples of this rank.") var limit: Int?
    @Option(help: "pad (repeat records so every rank gets as many) or drop (the remainder).") var padding = "pad"
    @Flag(help: "Print `id view` for each sample (decodes the records); an id holding a backslash or a control character is printed with JSON string escapes, so each sample stays one line.") var ids = false
    @Flag(help: "Print the global record index of each sample (reads nothing).") var indices = false
    @Option(name: .customLong("batch-size"), help: "Samples per batch.") var batchSize = 256
    @Option(help: "Decoding threads (default: all cores).") var threads: Int?
    @Option(help: "Batches decoded ahead (default: 2 per thread).") var prefetch: Int?
    @Option(name: .customLong("block-records"), help: "Records per shuffle block (default: records per chunk).") var blockRecords: Int?
    @Option(name: .customLong("window-blocks"), help: "Blocks per shuffle window.") var windowBlocks = StreamOrder.Shuffle.defaultWindowBlocks
    @Flag(name: .customLong("no-shuffle"), help: "Index order instead of the shuffle.") var noShuffle = false
    @Option(name: .customLong("latent-dtype"), help: "f32, f16 or bf16: the type latents are delivered in.") var latentDType = "f32"
    @Flag(name: .customLong("no-read-ahead"), help: "Do not ask the kernel for each chunk before it is decoded (a cold cache is then read a page fault at a time).") var noReadAhead = false
    @Flag(help: "Print the throughput as JSON.") var json = false
    @Flag(name: .customLong("decompress-only"),
          help: "Only decompress the frames, on one thread (the raw zstd rate, a benchmark's limit).") var decompressOnly = false

    func validate() throws {
        guard worldSize >= 1, (0..<worldSize).contains(rank) else { throw ValidationError("need 0 ≤ --rank < --world-size") }
        guard start >= 0, (limit ?? 0) >= 0 else { throw ValidationError("--start and --limit must be ≥ 0") }
        guard batchSize >= 1, (threads ?? 1) >= 1, (prefetch ?? 1) >= 1 else { throw ValidationError("sizes must be positive") }
        guard (blockRecords ?? 1) >= 1, windowBlocks >= 1 else { throw ValidationError("--block-records and --window-blocks must be ≥ 1") }
        guard StreamOrder.Padding(rawValue: padding) != nil else { throw ValidationError("--padding must be pad or drop") }
        guard LatentFormat(rawValue: latentDType) != nil else { throw ValidationError("--latent-dtype must be f32, f16 or bf16") }
        guard !(ids && indices) else { throw ValidationError("--ids and --indices exclude each other") }
    }

    func run() throws {
        let c = try openCache(cache)
        var options = TokenStream.Options()
        options.batchSize = batchSize
        options.threads = threads ?? ProcessInfo.processInfo.activeProcessorCount
        options.prefetch = prefetch
        options.padding = StreamOrder.Padding(rawValue: padding)!
        options.shuffle = StreamOrder.Shuffle(blockRecords: blockRecords, windowBlocks: windowBlocks, enabled: !noShuffle)
        options.latentFormat = LatentFormat(rawValue: latentDType)!
        options.limit = limit
        options.readAhead = !noReadAhead
        if indices {
            let order = StreamOrder(cache: c, seed: seed, epoch: epoch, shuffle: options.shuffle)
            var mine = order.rankIndices(rank: rank, worldSize: worldSize, start: start, padding: options.padding)
            if let limit, limit < mine.count { mine.removeLast(mine.count - limit) }
            var out = ""
            for i in mine { out += "\(i)\n" }
            FileHandle.standardOutput.write(Data(out.utf8))
            return
        }
        if decompressOnly {
            let order = StreamOrder(cache: c, seed: seed, epoch: epoch, shuffle: options.shuffle)
            var mine = order.rankIndices(rank: rank, worldSize: worldSize, start: start, padding: options.padding)
            if let limit, limit < mine.count { mine.removeLast(mine.count - limit) }
            let began = Date()
            let bytes: Int
            do { bytes = try c.decompressFrames(mine) } catch { throw fail("\(error)") }
            report(samples: mine.count, payload: bytes, seconds: Date().timeIntervalSince(began), threads: 1)
            return
        }
        let began = Date()
        let stream = TokenStream(cache: c, rank: rank, worldSize: worldSize, epoch: epoch, seed: seed, start: start,
                                 options: options)
        var samples = 0
        var payload = 0
        do {
            while let batch = try stream.next() {
                samples += batch.count
                payload += batch.payloadBytes
                if ids {
                    var out = ""
                    for (id, view) in zip(batch.ids, batch.views) { out += "\(printableId(id)) \(view)\n" }
                    FileHandle.standardOutput.write(Data(out.utf8))
                }
                stream.recycle(batch)
            }
        } catch {
            throw fail("\(error)")
        }
        if ids { return }
        report(samples: samples, payload: payload, seconds: Date().timeIntervalSince(began), threads: options.threads)
    }

    func report(samples: Int, payload: Int, seconds: Double, threads: Int) {
        let secs = max(seconds, 1e-9)
        let rate = Double(samples) / secs
        let gbps = Double(payload) / secs / 1e9
        if json {
            print("{\"records\": \(samples), \"seconds\": \(secs), \"records_per_s\": \(rate), \"payload_bytes\": \(payload), \"payload_gb_per_s\": \(gbps), \"threads\": \(threads)}")
        } else {
            print(String(format: "%d records in %.3f s: %.0f records/s, %.3f GB/s of payload (%d threads)",
                         samples, secs, rate, gbps, threads))
        }
    }
}
