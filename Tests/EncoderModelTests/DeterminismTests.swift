import Testing
import TensorCore
@testable import EncoderModel

/// Same bytes for every batch split, order and repetition (fixed thread count).
@Suite(.serialized) struct DeterminismTests {
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

    /// One image per worker thread (BLAS single-threaded) gives the same bytes as one at a time.
    @Test func imageWorkersGiveIdenticalBytes() throws {
        let before = BLAS.threadCount
        defer { BLAS.setThreadCount(before) }
        BLAS.setThreadCount(1)
        let weights = try Fixture.weights(case: "tiny")
        let images = try Fixture.images(case: "tiny")
        let batch = images + images + images
        let serial = try MergeTokEncoder(weights: weights).encode(batch: batch)
        let parallel = try MergeTokEncoder(weights: weights, imageWorkers: 2).encode(batch: batch)
        #expect(serial == parallel)
    }

    @Test func wrongInputSizeThrows() throws {
        let encoder = MergeTokEncoder(weights: try Fixture.weights(case: "tiny"))
        #expect(throws: EncoderError.self) { try encoder.encode(batch: [[0, 1, 2]]) }
    }
}
