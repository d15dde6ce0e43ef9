import Foundation

/// JSON under the spec's hyperparameter names. Decoding accepts the Python configs' spellings:
/// `num_res_blocks` as an int or a list, `isotropic` as a bool or an int; `double_z` and the
/// training-only keys are ignored (spec A4, A6).
extension EncoderConfig: Codable {
    enum CodingKeys: String, CodingKey {
        case inChannels = "in_channels", resolution, ch, chMult = "ch_mult", numResBlocks = "num_res_blocks"
        case numAttBlocks = "num_att_blocks", numHeads = "num_heads", headDim = "head_dim"
        case zChannels = "z_channels", mergeNum = "merge_num", mergeRatio = "merge_ratio"
        case isotropic, vae, quantizer, codebookSize = "codebook_size"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        resolution = try c.decode(Int.self, forKey: .resolution)
        ch = try c.decode(Int.self, forKey: .ch)
        chMult = try c.decode([Int].self, forKey: .chMult)
        if let list = try? c.decode([Int].self, forKey: .numResBlocks) {
            numResBlocks = list
        } else {
            numResBlocks = [try c.decode(Int.self, forKey: .numResBlocks)]
        }
        numAttBlocks = try c.decode(Int.self, forKey: .numAttBlocks)
        numHeads = try c.decode(Int.self, forKey: .numHeads)
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
        zChannels = try c.decode(Int.self, forKey: .zChannels)
        mergeNum = try c.decodeIfPresent(Int.self, forKey: .mergeNum) ?? 0
        mergeRatio = try c.decodeIfPresent(Int.self, forKey: .mergeRatio)
        inChannels = try c.decodeIfPresent(Int.self, forKey: .inChannels) ?? 3
        if let flag = try? c.decode(Bool.self, forKey: .isotropic) {
            isotropic = flag ? 1 : 0
        } else {
            isotropic = try c.decodeIfPresent(Int.self, forKey: .isotropic) ?? 0
        }
        vae = try c.decodeIfPresent(Bool.self, forKey: .vae) ?? false
        quantizer = try c.decodeIfPresent(QuantizerKind.self, forKey: .quantizer) ?? .lfq
        codebookSize = try c.decodeIfPresent(Int.self, forKey: .codebookSize)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(inChannels, forKey: .inChannels)
        try c.encode(resolution, forKey: .resolution)
        try c.encode(ch, forKey: .ch)
        try c.encode(chMult, forKey: .chMult)
        try c.encode(numResBlocks, forKey: .numResBlocks)
        try c.encode(numAttBlocks, forKey: .numAttBlocks)
        try c.encode(numHeads, forKey: .numHeads)
        try c.encodeIfPresent(headDim, forKey: .headDim)
        try c.encode(zChannels, forKey: .zChannels)
        try c.encode(mergeNum, forKey: .mergeNum)
        try c.encodeIfPresent(mergeRatio, forKey: .mergeRatio)
        try c.encode(isotropic, forKey: .isotropic)
        try c.encode(vae, forKey: .vae)
        try c.encode(quantizer, forKey: .quantizer)
        try c.encodeIfPresent(codebookSize, forKey: .codebookSize)
    }

    /// Compact, key-sorted JSON (what goes into safetensors metadata under ``metadataKey``).
    public func jsonString() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        // Encoding plain ints, arrays and strings cannot fail.
        let data = (try? enc.encode(self)) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    public static func fromJSON(_ text: String) throws -> EncoderConfig {
        try JSONDecoder().decode(EncoderConfig.self, from: Data(text.utf8))
    }

    /// The safetensors `__metadata__` key holding the config JSON.
    public static let metadataKey = "mtok.config"
}
