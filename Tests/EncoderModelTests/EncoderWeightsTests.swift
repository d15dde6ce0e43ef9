import Foundation
import Testing
import TensorFiles
@testable import EncoderModel

@Suite struct EncoderWeightsTests {
    func tempPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("mtok-enc-\(UUID().uuidString)-\(name)").path
    }

    /// Rewrites the tiny fixture without one tensor and with another misshapen: both are named.
    @Test func missingAndMisshapenTensorsAreEachNamed() throws {
        let file = try MappedFile(path: Fixture.path("tiny.safetensors"))
        var (tensors, metadata) = try Safetensors.decode(file.bytes)
        tensors.removeAll { $0.name == "encoder.attn.blocks.1.mlp.fc2.bias" }
        let i = tensors.firstIndex { $0.name == "encoder.norm_out.weight" }!
        tensors[i] = NamedTensor(name: tensors[i].name, dtype: .f32, shape: [32], bytes: Array(tensors[i].bytes[0..<128]))
        let path = tempPath("broken.safetensors")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(Safetensors.serialize(tensors, metadata: metadata)).write(to: URL(fileURLWithPath: path))
        do {
            _ = try EncoderWeights.load(path: path)
            Issue.record("broken weights loaded")
        } catch let EncoderError.invalidWeights(problems) {
            #expect(problems.count == 2)
            #expect(problems.contains { $0.contains("missing encoder.attn.blocks.1.mlp.fc2.bias") })
            #expect(problems.contains { $0.contains("encoder.norm_out.weight has shape [32], expected [64]") })
        }
    }

    @Test func branchIsReadFromTensors() throws {
        let w = try EncoderWeights.load(path: Fixture.path("tiny-vae-vq.safetensors"),
                                        config: EncoderPresets.named("tiny")!.config)
        #expect(w.config.vae)
        #expect(w.config.quantizer == .vq && w.config.codebookSize == 64)
        let plain = try EncoderWeights.load(path: Fixture.path("tiny.safetensors"),
                                            config: EncoderPresets.named("tiny-vae-vq")!.config)
        #expect(!plain.config.vae && plain.config.quantizer == .lfq)
    }

    @Test func sidecarConfigIsRead() throws {
        let w = try EncoderWeights.random(config: EncoderPresets.named("tiny-iso")!.config, seed: 5)
        let tensors = try w.safetensorsBytes().withUnsafeBytes { try Safetensors.decode($0) }.tensors
        let dir = tempPath("sidecar")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/model.safetensors"
        try Data(Safetensors.serialize(tensors, metadata: [:])).write(to: URL(fileURLWithPath: path))
        #expect(throws: EncoderError.self) { try EncoderWeights.load(path: path) }
        try Data(w.config.jsonString().utf8).write(to: URL(fileURLWithPath: dir + "/model.json"))
        #expect(try EncoderWeights.load(path: path).config == w.config)
    }

    @Test func randomWeightsAreSeededAndRoundTrip() throws {
        let config = EncoderPresets.named("tiny-vae-vq")!.config
        let a = try EncoderWeights.random(config: config, seed: 11)
        let b = try EncoderWeights.random(config: config, seed: 11)
        let c = try EncoderWeights.random(config: config, seed: 12)
        #expect(a.safetensorsBytes() == b.safetensorsBytes())
        #expect(a.safetensorsBytes() != c.safetensorsBytes())
        #expect(a.metadata[EncoderWeights.untrainedKey] == "true")
        let path = tempPath("random.safetensors")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(a.safetensorsBytes()).write(to: URL(fileURLWithPath: path))
        let loaded = try EncoderWeights.load(path: path)
        #expect(loaded.config == config)
        #expect(loaded.safetensorsBytes() == a.safetensorsBytes())
    }
}
