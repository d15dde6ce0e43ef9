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
    /// product blocks per lane), never the bytes. Three images: one thread runs them in turn; two
    /// run two side by side and the third with both threads inside it; four run all three with
    /// the threads inside each.
    @Test(arguments: ["tiny", "tiny-iso", "tiny-vae-vq"])
    func threadCountsGiveIdenticalBytes(_ name: String) throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: name))
        let images = try Fixture.images(case: name)
        let batch = images + [images[0]]
        let alone = try Parallel.withThreadCount(1) { try batch.map { try encoder.encode(batch: [$0])[0] } }
        for threads in [1, 2, 4] {
            let together = try Parallel.withThreadCount(threads) { try encoder.encode(batch: batch) }
            #expect(together == alone, "\(threads) threads")
        }
    }

    @Test func wrongInputSizeThrows() throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: "tiny"))
        #expect(throws: EncoderError.self) { try encoder.encode(batch: [[0, 1, 2]]) }
    }
}
