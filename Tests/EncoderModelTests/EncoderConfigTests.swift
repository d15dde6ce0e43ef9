import Testing
@testable import EncoderModel

/// Parameter counts, tensor counts and MACs against spec §5–§7.
@Suite struct EncoderConfigTests {
    func preset(_ name: String) -> EncoderConfig { EncoderPresets.named(name)!.config }

    @Test func tinyCounts() {
        #expect(preset("tiny").parameterCount == 288_936)
        #expect(preset("tiny").tensorSpecs.count == 63)
        #expect(preset("tiny-iso").parameterCount == 104_200)
    }

    @Test func shippedTensorCounts() {
        #expect(preset("mergevq-gr-d64-k144").tensorSpecs.count == 305)
        #expect(preset("mergevq-gr-d32-k144").tensorSpecs.count == 306)
        #expect(preset("mergevq-gr-d96-k144").tensorSpecs.count == 305)
        #expect(preset("mergevq-g-d64-k256").tensorSpecs.count == 279)
        #expect(preset("mergevq-r-vitb-k64").tensorSpecs.count == 177)
        #expect(preset("mergevq-gr-d64-k144").parameterCount == 62_666_578)
    }

    @Test func grD64Shapes() {
        let c = preset("mergevq-gr-d64-k144")
        #expect(c.width == 512 && c.heads == 8 && c.headWidth == 64)
        #expect(c.tokenCount == 256 && c.keptTokens == 144)
        let r = preset("mergevq-r-vitb-k64")
        #expect(r.width == 768 && r.heads == 12 && r.patchSize == 16)
    }

    /// Spec §6: GR-d64 CNN 39.02 GMAC + transformer 7.64 GMAC at K=144 (scores included).
    @Test func grD64Macs() {
        let total = Double(preset("mergevq-gr-d64-k144").macsPerImage) / 1e9
        #expect(abs(total - (39.02 + 7.64)) < 0.05, "\(total) GMAC")
    }

    @Test func configJSONRoundTrip() throws {
        for p in EncoderPresets.all {
            #expect(try EncoderConfig.fromJSON(p.config.jsonString()) == p.config)
        }
    }

    @Test func pythonSpellingsDecode() throws {
        let json = """
        {"resolution":256,"ch":64,"ch_mult":[1,1,2,4,8],"num_res_blocks":4,"num_att_blocks":12,
         "num_heads":8,"z_channels":18,"merge_num":112,"isotropic":false,"double_z":false}
        """
        let c = try EncoderConfig.fromJSON(json)
        #expect(c == preset("mergevq-gr-d64-k144"))
    }
}
