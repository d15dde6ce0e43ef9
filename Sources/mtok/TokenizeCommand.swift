import ArgumentParser
import Dispatch
import EncoderModel
import Foundation
import ImageDecoding
import TensorFiles
import ShardFormat
import ShardReader
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
    @Option(help: "Input side in pixels (default: the model's; must match it).") var resolution: Int?
    @Option(help: "adm or resize-center.") var crop = "adm"
    @Option(help: "center,hflip (any subset) or ten-crop.") var views = "center,hflip"
    @Option(name: .customLong("latent-dtype"), help: "bf16, f16 or f32.") var latentDType = "bf16"
    @Option(name: .customLong("batch-size"), help: "Records per commit (a crash loses at most one); also sizes the queues between stages.") var batchSize = 8
    @Option(help: "Threads in all (default: the cores): the encoder gets them all, decoding gets half, as decode is light next to the encoder.") var threads: Int?
    @Option(name: .customLong("decode-workers"), help: "Decode/crop threads (overrides the default).") var decodeWorkers: Int?
    @Option(help: "This process's rank.") var rank: Int?
    @Option(name: .customLong("world-size"), help: "Number of ranks.") var worldSize: Int?
    @Option(name: .customLong("max-failures"), help: "Stop (resumably) when more inputs than this have failed.") var maxFailures: Int?
    @Option(help: "Only the first N inputs.") var limit: Int?
    @Flag(help: "Add the inputs the finished cache at --out does not hold yet, after its records, without re-encoding the rest (same model and options; resumable).") var append = false
    @Option(name: .customLong("shard-size-mb"), help: "Seal shards at this size (MiB).") var shardSizeMB = 1024
    @OptionGroup(title: "Decoding (recorded in the cache's settings when not the default)") var decode: DecodeFlags

    func validate() throws {
        for (name, value, least) in [("--batch-size", batchSize, 1), ("--threads", threads ?? 1, 1),
                                     ("--decode-workers", decodeWorkers ?? 1, 1), ("--limit", limit ?? 1, 1),
                                     ("--max-failures", maxFailures ?? 0, 0), ("--shard-size-mb", shardSizeMB, 1),
                                     ("--resolution", resolution ?? 1, 1)] where value < least {
            throw ValidationError("\(name) must be at least \(least)")
        }
        // The shard's map reserves twice its cap of address space: past a tebibyte that fails
        // (after the output was created), and no real shard wants it.
        guard shardSizeMB <= 1 << 20 else { throw ValidationError("--shard-size-mb must be at most 1048576 (1 TiB)") }
    }

    /// (rank, world size): the options, else the scheduler's variables (Slurm array, Kubernetes
    /// Indexed Job), else a single process. A rank without a world size, or a variable that is
    /// not a number, is refused: guessing would write a whole cache where a part was meant.
    static func placement(rank: Int?, worldSize: Int?, environment env: [String: String]) throws -> (Int, Int) {
        func number(_ name: String) throws -> Int? {
            guard let text = env[name], !text.isEmpty else { return nil }
            guard let n = Int(text), n >= 0 else { throw ValidationError("\(name)=\(text) is not a number") }
            return n
        }
        let r = try rank ?? number("SLURM_ARRAY_TASK_ID") ?? number("JOB_COMPLETION_INDEX")
        let w = try worldSize ?? number("SLURM_ARRAY_TASK_COUNT") ?? number("MTOK_WORLD_SIZE")
        switch (r, w) {
        case let (r?, w?): return (r, w)
        case (nil, let w?): throw ValidationError("world size \(w) but no rank: pass --rank (or run as a Slurm array task or an Indexed Job)")
        case (let r?, nil): throw ValidationError("rank \(r) but no world size: pass --world-size (or set SLURM_ARRAY_TASK_COUNT or MTOK_WORLD_SIZE)")
        case (nil, nil): return (0, 1)
        }
    }

    func run() throws {
        let r: Int, w: Int
        do {
            (r, w) = try Self.placement(rank: rank, worldSize: worldSize, environment: ProcessInfo.processInfo.environment)
        } catch {
            throw fail("\(error)", code: 64)
        }
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
                default: throw fail("--views must be ten-crop or a comma-separated list of center and hflip, got \"\(views)\"")
                }
            }
            guard !vs.isEmpty else { throw fail("--views must name at least one view") }
            guard Set(vs.map(\.number)).count == vs.count else { throw fail("--views names a view twice: \(views)") }
            options.views = vs
        }
        guard let dt = TensorDType(userName: latentDType), [.f32, .f16, .bf16].contains(dt) else {
            throw fail("--latent-dtype must be bf16, f16 or f32")
        }
        options.latentDType = dt
        options.batchSize = batchSize
        let cores = threads ?? ProcessInfo.processInfo.activeProcessorCount
        options.encoderThreads = max(1, cores)
        options.decodeWorkers = decodeWorkers ?? max(1, cores / 2)
        options.writer.threads = 1
        options.writer.shardCapBytes = shardSizeMB << 20
        options.maxFailures = maxFailures
        options.rank = r
        options.worldSize = w
        options.limit = limit
        options.decode = decode.options
        options.append = append

        let job: TokenizeJob
        do {
            job = try TokenizeJob(input: input, modelPath: model, output: out, options: options)
        } catch let nothing as CacheGrowth.NothingToAdd {
            print(nothing.description)
            return
        } catch {
            throw fail("\(error)")
        }
        if let note = EncoderWeights.untrainedNote(metadata: job.modelMetadata) {
            FileHandle.standardError.write(Data("mtok: note: \(model) holds \(note)\n".utf8))
        }
        let earlier = job.earlierArithmetics
        if !earlier.isEmpty {
            let names = earlier.map { $0.map { "\($0)" } ?? "an unrecorded arithmetic" }.joined(separator: "; ")
            FileHandle.standardError.write(Data("mtok: note: \(out) holds records made by \(names); this machine computes with \(TokenizeJob.arithmetic). The cache stays valid, but its records will not be bit-identical to a run on one machine kind (mtok info lists which records came from where)\n".utf8))
        }
        let stop = StopFlag()
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let sources = [SIGINT, SIGTERM].map { sig -> any DispatchSourceSignal in
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                // A second signal means "now": what is committed survives any exit (the same
                // command resumes after it), so only the batch in flight is given up.
                if stop.isSet {
                    FileHandle.standardError.write(Data("\nmtok: stopping now; run the same command again to resume\n".utf8))
                    Glibc.exit(130)
                }
                FileHandle.standardError.write(Data("\nmtok: stopping after the current batch (again to stop now)...\n".utf8))
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
        if summary.failures > 0 {
            print("  failures   \(summary.failures) input(s) could not be tokenized; each is a line of \(summary.cache)/failures.jsonl (id, path, reason)")
        }
        if append {
            print("  appended   \(job.inputs.items.count) new input(s) after the cache's first \(job.inputBase) inputs; \(job.alreadyInCache) of the scanned inputs were in the cache already")
        }
        if job.inputs.skippedFiles > 0 {
            print("  skipped    \(job.inputs.skippedFiles) file(s) that are not images by their extension, e.g. \(job.inputs.skippedExample ?? "?") (not inputs, not failures)")
        }
        if let digest = summary.contentDigest { print("  digest     \(digest)") }
        if summary.statistics != nil { print("  statistics \(summary.cache)/\(CacheStatistics.fileName) (mtok stats \(summary.cache))") }
        if let problem = summary.statisticsProblem {
            FileHandle.standardError.write(Data("mtok: note: the cache is finished, but its statistics could not be written: \(problem)\n".utf8))
        }
        if let line = arithmeticLine(summary.arithmetic) { print("  arithmetic \(line)") }
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
