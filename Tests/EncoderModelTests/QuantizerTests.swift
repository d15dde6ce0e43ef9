import Testing
@testable import EncoderModel

@Suite struct QuantizerTests {
    @Test func lfqChannelZeroIsLeastSignificant() {
        let u: [Float] = [1, -1, 0, 2,   -3, 0.5, .nan, -0.0]
        let idx = Quantizers.lfq(u, tokens: 2, width: 4, stride: 4)
        #expect(idx == [0b1001, 0b0010])
    }

    @Test func vqPicksFirstMinimum() {
        // Rows 1 and 2 are equally near to the token; the lower index must win.
        let codebook: [Float] = [5, 5,  1, 0,  1, 0,  -4, 0]
        let norms = Quantizers.squaredNorms(codebook, entries: 4, width: 2)
        let idx = Quantizers.vq([1, 0.25, -4, 0.5], tokens: 2, width: 2, stride: 2,
                                codebook: codebook, entries: 4, codebookNorms: norms)
        #expect(idx == [1, 3])
    }
}
