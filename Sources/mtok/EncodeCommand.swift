import ArgumentParser
import EncoderModel
import Foundation
import ImageDecoding
import TensorCore
import TensorFiles

/// `mtok encode`: run the encoder on a few inputs and write latents, indices and groups.
struct EncodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode",
        abstract: "Encode inputs to latents [K,z], indices [K] and merge groups [N].",
        discussion: """
        INPUT is an image (JPEG or PNG, decoded and cropped as `mtok tokenize` does: --crop, view 0) \
        or a .npy float32 array [3,R,R] in [-1,1], taken as the exact encoder input. Several inputs give tensors with a leading batch axis. The output format follows the \
        extension of --out: .safetensors, .npz or .json. With a VAE head, `logvar` [K,z] is \
        written too.
        """)

    @Argument(help: "Images, or .npy files (float32 [3,R,R]).") var inputs: [String]
    @Option(help: "Crop for image inputs: adm or resize-center.") var crop = "adm"
    @Option(help: "Encoder weights (.safetensors).") var model: String
    @Option(help: "Expected input side R; must equal the model's resolution.") var resolution: Int?
    @Option(help: "Output file: .safetensors, .npz or .json.") var out: String
    @Option(help: "Encoder threads.") var threads: Int = 1

    func validate() throws {
        guard [".safetensors", ".npz", ".json"].contains(where: { out.hasSuffix($0) }) else {
            throw ValidationError("--out must end in .safetensors, .npz or .json")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard CropMode(rawValue: crop) != nil else { throw ValidationError("--crop must be adm or resize-center") }
    }

    func run() throws {
        Parallel.setThreadCount(threads)
        let weights: EncoderWeights
        do { weights = try EncoderWeights.load(path: model) } catch { throw fail("model \(model) does not load: \(error)") }
        let config = weights.config
        if let note = EncoderWeights.untrainedNote(metadata: weights.metadata) {
            FileHandle.standardError.write(Data("mtok: note: \(model) holds \(note)\n".utf8))
        }
        if let resolution, resolution != config.resolution {
            throw fail("--resolution \(resolution) differs from the model's \(config.resolution)", code: 64)
        }
        let preprocessor = Preprocessor(resolution: config.resolution, crop: CropMode(rawValue: crop)!)
        let images: [[Float]]
        do {
            images = try inputs.map { path in
                path.hasSuffix(".npy") ? try Self.readInput(path, resolution: config.resolution)
                                       : try preprocessor.preprocessFile(atPath: path).floatCHW()
            }
        } catch let e as ImageDecodingError {
            throw fail("\(e)")
        } catch let e as ValidationError {
            throw fail(e.message)  // a bad input file, not a bad command line: no usage text
        }
        let encoder = MergeTokEncoder(weights: weights)
        let results = try encoder.encode(batch: images)
        let tensors = Self.tensors(results, config: config, batched: inputs.count > 1)
        let bytes: [UInt8]
        if out.hasSuffix(".safetensors") {
            bytes = Safetensors.serialize(tensors, metadata: [EncoderConfig.metadataKey: config.jsonString()])
        } else if out.hasSuffix(".npz") {
            bytes = NumpyFiles.npz(tensors)
        } else {
            bytes = Array(Self.json(tensors).utf8)
        }
        try writeOutput(bytes, to: out)
        print("wrote \(out): \(inputs.count) image(s), \(config.keptTokens) tokens of \(config.zChannels) channels each")
    }

    static func readInput(_ path: String, resolution r: Int) throws -> [Float] {
        let file = try MappedFile(path: path)
        let npy = try NumpyFiles.readNpy(file.bytes)
        guard npy.dtype == .f32, npy.shape == [3, r, r] else {
            throw ValidationError("\(path): expected float32 [3,\(r),\(r)], got \(npy.dtype.rawValue) \(npy.shape)")
        }
        var values = [Float](repeating: 0, count: 3 * r * r)
        npy.data.withUnsafeBytes { raw in
            values.withUnsafeMutableBufferPointer { FloatConversion.decode(raw, as: .f32, into: $0) }
        }
        return values
    }

    static func tensors(_ results: [EncodedImage], config: EncoderConfig, batched: Bool) -> [NamedTensor] {
        let k = config.keptTokens, z = config.zChannels, n = config.tokenCount
        let lead = batched ? [results.count] : []
        func bytes<T>(_ values: [T]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }
        var out = [
            NamedTensor(name: "latents", dtype: .f32, shape: lead + [k, z], bytes: bytes(results.flatMap(\.latents))),
            NamedTensor(name: "indices", dtype: .u32, shape: lead + [k], bytes: bytes(results.flatMap(\.indices))),
            NamedTensor(name: "groups", dtype: .u16, shape: lead + [n], bytes: bytes(results.flatMap(\.groups))),
        ]
        if config.vae {
            out.append(NamedTensor(name: "logvar", dtype: .f32, shape: lead + [k, z],
                                   bytes: bytes(results.flatMap { $0.logvar ?? [] })))
        }
        return out
    }

    /// `{"name": {"dtype", "shape", "data": [flat values]}}`; floats in shortest round-trip form.
    static func json(_ tensors: [NamedTensor]) -> String {
        let entries = tensors.map { t -> String in
            let values: [String] = t.bytes.withUnsafeBytes { raw in
                let count = t.shape.reduce(1, *)
                switch t.dtype {
                case .f32: return (0..<count).map { "\(raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self))" }
                case .u32: return (0..<count).map { "\(raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))" }
                default: return (0..<count).map { "\(raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))" }
                }
            }
            let shape = t.shape.map(String.init).joined(separator: ",")
            return "\"\(t.name)\":{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],\"data\":[\(values.joined(separator: ","))]}"
        }
        return "{" + entries.joined(separator: ",") + "}\n"
    }
}
