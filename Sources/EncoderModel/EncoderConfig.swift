/// Which quantizer turns a latent token into a discrete index.
public enum QuantizerKind: String, Codable, Sendable, Hashable {
    /// Lookup-free quantization: one sign bit per latent channel, channel 0 the least significant.
    case lfq
    /// Classic codebook VQ (`quantize.embedding.weight`, first-minimum squared distance).
    case vq
}

/// Encoder hyperparameters, under the names of the MergeVQ configs (spec §1).
///
/// `isotropic` is 0 for the CNN stem, 1 for a ViT stem whose width is `ch·ch_mult[-1]`, or the ViT
/// width itself when greater than 1 (the Python configs use `False`, `True` or an int; all three
/// decode). `vae` and `quantizer`/`codebook_size` describe the tensors a weights file holds; when
/// weights are loaded they are read from the tensors, not trusted from here.
public struct EncoderConfig: Sendable, Hashable {
    public var inChannels: Int = 3
    public var resolution: Int
    public var ch: Int
    public var chMult: [Int]
    public var numResBlocks: [Int]
    public var numAttBlocks: Int
    public var numHeads: Int
    public var headDim: Int?
    public var zChannels: Int
    public var mergeNum: Int
    public var mergeRatio: Int?
    public var isotropic: Int = 0
    /// conv_out emits 2z channels: mean and log-variance (spec §4.3).
    public var vae: Bool = false
    public var quantizer: QuantizerKind = .lfq
    /// Codebook rows for `.vq`; the LFQ codebook is implicitly 2^z.
    public var codebookSize: Int?

    public init(resolution: Int, ch: Int, chMult: [Int], numResBlocks: [Int], numAttBlocks: Int,
                numHeads: Int, headDim: Int? = nil, zChannels: Int, mergeNum: Int,
                isotropic: Int = 0, vae: Bool = false, quantizer: QuantizerKind = .lfq,
                codebookSize: Int? = nil) {
        self.resolution = resolution
        self.ch = ch
        self.chMult = chMult
        self.numResBlocks = numResBlocks
        self.numAttBlocks = numAttBlocks
        self.numHeads = numHeads
        self.headDim = headDim
        self.zChannels = zChannels
        self.mergeNum = mergeNum
        self.isotropic = isotropic
        self.vae = vae
        self.quantizer = quantizer
        self.codebookSize = codebookSize
    }

    // MARK: Derived shapes (spec §1)

    public var levels: Int { chMult.count }
    public var isIsotropic: Bool { isotropic != 0 }
    /// Token grid side `R / 2^(levels−1)`.
    public var gridSide: Int { resolution >> (levels - 1) }
    /// Tokens before merging, N.
    public var tokenCount: Int { gridSide * gridSide }
    /// Transformer width C.
    public var width: Int { isotropic > 1 ? isotropic : ch * chMult[levels - 1] }
    public var heads: Int {
        if let headDim { return max(width / headDim, numHeads) }
        return numHeads
    }
    public var headWidth: Int { width / heads }
    public var patchSize: Int { resolution / gridSide }
    /// Tokens kept, K = N − M.
    public var keptTokens: Int { tokenCount - mergeNum }
    /// conv_out output channels: z, or 2z with the VAE branch.
    public var headChannels: Int { vae ? 2 * zChannels : zChannels }
    public var codebookEntries: Int {
        quantizer == .vq ? (codebookSize ?? 0) : 1 << zChannels
    }

    func resBlocks(level: Int) -> Int { numResBlocks.count == 1 ? numResBlocks[0] : numResBlocks[level] }
    func levelInput(_ level: Int) -> Int { level == 0 ? ch : ch * chMult[level - 1] }
    func levelOutput(_ level: Int) -> Int { ch * chMult[level] }

    /// Checks every shape rule of spec §1 and §3.1.
    /// - Throws: ``EncoderError/invalidConfig(_:)`` listing each violated rule.
    public func validate() throws {
        var problems: [String] = []
        if inChannels != 3 { problems.append("in_channels must be 3, got \(inChannels)") }
        if chMult.isEmpty { problems.append("ch_mult is empty") }
        guard problems.isEmpty else { throw EncoderError.invalidConfig(problems) }
        if resolution <= 0 || resolution % (1 << (levels - 1)) != 0 {
            problems.append("resolution \(resolution) is not divisible by 2^(levels−1) = \(1 << (levels - 1))")
        }
        if numResBlocks.count != 1 && numResBlocks.count != levels {
            problems.append("num_res_blocks has \(numResBlocks.count) entries for \(levels) levels")
        }
        if numAttBlocks < 2 { problems.append("num_att_blocks must be ≥ 2, got \(numAttBlocks)") }
        if heads <= 0 || width % heads != 0 {
            problems.append("width \(width) is not divisible into \(heads) heads")
        }
        if width % 32 != 0 { problems.append("width \(width) is not divisible by 32 (GroupNorm)") }
        if !isIsotropic {
            for level in 0..<levels where levelOutput(level) % 32 != 0 || levelInput(level) % 32 != 0 {
                problems.append("level \(level) width is not divisible by 32 (GroupNorm)")
            }
        }
        if zChannels <= 0 || (quantizer == .lfq && zChannels > 32) {
            problems.append("z_channels \(zChannels) out of range")
        }
        if quantizer == .vq && (codebookSize ?? 0) <= 0 { problems.append("vq quantizer needs codebook_size") }
        if mergeNum < 0 || mergeNum >= tokenCount {
            problems.append("merge_num \(mergeNum) out of range for N = \(tokenCount)")
        }
        if problems.isEmpty {
            let schedule = MergeSchedule(config: self)
            let k = tokenCount - schedule.effective.reduce(0, +)
            let m = Int(Double(k).squareRoot())
            if m * m != k {
                problems.append("merge_num \(mergeNum) leaves K = \(k) tokens, not a perfect square")
            }
        }
        if !problems.isEmpty { throw EncoderError.invalidConfig(problems) }
    }
}
