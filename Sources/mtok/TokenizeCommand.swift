import ArgumentParser
import Dispatch
import Foundation
import ImageDecoding
import TensorFiles
import TokenizePipeline
#if canImport(Glibc)
import Glibc
#endif

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Tokenize a dataset (ImageFolder, flat folder, or .jsonl/.csv list) into a cache; resumable.",
        discussion: """
        Run the same command again after any interruption to continue where the last committed \
        batch ended. For a Slurm array or Kubernetes Indexed Job, each task runs the same command: \
        --rank defaults to SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, --world-size to \
        SLURM_ARRAY_TASK_COUNT or MTOK_WORLD_SIZE; then `mtok merge CACHE` joins the parts.
        """)

    @Argument(help: "ImageFolder tree, flat folder of images, or a .jsonl/.csv list (path, id, label).") var input: String
    @Option(help: "Encoder weights (.safetensors).") var model: String
    @Option(help: "Output cache directory.") var out: String
    @Option(help: "Input side in pixels.") var resolution = 256
    @Option(help: "adm or resize-center.") var crop = "adm"
    @Option(help: "center,hflip (any subset) or ten-crop.") var views = "center,hflip"
    @Option(name: .customLong("latent-dtype"), help: "bf16, f16 or f32.") var latentDType = "bf16"
    @Option(name: .customLong("batch-size"), help: "Records per commit (a crash loses at most one); also sizes the queues between stages.") var batchSize = 8
    @Option(help: "Threads in all (default: the cores): OpenBLAS gets them all, decoding gets half, as decode is light next to the encoder.") var threads: Int?
    @Option(name: .customLong("decode-workers"), help: "Decode/crop threads (overrides the default).") var decodeWorkers: Int?
    @Option(help: "This process's rank.") var rank: Int?
    @Option(name: .customLong("world-size"), help: "Number of ranks.") var worldSize: Int?
    @Option(name: .customLong("max-failures"), help: "Stop (resumably) when more inputs than this have failed.") var maxFailures: Int?
    @Option(help: "Only the first N inputs.") var limit: Int?
    @Option(name: .customLong("shard-size-mb"), help: "Seal shards at this size (MiB).") var shardSizeMB = 1024

    func run() throws {
        let env = ProcessInfo.processInfo.environment
        let r = rank ?? env["SLURM_ARRAY_TASK_ID"].flatMap(Int.init) ?? env["JOB_COMPLETION_INDEX"].flatMap(Int.init) ?? 0
        let w = worldSize ?? env["SLURM_ARRAY_TASK_COUNT"].flatMap(Int.init) ?? env["MTOK_WORLD_SIZE"].flatMap(Int.init) ?? 1
        var options = TokenizeOptions()
        options.resolution = resolution
        guard let cropMode = CropMode(rawValue: crop) else { throw fail("--crop must be adm or resize-center") }
        options.crop = cropMode
        switch views {
        case "ten-crop": options.views = (0..<10).map { View.tenCrop($0) }
        default:
            var vs: [View] = []
            for part in views.split(separator: ",") {
                switch part {
                case "center": vs.append(.identity)
                case "hflip": vs.append(.horizontalFlip)
                default: throw fail("--views must be center, hflip, center,hflip or ten-crop")
                }
            }
            options.views = vs
        }
        guard let dt = TensorDType(userName: latentDType), [.f32, .f16, .bf16].contains(dt) else {
            throw fail("--latent-dtype must be bf16, f16 or f32")
        }
        options.latentDType = dt
        options.batchSize = max(1, batchSize)
        let cores = threads ?? ProcessInfo.processInfo.activeProcessorCount
        options.blasThreads = max(1, cores)
        options.decodeWorkers = decodeWorkers ?? max(1, cores / 2)
        options.writer.threads = 1
        options.writer.shardCapBytes = shardSizeMB << 20
        options.maxFailures = maxFailures
        options.rank = r
        options.worldSize = w
        options.limit = limit

        let job: TokenizeJob
        do {
            job = try TokenizeJob(input: input, modelPath: model, output: out, options: options)
        } catch {
            throw fail("\(error)")
        }
        let stop = StopFlag()
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let sources = [SIGINT, SIGTERM].map { sig -> any DispatchSourceSignal in
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                FileHandle.standardError.write(Data("\nmtok: stopping after the current batch...\n".utf8))
                stop.set()
            }
            s.resume()
            return s
        }
        defer { sources.forEach { $0.cancel() } }
        let label = w > 1 ? "rank \(r)/\(w)" : ""
        let summary: TokenizeSummary
        do {
            summary = try job.run(progress: TokenizeProgress(label: label), shouldStop: { stop.isSet })
        } catch {
            throw fail("\(error)")
        }
        let fresh = summary.images
        let rate = summary.seconds > 0 ? Double(fresh) / summary.seconds : 0
        print("""
        \(summary.finished ? "finished" : "stopped") \(summary.cache)\(label.isEmpty ? "" : " (\(label))")
          images     \(fresh) this run (\(summary.skippedAlreadyDone) done before), \(summary.failures) failed
          views      \(summary.views) per image; \(summary.records) records this run, \(summary.totalRecords) in the cache
          bytes      \(summary.payloadBytes) payload, \(summary.compressedBytes) compressed (ratio \(String(format: "%.2f", Double(summary.payloadBytes) / Double(max(1, summary.compressedBytes))))), \(summary.bytesOnDisk) on disk
          time       \(String(format: "%.1f", summary.seconds)) s, \(String(format: "%.2f", rate)) images/s (encoder \(String(format: "%.1f", summary.encoderSeconds)) s)
        """)
        if let digest = summary.contentDigest { print("  digest     \(digest)") }
        if let reason = summary.stopReason {
            FileHandle.standardError.write(Data("mtok: \(reason)\n".utf8))
            throw ExitCode(stop.isSet ? 130 : 3)
        }
    }
}

/// Set from a signal handler's queue, read by the pipeline between batches.
final class StopFlag: @unchecked Sendable {  // guarded by `lock`
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
