import ArgumentParser
import EncoderModel
import Foundation

/// `mtok model init|info|presets`: encoder weights files and the preset catalogue.
struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Create, inspect and list MergeTok encoder weights.",
        subcommands: [ModelInit.self, ModelInfo.self, ModelPresets.self]
    )
}

struct ModelInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write seeded random (untrained) weights for a preset as .safetensors.")

    @Option(help: "Preset name (see `mtok model presets`).") var preset: String
    @Option(help: "Random seed; the same seed gives the same bytes.") var seed: UInt64 = 0
    @Option(help: "Output .safetensors path.") var out: String

    func validate() throws {
        guard EncoderPresets.named(preset) != nil else {
            throw ValidationError("unknown preset '\(preset)'; run `mtok model presets`")
        }
    }

    func run() throws {
        let config = EncoderPresets.named(preset)!.config
        let weights = try EncoderWeights.random(config: config, seed: seed)
        try writeOutput(weights.safetensorsBytes(extraMetadata: ["mtok.preset": preset]), to: out)
        print("wrote \(out): preset \(preset), seed \(seed), \(config.parameterCount) parameters (untrained)")
    }
}

struct ModelInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a weights file's configuration, parameter count and FLOPs per image.")

    @Argument(help: "A .safetensors weights file (config in metadata or a sidecar JSON).") var file: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let weights = try EncoderWeights.load(path: file)
        let c = weights.config
        let schedule = MergeSchedule(config: c)
        let flops = 2 * c.macsPerImage
        let untrained = weights.metadata[EncoderWeights.untrainedKey] == "true"
        if json {
            var object: [String: Any] = [:]
            object["config"] = try JSONSerialization.jsonObject(with: Data(c.jsonString().utf8))
            object["parameters"] = c.parameterCount
            object["flops_per_image"] = flops
            object["tokens"] = c.tokenCount
            object["kept_tokens"] = c.keptTokens
            object["merge_schedule"] = schedule.effective
            object["untrained"] = untrained
            object["metadata"] = weights.metadata.filter { $0.key != EncoderConfig.metadataKey }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let preset = weights.metadata["mtok.preset"].map { "  preset \($0)" } ?? ""
        print("""
        file            \(file)\(untrained ? "  (UNTRAINED random weights)" : "")\(preset)
        resolution      \(c.resolution)
        ch              \(c.ch)
        ch_mult         \(c.chMult)
        num_res_blocks  \(c.numResBlocks)
        num_att_blocks  \(c.numAttBlocks)
        num_heads       \(c.heads) (head width \(c.headWidth))
        z_channels      \(c.zChannels)\(c.vae ? " (VAE head: mean + logvar)" : "")
        merge_num       \(c.mergeNum)  (N \(c.tokenCount) → K \(c.keptTokens), r = \(schedule.effective))
        isotropic       \(c.isotropic)
        quantizer       \(c.quantizer == .vq ? "vq, codebook \(c.codebookSize ?? 0)×\(c.zChannels)" : "lfq, 2^\(c.zChannels)")
        parameters      \(c.parameterCount)
        GFLOP/image     \(String(format: "%.2f", Double(flops) / 1e9))
        """)
    }
}

struct ModelPresets: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "presets", abstract: "List encoder presets.")

    @Flag(help: "Print {name: {summary, config}} as JSON (what tools/convert_checkpoint.py reads).") var json = false

    func run() throws {
        if json {
            var object: [String: Any] = [:]
            for p in EncoderPresets.all {
                object[p.name] = ["summary": p.summary,
                                  "config": try JSONSerialization.jsonObject(with: Data(p.config.jsonString().utf8))]
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let width = EncoderPresets.all.map(\.name.count).max() ?? 0
        for p in EncoderPresets.all {
            let gflop = Double(2 * p.config.macsPerImage) / 1e9
            let pad = String(repeating: " ", count: width - p.name.count)
            print("\(p.name)\(pad)  \(String(format: "%7.2f", gflop)) GFLOP  \(p.summary)")
        }
    }
}
