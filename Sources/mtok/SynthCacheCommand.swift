import ArgumentParser
import Foundation
import ShardFormat
import ShardReader
import ShardWriter
import TensorFiles

struct SynthCacheCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth-cache",
        abstract: "Write a cache of generated records with realistic shapes and statistics (no encoder needed).")

    @Argument(help: "Output cache directory.") var out: String
    @Option(help: "Number of records.") var records: Int
    @Option(help: "Tokens per record (K).") var tokens = 256
    @Option(name: .customLong("groups-from"), help: "Patch tokens before merging (N ≥ K; default K).") var groupsFrom: Int?
    @Option(help: "Latent channels (C).") var channels = 16
    @Option(name: .customLong("latent-dtype"), help: "f32, f16 or bf16.") var latentDType = "bf16"
    @Option(name: .customLong("codebook-size"), help: "VQ codebook size; indices are u16 up to 65536, else u32.") var codebookSize = 16384
    @Flag(name: .customLong("u32-indices"), help: "Store indices as u32 even when u16 would do.") var u32Indices = false
    @Option(name: .customLong("group-dtype"), help: "u8 or u16 (default: u8 when K ≤ 256).") var groupDType: String?
    @Flag(help: "Also store a log-variance tensor.") var logvar = false
    @Option(help: "Seed.") var seed: UInt64 = 0
    @Option(name: .customLong("batch-size"), help: "Records per committed batch.") var batchSize = 1024
    @Option(name: .customLong("shard-size-mb"), help: "Seal shards at this size (MiB).") var shardSizeMB = 1024
    @Option(name: .customLong("records-per-chunk"), help: "Records packed per LMDB value.") var recordsPerChunk = 16
    @Option(name: .customLong("compression-level"), help: "zstd level.") var compressionLevel = 3
    @Option(help: "Threads for compression.") var threads = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        guard records >= 0, tokens > 0, channels > 0, batchSize > 0, shardSizeMB > 0, recordsPerChunk > 0 else {
            throw ValidationError("counts and sizes must be positive")
        }
        guard tokens <= 65536 else { throw ValidationError("--tokens must be 1...65536 (group ids are stored in 16 bits)") }
        guard threads > 0 else { throw ValidationError("--threads must be at least 1") }
        guard recordsPerChunk <= 65536 else { throw ValidationError("--records-per-chunk must be 1...65536 (FORMAT.md 2)") }
        guard (1...(1 << 32)).contains(codebookSize) else { throw ValidationError("--codebook-size must be 1...4294967296") }
        guard (groupsFrom ?? tokens) >= tokens else { throw ValidationError("--groups-from must be ≥ --tokens") }
        if let g = groupDType {
            guard let d = TensorDType(userName: g), d == .u8 || d == .u16, d == .u16 || tokens <= 256 else {
                throw ValidationError("--group-dtype must be u8 (K ≤ 256) or u16")
            }
        }
        guard let d = TensorDType(userName: latentDType), [.f32, .f16, .bf16].contains(d) else {
            throw ValidationError("--latent-dtype must be f32, f16 or bf16")
        }
    }

    func run() throws {
        var gen = SyntheticRecords()
        gen.tokens = tokens
        gen.patches = groupsFrom ?? tokens
        gen.channels = channels
        gen.latentDType = TensorDType(userName: latentDType)!
        gen.codebookSize = codebookSize
        gen.indexDType = (u32Indices || codebookSize > 65536) ? .u32 : .u16
        gen.groupDType = groupDType.flatMap(TensorDType.init(userName:)) ?? (tokens <= 256 ? .u8 : .u16)
        gen.withLogvar = logvar
        gen.seed = seed
        var options = CacheWriter.Options()
        options.shardCapBytes = shardSizeMB << 20
        options.recordsPerChunk = recordsPerChunk
        options.compressionLevel = compressionLevel
        options.threads = threads
        let start = Date()
        let writer: CacheWriter
        do {
            writer = try CacheWriter(path: out, settings: gen.settings, options: options)
        } catch {
            throw fail("\(error)")
        }
        // A cache being continued keeps its own layout (a resumed writer takes it from the
        // manifest, so the bytes match an uninterrupted run): say so when asked for another.
        let kept = writer.manifest
        var ignored: [String] = []
        if kept.recordsPerChunk != recordsPerChunk { ignored.append("--records-per-chunk \(recordsPerChunk) (it has \(kept.recordsPerChunk))") }
        if kept.compression.level != compressionLevel { ignored.append("--compression-level \(compressionLevel) (it has \(kept.compression.level))") }
        if kept.shardCapBytes != shardSizeMB << 20 { ignored.append("--shard-size-mb \(shardSizeMB) (it has \(kept.shardCapBytes >> 20))") }
        if !ignored.isEmpty {
            FileHandle.standardError.write(Data("mtok: \(out) already exists and keeps its layout; ignoring \(ignored.joined(separator: ", "))\n".utf8))
        }
        var i = writer.count
        let first = i
        guard first <= records else {
            throw fail("\(out) already holds \(first) records, more than --records \(records): nothing to do")
        }
        let m: Manifest
        var writing = 0.0  // seconds inside the writer, generation excluded
        do {
            while i < records {
                let n = min(batchSize, records - i)
                let batch = (i..<(i + n)).map(gen.record)
                let t = Date()
                try writer.append(batch)
                writing += Date().timeIntervalSince(t)
                i += n
            }
            let t = Date()
            m = try writer.finish()
            writing += Date().timeIntervalSince(t)
        } catch {
            throw fail("\(error)")
        }
        let secs = Date().timeIntervalSince(start)
        let written = records - first
        print("wrote \(written) records to \(out) in \(String(format: "%.2f", secs)) s; writer \(Int(Double(written) / max(writing, 1e-9))) records/s; \(m.totals.records) records, \(formatBytes(m.totals.bytesOnDisk)) on disk")
    }
}
