/// Named configurations: the spec's tiny test configs, MergeVQ's shipped configs and MergeTok
/// variants of them (VAE mean/logvar head plus a codebook VQ on the mean).
public enum EncoderPresets {
    public struct Preset: Sendable {
        public let name: String
        public let summary: String
        public let config: EncoderConfig
    }

    /// Rows of the MergeTok variants' codebook (16384 × z).
    public static let mergeTokCodebook = 16384

    public static let all: [Preset] = makeAll()

    public static func named(_ name: String) -> Preset? { all.first { $0.name == name } }

    private static func makeAll() -> [Preset] {
        var out: [Preset] = []
        let tiny = EncoderConfig(resolution: 64, ch: 32, chMult: [1, 1, 2], numResBlocks: [1, 1, 2],
                                 numAttBlocks: 2, numHeads: 2, zChannels: 8, mergeNum: 87)
        out.append(Preset(name: "tiny", summary: "spec §7 test config, CNN stem, K=169, LFQ", config: tiny))
        var iso = tiny
        iso.isotropic = 64
        iso.numResBlocks = [1]
        out.append(Preset(name: "tiny-iso", summary: "spec §7, ViT patchify stem (4×4), K=169, LFQ", config: iso))
        var nomerge = tiny
        nomerge.mergeNum = 0
        out.append(Preset(name: "tiny-nomerge", summary: "spec §7, no merging, K=256, LFQ", config: nomerge))
        var tinyTok = tiny
        tinyTok.vae = true
        tinyTok.quantizer = .vq
        tinyTok.codebookSize = 64
        out.append(Preset(name: "tiny-vae-vq", summary: "tiny with VAE head (2z) and a 64×8 codebook",
                          config: tinyTok))

        func mergevq(_ variant: String, ch: Int, chMult: [Int], heads: Int, headDim: Int? = nil,
                     isotropic: Int = 0, tokens: Int, k: Int) -> EncoderConfig {
            EncoderConfig(resolution: 256, ch: ch, chMult: chMult, numResBlocks: [4], numAttBlocks: 12,
                          numHeads: heads, headDim: headDim, zChannels: 18, mergeNum: tokens - k,
                          isotropic: isotropic)
        }
        var shipped: [(String, String, EncoderConfig)] = []
        for k in [1024, 576, 400, 256, 196] {
            shipped.append(("g-d64-k\(k)", "MergeVQ G, d64, 1024 tokens → \(k)",
                            mergevq("G", ch: 64, chMult: [1, 2, 4, 8], heads: 8, tokens: 1024, k: k)))
        }
        shipped.append(("g-d32-k256", "MergeVQ G, d32 (train config), 1024 tokens → 256",
                        mergevq("G", ch: 32, chMult: [2, 4, 8, 12], heads: 8, tokens: 1024, k: 256)))
        shipped.append(("gr-d32-k144", "MergeVQ GR, d32 (train config), 256 tokens → 144",
                        mergevq("GR", ch: 32, chMult: [2, 2, 4, 8, 12], heads: 8, tokens: 256, k: 144)))
        for k in [256, 196, 144, 100, 64] {
            shipped.append(("gr-d64-k\(k)", "MergeVQ GR, d64, 256 tokens → \(k)",
                            mergevq("GR", ch: 64, chMult: [1, 1, 2, 4, 8], heads: 8, tokens: 256, k: k)))
        }
        for k in [256, 196, 144, 100, 64] {
            shipped.append(("gr-d96-k\(k)", "MergeVQ GR, d96, 256 tokens → \(k)",
                            mergevq("GR", ch: 96, chMult: [1, 1, 2, 4, 8], heads: 12, tokens: 256, k: k)))
        }
        for k in [256, 144, 100, 64, 36] {
            // Spec A1: 12 heads (head_dim 64), what the R encoder was trained with.
            shipped.append(("r-vitb-k\(k)", "MergeVQ R, ViT-B/16 stem, 12 heads, 256 tokens → \(k)",
                            mergevq("R", ch: 64, chMult: [1, 1, 2, 4, 8], heads: 12, headDim: 64,
                                    isotropic: 768, tokens: 256, k: k)))
        }
        for (suffix, summary, config) in shipped {
            out.append(Preset(name: "mergevq-" + suffix, summary: summary + ", LFQ 2^18", config: config))
        }
        for (suffix, summary, config) in shipped {
            var tok = config
            tok.vae = true
            tok.quantizer = .vq
            tok.codebookSize = mergeTokCodebook
            out.append(Preset(name: "mergetok-" + suffix,
                              summary: summary + ", VAE mean/logvar + VQ \(mergeTokCodebook)×18", config: tok))
        }
        return out
    }
}
