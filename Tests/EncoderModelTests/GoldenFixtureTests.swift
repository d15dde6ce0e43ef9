import Testing
import TensorFiles
@testable import EncoderModel

/// Swift encoder vs the float64 PyTorch reference (tools/encoder_fixtures.py).
///
/// Tolerance: |Δ| ≤ 1e-4·(1 + |ref|) on latents, logvar and every traced activation (float32
/// arithmetic against exact maths; observed ~1e-6). Indices, groups and sizes must be equal.
@Suite struct GoldenFixtureTests {
    static let tolerance: Float = 1e-4
    static let cases = ["tiny", "tiny-nomerge", "tiny-iso", "tiny-vae-vq"]

    @Test(arguments: cases)
    func outputsMatchReference(_ name: String) throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: name))
        let expected = try Fixture.tensors(name + ".expected.safetensors")
        let images = try Fixture.images(case: name)
        let outputs = try encoder.encode(batch: images)
        let k = encoder.config.keptTokens, z = encoder.config.zChannels, n = encoder.config.tokenCount
        let latents = Fixture.floats(expected["latents"]!)
        let indices = Fixture.integers(expected["indices"]!, as: UInt32.self)
        let groups = Fixture.integers(expected["groups"]!, as: UInt16.self)
        let sizes = Fixture.integers(expected["sizes"]!, as: Int32.self)
        for (b, out) in outputs.enumerated() {
            #expect(out.groups == Array(groups[(b * n)..<((b + 1) * n)]), "groups, image \(b)")
            #expect(out.sizes == sizes[(b * k)..<((b + 1) * k)].map { Int($0) }, "sizes, image \(b)")
            #expect(out.indices == Array(indices[(b * k)..<((b + 1) * k)]), "indices, image \(b)")
            let err = maxScaledError(out.latents, Array(latents[(b * k * z)..<((b + 1) * k * z)]))
            #expect(err <= Self.tolerance, "latents, image \(b): \(err)")
            if let lv = expected["logvar"] {
                let ref = Fixture.floats(lv)
                let got = try #require(out.logvar, "logvar missing for a VAE head")
                let e = maxScaledError(got, Array(ref[(b * k * z)..<((b + 1) * k * z)]))
                #expect(e <= Self.tolerance, "logvar, image \(b): \(e)")
            } else {
                #expect(out.logvar == nil)
            }
        }
    }

    /// One check per traced stage of image 0, so a mismatch names its layer.
    @Test(arguments: cases)
    func intermediateActivationsMatchReference(_ name: String) throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: name))
        let expected = try Fixture.tensors(name + ".expected.safetensors")
        var seen: [String: (shape: [Int], values: [Float])] = [:]
        _ = try encoder.encode(image: try Fixture.images(case: name)[0]) { point, shape, values in
            seen[point] = (shape, values)
        }
        let points = expected.keys.filter { $0.hasPrefix("trace.") }.sorted()
        #expect(!points.isEmpty)
        for key in points {
            let point = String(key.dropFirst("trace.".count))
            let ref = expected[key]!
            let got = try #require(seen[point], "no activation traced at \(point)")
            #expect(got.shape == ref.shape, "\(point) shape")
            let err = maxScaledError(got.values, Fixture.floats(ref))
            #expect(err <= Self.tolerance, "\(point): scaled error \(err)")
        }
    }

    @Test func groupInvariantsHold() throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: "tiny"))
        for out in try encoder.encode(batch: try Fixture.images(case: "tiny")) {
            var counts = [Int](repeating: 0, count: out.sizes.count)
            for g in out.groups { counts[Int(g)] += 1 }
            #expect(counts == out.sizes)
            #expect(counts.allSatisfy { $0 > 0 })
        }
    }
}
