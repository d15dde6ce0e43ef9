import Crypto
import Foundation
public import ImageDecoding
import EncoderModel
public import ShardFormat
public import ShardWriter
public import TensorFiles
import TensorCore
import ShardReader

/// Settings of one `mtok tokenize` run.
public struct TokenizeOptions: Sendable {
    /// Input side in pixels; nil takes the model's.
    public var resolution: Int?
    public var crop: CropMode = .adm
    public var views: [View] = [.identity, .horizontalFlip]
    public var latentDType: TensorDType = .bf16
    /// Encoder inputs (views) per batch; also the commit unit.
    public var batchSize = 8
    /// Threads that read, decode and crop images.
    public var decodeWorkers = 1
    /// Threads for the encoder (OpenBLAS itself always runs on one).
    public var encoderThreads = ProcessInfo.processInfo.activeProcessorCount
    /// Stop (resumably) once more inputs than this have failed; nil = never.
    public var maxFailures: Int?
    public var rank = 0
    public var worldSize = 1
    /// Only the first `limit` inputs (in input order), before splitting among ranks.
    public var limit: Int?
    /// Add the inputs the (finished) output cache does not hold yet after its records (`CacheGrowth`).
    public var append = false
    public var writer = CacheWriter.Options()
    /// How images are decoded; what differs from the default goes into the settings.
    public var decode = DecodeOptions()

    public init() {}
}

/// What a run did; printed at the end.
public struct TokenizeSummary: Sendable {
    public var cache: String
    public var images = 0
    public var skippedAlreadyDone = 0
    public var records = 0
    public var failures = 0
    public var views = 0
    public var totalRecords = 0
    public var payloadBytes = 0
    public var compressedBytes = 0
    public var bytesOnDisk = 0
    public var seconds = 0.0
    public var encoderSeconds = 0.0
    public var finished = false
    public var stopReason: String?
    public var contentDigest: String?
    /// What `stats.json` now says (finished whole caches), or why it could not be written.
    public var statistics: CacheStatistics?
    public var statisticsProblem: String?
    /// The arithmetics that made the cache's records (this run's and earlier runs'), in order of
    /// first use, with their record counts; more than one means records differ in their last bits
    /// from a run on one machine kind.
    public var arithmetic: [(madeBy: Manifest.Arithmetic?, records: Int)] = []
}

/// One rank's share of a tokenize run: reads its inputs, decodes and crops them on worker
/// threads, encodes them one input per encoder lane, and appends the records in batches through
/// a writer thread.
///
/// Stages overlap and every queue is bounded (decoded images and encoded records: a window of a
/// few batches each; batches waiting for the writer: two), so memory does not grow with the
/// dataset. Records are numbered by input order
/// then view, whatever order the workers finish in. Each committed batch carries the number of
/// inputs it completes, so a restarted run continues exactly after the last commit.
public final class TokenizeJob {
    public let inputs: DatasetInputs
    /// The weights file's metadata (where the weights come from; `mtok.untrained`).
    public private(set) var modelMetadata: [String: String] = [:]
    public let options: TokenizeOptions
    /// Where this rank writes: the cache itself, or its part of a scaled-out run.
    public let outputPath: String
    /// This rank's slice of `inputs.items`.
    public let range: Range<Int>
    /// Inputs the cache held before this run's list (an append's: those before it; else 0).
    /// Progress markers and failures.jsonl count inputs from the cache's first.
    public let inputBase: Int
    /// With --append: inputs of the scan that the cache already held.
    public let alreadyInCache: Int
    let encoder: MergeTokEncoder
    let preprocessor: Preprocessor
    let writer: CacheWriter
    let indexDType: TensorDType
    let groupDType: TensorDType

    public struct SetupError: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Checks everything before any work: the input list, the model, and the output (an existing
    /// cache made with other settings is refused).
    public init(input: String, modelPath: String, output: String, options: TokenizeOptions) throws {
        guard options.worldSize >= 1, (0..<options.worldSize).contains(options.rank) else {
            throw SetupError(message: "rank \(options.rank) is not in 0..<\(options.worldSize)")
        }
        guard !options.views.isEmpty, options.batchSize >= 1 else { throw SetupError(message: "need at least one view and a positive batch size") }
        try Self.checkOutputOutsideInput(input: input, output: output)
        var scanned: DatasetInputs
        do { scanned = try DatasetInputs.scan(input) } catch { throw SetupError(message: "input \(error)") }
        if let limit = options.limit { scanned.items.truncate(to: limit) }
        var growth: CacheGrowth?
        if options.append {
            guard options.worldSize == 1 else {
                throw SetupError(message: "--append grows a cache from one process: it takes no --rank or --world-size")
            }
            growth = try CacheGrowth.plan(cache: output, input: input, scanned: scanned, view: options.views[0].number)
            scanned = growth!.inputs
        }
        inputs = scanned
        inputBase = growth?.inputBase ?? 0
        alreadyInCache = growth?.alreadyThere ?? 0
        let n = scanned.items.count
        range = (n * options.rank / options.worldSize)..<(n * (options.rank + 1) / options.worldSize)

        let weights: EncoderWeights
        do { weights = try EncoderWeights.load(path: modelPath) } catch {
            throw SetupError(message: "model \(modelPath) does not load: \(error)")
        }
        let side = weights.config.resolution
        if let asked = options.resolution, asked != side {
            throw SetupError(message: "model \(modelPath) takes \(side)×\(side) inputs; --resolution is \(asked)")
        }
        var options = options
        options.resolution = side
        self.options = options
        encoder = MergeTokEncoder(weights: weights)
        preprocessor = Preprocessor(resolution: side, crop: options.crop, decodeOptions: options.decode)
        indexDType = weights.config.codebookEntries <= 65536 ? .u16 : .u32
        groupDType = weights.config.keptTokens <= 256 ? .u8 : .u16

        var settings = try Self.settings(inputs: scanned, modelPath: modelPath, weights: weights, options: options,
                                         indexDType: indexDType, groupDType: groupDType)
        if let growth {
            settings = try growth.settings(run: settings, path: output)
        } else if options.worldSize == 1, let existing = try? Manifest.read(fromCache: output),
                  let appends = existing.settings[CacheGrowth.appendsKey] {
            // The same command again on a grown cache: its first run's inputs, and what was added since.
            guard existing.complete else {
                throw SetupError(message: "output \(output) has an unfinished --append: run that command again (with --append and the same inputs)")
            }
            settings = CacheGrowth.setting(CacheGrowth.appendsKey, to: appends, in: settings)
        }
        if options.worldSize > 1 {
            outputPath = CacheMerger.partPath(root: output, rank: options.rank)
            if FileManager.default.fileExists(atPath: output + "/" + Manifest.fileName) {
                throw SetupError(message: "output \(output) is already one cache (its parts were merged): nothing to do for rank \(options.rank)")
            }
            try Self.checkPartsAgree(root: output, worldSize: options.worldSize)
            do {
                // A merge tried before every rank finished leaves its lock file: no obstacle.
                try CacheWriter.checkOutputDirectory(output, alsoAllowed: [CacheMerger.partsDirectory, CacheMerger.lockFile])
                try OwnFiles.checkDirectory(output + "/" + CacheMerger.partsDirectory)
                try OwnFiles.makeDirectory(outputPath)
            } catch {
                throw SetupError(message: "output \(output): \(error is CacheError ? "\(error)" : describeFileError(error))")
            }
        } else {
            outputPath = output
        }
        do {
            writer = try CacheWriter(path: outputPath, settings: settings, classes: scanned.classes,
                                     part: options.worldSize > 1 ? Manifest.Part(rank: options.rank, worldSize: options.worldSize) : nil,
                                     arithmetic: Self.arithmetic, growing: growth != nil, options: options.writer)
        } catch let e as CacheError where e.kind == .settingsMismatch {
            throw SetupError(message: "output \(outputPath): \(e)\(Self.hint(forDifference: e.message))")
        } catch {
            throw SetupError(message: "output \(outputPath): \(error)")
        }
        modelMetadata = weights.metadata
    }

    /// What a settings difference between a cache and a run usually means, and what to do.
    static func hint(forDifference message: String) -> String {
        if message.contains("inputs.") {
            return ". The inputs are not those of the run that wrote it (another folder or list, images added or removed, or another --limit): resume with the same inputs and --limit, add the new inputs to the finished cache with --append, or write to a new output"
        }
        if message.contains("preprocessing.") || message.contains("_dtype") {
            return ". It was written with other --crop, --views, --latent-dtype or decode options (mtok info shows them): resume with the same, or write to a new output"
        }
        if message.contains("model.") {
            return ". It was written with another model (weights or configuration): use that model, or write to a new output"
        }
        return ""
    }

    /// Every part already under `root` must belong to a run of the same world size: parts of
    /// another split could never be merged with this one.
    static func checkPartsAgree(root: String, worldSize: Int) throws {
        let parts = root + "/" + CacheMerger.partsDirectory
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: parts)) ?? []).sorted() where name.hasPrefix("rank-") {
            guard let m = try? Manifest.read(fromCache: parts + "/" + name), let part = m.part else { continue }
            if part.worldSize != worldSize {
                throw SetupError(message: "output \(root) holds parts of a run split \(part.worldSize) ways (\(CacheMerger.partsDirectory)/\(name)); this one is split \(worldSize) ways: use the same world size, or another output")
            }
        }
    }

    /// A cache inside a folder input would be listed with the inputs the next time (a class
    /// folder, or files the flat folder does not take), so the same command could never resume.
    static func checkOutputOutsideInput(input: String, output: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory), isDirectory.boolValue else { return }
        // Real paths of the input and of the output's nearest existing ancestor (it may not exist yet).
        func real(_ path: String) -> String? {
            guard let r = realpath(path, nil) else { return nil }
            defer { free(r) }
            return String(cString: r)
        }
        guard let inputReal = real(input) else { return }
        // Split by hand: NSString's path methods trap on some short relative paths ("c").
        let absolute = output.hasPrefix("/") ? output : FileManager.default.currentDirectoryPath + "/" + output
        var parts = absolute.split(separator: "/").map(String.init)
        var tail: [String] = []
        while !parts.isEmpty, real("/" + parts.joined(separator: "/")) == nil {
            tail.insert(parts.removeLast(), at: 0)
        }
        guard let base = real("/" + parts.joined(separator: "/")) else { return }
        let outputReal = ([base == "/" ? "" : base] + tail).joined(separator: "/")
        if outputReal == inputReal || outputReal.hasPrefix(inputReal.hasSuffix("/") ? inputReal : inputReal + "/") {
            throw SetupError(message: "output \(output) is inside the input folder \(input): the next run would list the cache among the inputs; write it elsewhere")
        }
    }

    /// What computes this build's records on this machine: the encoder's arithmetic revision and
    /// the OpenBLAS kernel set in use (`OPENBLAS_CORETYPE` can force another).
    public static var arithmetic: Manifest.Arithmetic {
        Manifest.Arithmetic(revision: MergeTokEncoder.arithmeticRevision,
                            blas: "\(BLAS.kernel.library) \(BLAS.kernel.version)", kernel: BLAS.kernel.core)
    }

    /// The other arithmetics that made records already in the output (a resume on another
    /// machine kind): empty when every earlier record was made as this run makes them.
    public var earlierArithmetics: [Manifest.Arithmetic?] {
        writer.manifest.arithmeticUse.map(\.madeBy).filter { $0 != Self.arithmetic }
    }

    /// Inputs of this rank already committed by an earlier run.
    public var alreadyDone: Int { min(max(0, (writer.inputsDone ?? 0) - inputBase), range.count) }

    /// What the manifest records as `settings`: everything that decides the records' bytes and
    /// numbering, and nothing that does not (threads, batch size).
    static func settings(inputs: DatasetInputs, modelPath: String, weights: EncoderWeights, options: TokenizeOptions,
                         indexDType: TensorDType, groupDType: TensorDType) throws -> JSONValue {
        let config = try JSONValue.parse(Array(weights.config.jsonString().utf8))
        let (weightsHash, _) = try CacheVerifier.sha256(ofFile: modelPath)
        var fingerprint = SHA256()
        for item in inputs.items {
            fingerprint.update(data: Array("\(item.id)\u{0}\(item.label)\u{0}".utf8))
        }
        let provenance = weights.metadata.filter { $0.key != EncoderConfig.metadataKey }.sorted { $0.key < $1.key }
        return .object([
            ("model", .object([
                ("config", config),
                ("weights_sha256", .string(weightsHash)),
                ("arithmetic_revision", .number(Double(MergeTokEncoder.arithmeticRevision))),
                ("metadata", .object(provenance.map { ($0.key, .string($0.value)) })),
            ])),
            ("preprocessing", .object([
                ("resolution", .number(Double(weights.config.resolution))),
                ("crop", .string(options.crop.rawValue)),
                ("views", .array(options.views.map { .number(Double($0.number)) })),
                ("ten_crop_range", .number(1.1)),
                ("normalize", .string("x/127.5-1")),
                ("decode", .string("pillow-convert-rgb")),
                // Whose resampling arithmetic the pixels follow: Pillow 13 orders the two passes
                // by the image's shape, earlier Pillow did not (PillowResampler).
                ("resample", .string("pillow-13")),
            ] + decodeSettings(options.decode))),
            ("latent_dtype", .string(options.latentDType.rawValue)),
            ("index_dtype", .string(indexDType.rawValue)),
            ("group_dtype", .string(groupDType.rawValue)),
            ("inputs", .object([
                ("kind", .string(inputs.kind.rawValue)),
                ("count", .number(Double(inputs.items.count))),
                ("fingerprint", .string(CacheVerifier.hex(fingerprint.finalize()))),
            ])),
        ])
    }

    /// The decode choices that differ from the defaults (so a cache made with the defaults has the
    /// same settings as before these options existed, and resumes).
    static func decodeSettings(_ d: DecodeOptions) -> [(String, JSONValue)] {
        let standard = DecodeOptions()
        var out: [(String, JSONValue)] = []
        if d.appliesExifOrientation != standard.appliesExifOrientation { out.append(("exif_transpose", .bool(d.appliesExifOrientation))) }
        if let bg = d.alphaBackground {
            out.append(("alpha_background", .array([bg.red, bg.green, bg.blue].map { .number(Double($0)) })))
        }
        if d.acceptsTruncatedJPEG != standard.acceptsTruncatedJPEG { out.append(("accept_truncated_jpeg", .bool(d.acceptsTruncatedJPEG))) }
        if d.maxPixels != standard.maxPixels { out.append(("max_pixels", .number(Double(d.maxPixels)))) }
        return out
    }

    /// The decode choices a cache's `preprocessing` settings record (`decodeSettings` read back).
    public static func decodeOptions(fromSettings pre: JSONValue?) -> DecodeOptions {
        var options = DecodeOptions()
        if pre?["exif_transpose"] == .bool(true) { options.appliesExifOrientation = true }
        if pre?["accept_truncated_jpeg"] == .bool(true) { options.acceptsTruncatedJPEG = true }
        if let n = pre?["max_pixels"]?.intValue { options.maxPixels = n }
        if case let .array(rgb)? = pre?["alpha_background"], rgb.count == 3 {
            let parts = rgb.compactMap { $0.intValue.flatMap(UInt8.init(exactly:)) }
            if parts.count == 3 { options.alphaBackground = RGBColor(red: parts[0], green: parts[1], blue: parts[2]) }
        }
        return options
    }

    // MARK: Running

    /// Runs until every input of this rank is committed, `shouldStop` returns true (the current
    /// batch is finished and committed first), or `maxFailures` is exceeded.
    public func run(progress: TokenizeProgress? = nil, shouldStop: @escaping @Sendable () -> Bool = { false }) throws -> TokenizeSummary {
        let start = Date()
        Parallel.setThreadCount(max(1, options.encoderThreads))
        let first = range.lowerBound + alreadyDone
        try FailureLog.truncate(at: outputPath + "/failures.jsonl", keepingBelow: inputBase + first)
        var summary = TokenizeSummary(cache: outputPath)
        summary.skippedAlreadyDone = alreadyDone
        progress?.begin(total: range.count, done: alreadyDone)

        let queue = PreparedQueue(range: first..<range.upperBound, window: max(4, 2 * options.batchSize + options.decodeWorkers))
        let job = UncheckedBox(self)
        var workers: [Thread] = []
        for _ in 0..<max(1, options.decodeWorkers) {
            let t = Thread {
                let me = job.value
                while let i = queue.claim() { queue.put(me.prepare(i)) }
            }
            t.stackSize = 8 << 20
            workers.append(t)
            t.start()
        }
        // Encoder lanes: each claims the next decoded input in order and encodes it on its own
        // (single-threaded products), with no barrier at batch ends. Handing out whole batches
        // left a lane idle at the end of each batch whenever the decode thread had slowed the
        // other one; a lane here simply takes fewer inputs. Every image runs the same products
        // however it is scheduled, so the records do not change.
        let lanes = max(1, Parallel.lanes)
        let encoded = EncodedQueue(first: first, window: max(4, 2 * options.batchSize) + lanes, lanes: lanes)
        let encoderThread = Thread {
            let me = job.value
            Parallel.forEach(lanes, lanes: lanes) { _, _ in
                while encoded.reserve() {
                    guard let p = queue.take() else {
                        encoded.unreserve()
                        break
                    }
                    let t = Date()
                    let e = me.encode(p)
                    encoded.put(e, seconds: Date().timeIntervalSince(t))
                }
                encoded.laneFinished()
            }
        }
        encoderThread.stackSize = 8 << 20
        encoderThread.start()
        let sink = WriterThread(writer: writer, failuresPath: outputPath + "/failures.jsonl")
        defer {
            queue.stop()
            encoded.stop()
            sink.close()
            while !encoderThread.isFinished { usleep(1000) }
        }

        var batchRecords: [TokenRecord] = []
        var batchFailures: [FailureLog.Entry] = []
        var failures = 0
        func flush(inputsDone: Int) throws {
            guard !batchRecords.isEmpty || !batchFailures.isEmpty else { return }
            summary.records += batchRecords.count
            try sink.submit(records: batchRecords, failures: batchFailures, inputsDone: inputsDone)
            batchRecords.removeAll(keepingCapacity: true)
            batchFailures.removeAll()
        }
        while let e = encoded.take() {
            summary.images += 1
            switch e.outcome {
            case .failure(let error):
                failures += 1
                batchFailures.append(FailureLog.Entry(index: inputBase + e.index, id: e.item.id, path: e.item.path, kind: error.kind, reason: error.reason))
            case .success(let views):
                // An encoder error stops the run before this batch is committed.
                batchRecords += try views.get()
            }
            progress?.advance(failures: failures)
            let done = e.index + 1 - range.lowerBound
            if let max = options.maxFailures, failures > max {
                try flush(inputsDone: inputBase + done)
                summary.stopReason = "more than \(max) inputs failed (failures.jsonl lists them); the run stopped with them committed as failures. Run the same command again to go on past them (each run counts its own failures); to tokenize them once fixed, fix them and write a new cache"
                break
            }
            if batchRecords.count >= options.batchSize || shouldStop() {
                try flush(inputsDone: inputBase + done)
                if shouldStop() {
                    summary.stopReason = "interrupted; run the same command again to resume"
                    break
                }
            }
        }
        if summary.stopReason == nil { try flush(inputsDone: inputBase + range.count) }
        queue.stop()
        encoded.stop()
        try sink.drain()
        for t in workers { while !t.isFinished { usleep(1000) } }
        while !encoderThread.isFinished { usleep(1000) }
        summary.encoderSeconds = encoded.encodingSeconds / Double(lanes)
        summary.failures = failures
        summary.views = options.views.count
        if summary.stopReason == nil {
            let m = try writer.finish()
            summary.finished = true
            summary.contentDigest = m.contentDigest
            // A part's statistics would be recomputed by the merge: only whole caches get them.
            if options.worldSize == 1 {
                do { summary.statistics = try CacheStatistics.writeFile(forCache: outputPath) } catch {
                    summary.statisticsProblem = "\(error)"
                }
            }
        }
        let m = writer.manifest
        summary.totalRecords = m.totals.records
        summary.payloadBytes = m.totals.payloadBytes
        summary.compressedBytes = m.totals.compressedBytes
        summary.bytesOnDisk = m.totals.bytesOnDisk
        summary.arithmetic = m.arithmeticUse
        summary.seconds = Date().timeIntervalSince(start)
        progress?.end()
        return summary
    }

    struct RecordMeta {
        var item: InputItem
        var view: View
        var width: Int
        var height: Int
        var box: CropBox
        var sha256: String
    }

    struct Prepared: @unchecked Sendable {  // handed from one worker to the consumer, never shared
        var index: Int
        var item: InputItem
        var outcome: Result<(inputs: [[Float]], meta: [RecordMeta]), ImageDecodingError>
    }

    /// An input after the encoder: its records, or why it has none (a decode failure, or an
    /// encoder error that stops the run).
    struct Encoded: @unchecked Sendable {  // handed from one lane to the consumer, never shared
        var index: Int
        var item: InputItem
        var outcome: Result<Result<[TokenRecord], any Error>, ImageDecodingError>
    }

    /// Encodes the views of a prepared input and makes their records.
    func encode(_ p: Prepared) -> Encoded {
        let outcome = p.outcome.map { prepared in
            Result { try zip(prepared.meta, prepared.inputs).map { try makeRecord($0, encoder.encode(image: $1)) } }
        }
        return Encoded(index: p.index, item: p.item, outcome: outcome)
    }

    /// Reads and hashes input `index`, and decodes and crops each of its views (each view decodes
    /// only the region it needs, which for one or two views is cheaper than one full decode).
    func prepare(_ index: Int) -> Prepared {
        let item = inputs.items[index]
        guard let data = FileManager.default.contents(atPath: item.path) else {
            return Prepared(index: index, item: item, outcome: .failure(ImageDecodingError(.io, path: item.path, reason: "cannot read file")))
        }
        let bytes = [UInt8](data)
        let sha = CacheVerifier.hex(SHA256.hash(data: bytes))
        do {
            var out: [[Float]] = []
            var meta: [RecordMeta] = []
            for (view, p) in zip(options.views, try preprocessor.preprocessViews(bytes: bytes, path: item.path, views: options.views)) {
                out.append(p.image.floatCHW())
                let box = CropBox(x: Int(p.cropX.rounded()), y: Int(p.cropY.rounded()),
                                  width: Int(p.cropWidth.rounded()), height: Int(p.cropHeight.rounded()))
                meta.append(RecordMeta(item: item, view: view, width: p.sourceWidth, height: p.sourceHeight, box: box, sha256: sha))
            }
            return Prepared(index: index, item: item, outcome: .success((out, meta)))
        } catch {
            return Prepared(index: index, item: item, outcome: .failure(error))
        }
    }

    func makeRecord(_ meta: RecordMeta, _ e: EncodedImage) -> TokenRecord {
        let k = e.indices.count
        let z = e.latents.count / max(1, k)
        var indexBytes: [UInt8] = []
        indexBytes.reserveCapacity(k * indexDType.byteSize)
        for v in e.indices {
            if indexDType == .u16 { withUnsafeBytes(of: UInt16(v).littleEndian) { indexBytes += $0 } } else { withUnsafeBytes(of: v.littleEndian) { indexBytes += $0 } }
        }
        var groupBytes: [UInt8] = []
        for g in e.groups {
            if groupDType == .u8 { groupBytes.append(UInt8(g)) } else { withUnsafeBytes(of: g.littleEndian) { groupBytes += $0 } }
        }
        return TokenRecord(
            id: meta.item.id, view: meta.view.number, label: meta.item.label, sourceWidth: meta.width, sourceHeight: meta.height,
            cropBox: meta.box, sourceSHA256: meta.sha256,
            latents: NamedTensor(name: "latents", dtype: options.latentDType, shape: [k, z],
                                 bytes: FloatConversion.encode(e.latents, as: options.latentDType)),
            logvar: e.logvar.map { NamedTensor(name: "logvar", dtype: options.latentDType, shape: [k, z],
                                               bytes: FloatConversion.encode($0, as: options.latentDType)) },
            indices: NamedTensor(name: "indices", dtype: indexDType, shape: [k], bytes: indexBytes),
            groups: NamedTensor(name: "groups", dtype: groupDType, shape: [e.groups.count], bytes: groupBytes))
    }
}

/// Passes a reference into a worker thread's closure.
struct UncheckedBox<T>: @unchecked Sendable {  // the job is immutable while workers run
    let value: T
    init(_ value: T) { self.value = value }
}
