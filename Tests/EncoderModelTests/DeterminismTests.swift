import Testing
import TensorCore
@testable import EncoderModel

/// Same bytes for every batch split, order and repetition.
@Suite struct DeterminismTests {
    @Test(arguments: ["tiny", "tiny-iso", "tiny-vae-vq"])
    func batchSplitsGiveIdenticalBytes(_ name: String) throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: name))
        let images = try Fixture.images(case: name)
        let together = try encoder.encode(batch: images + images.reversed())
        let alone = try images.map { try encoder.encode(batch: [$0])[0] }
        #expect(together[0] == alone[0] && together[3] == alone[0])
        #expect(together[1] == alone[1] && together[2] == alone[1])
        #expect(try encoder.encode(batch: images) == Array(together[0..<2]))
    }

    /// Thread counts change who computes what (images per lane, tiles and heads per lane,
    /// product blocks per lane), never the bytes.
    @Test(arguments: ["tiny", "tiny-iso", "tiny-vae-vq"])
    func threadCountsGiveIdenticalBytes(_ name: String) throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: name))
        let images = try Fixture.images(case: name)
        let batch = images + images.reversed() + images  // 6 images: lanes plus a remainder for 4
        var outputs: [[EncodedImage]] = []
        for threads in [1, 2, 4] {
            try Parallel.withThreadCount(threads) {
                outputs.append(try encoder.encode(batch: batch))
                outputs.append(try batch.map { try encoder.encode(batch: [$0])[0] })
            }
        }
        for other in outputs.dropFirst() { #expect(other == outputs[0]) }
    }

    @Test func wrongInputSizeThrows() throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: "tiny"))
        #expect(throws: EncoderError.self) { try encoder.encode(batch: [[0, 1, 2]]) }
    }
}
