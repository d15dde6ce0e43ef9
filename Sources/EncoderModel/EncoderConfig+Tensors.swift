/// The state-dict tensors an encoder with this configuration has (spec §5.2), in a stable order.
extension EncoderConfig {
    public enum TensorRole: Sendable {
        case convWeight, linearWeight, bias, normWeight, normBias, gamma, classToken, codebook
    }

    public struct TensorSpec: Sendable, Hashable {
        public let name: String
        public let shape: [Int]
        public let role: TensorRole
        /// Inputs per output (for the N(0,1)/√fan_in test-weight recipe).
        public let fanIn: Int
    }

    public var tensorSpecs: [TensorSpec] {
        var out: [TensorSpec] = []
        func add(_ n: String, _ s: [Int], _ r: TensorRole, fanIn: Int = 1) {
            out.append(TensorSpec(name: n, shape: s, role: r, fanIn: fanIn))
        }
        func conv(_ n: String, _ o: Int, _ i: Int, _ k: Int, bias: Bool) {
            add(n + ".weight", [o, i, k, k], .convWeight, fanIn: i * k * k)
            if bias { add(n + ".bias", [o], .bias) }
        }
        func norm(_ n: String, _ c: Int) {
            add(n + ".weight", [c], .normWeight)
            add(n + ".bias", [c], .normBias)
        }
        func linear(_ n: String, _ o: Int, _ i: Int) {
            add(n + ".weight", [o, i], .linearWeight, fanIn: i)
            add(n + ".bias", [o], .bias)
        }
        let c = width
        if isIsotropic {
            conv("encoder.conv_in.0", c, inChannels, patchSize, bias: true)
            norm("encoder.conv_in.1", c)
        } else {
            conv("encoder.conv_in", ch, inChannels, 3, bias: false)
            for level in 0..<levels {
                let cout = levelOutput(level)
                for block in 0..<resBlocks(level: level) {
                    let cin = block == 0 ? levelInput(level) : cout
                    let p = "encoder.down.\(level).block.\(block)"
                    norm(p + ".norm1", cin)
                    conv(p + ".conv1", cout, cin, 3, bias: false)
                    norm(p + ".norm2", cout)
                    conv(p + ".conv2", cout, cout, 3, bias: false)
                    if cin != cout { conv(p + ".nin_shortcut", cout, cin, 1, bias: false) }
                }
                if level < levels - 1 { conv("encoder.down.\(level).downsample", cout, cout, 3, bias: true) }
            }
        }
        add("encoder.attn.cls_token", [1, 1, c], .classToken)
        for l in 0..<numAttBlocks {
            let p = "encoder.attn.blocks.\(l)"
            norm(p + ".norm1", c)
            linear(p + ".attn.qkv", 3 * c, c)
            linear(p + ".attn.proj", c, c)
            add(p + ".ls1.gamma", [c], .gamma)
            norm(p + ".norm2", c)
            linear(p + ".mlp.fc1", 4 * c, c)
            linear(p + ".mlp.fc2", c, 4 * c)
            add(p + ".ls2.gamma", [c], .gamma)
        }
        norm("encoder.norm_out", c)
        conv("encoder.conv_out", headChannels, c, 1, bias: true)
        if quantizer == .vq { add("quantize.embedding.weight", [codebookSize ?? 0, zChannels], .codebook) }
        return out
    }

    public var parameterCount: Int {
        tensorSpecs.reduce(0) { $0 + $1.shape.reduce(1, *) }
    }

    /// Multiply-accumulates per image: convolutions, linear layers, QKᵀ and AV, the matching scores
    /// and the quantizer's distances (spec §6); norms, activations and softmax are not counted.
    public var macsPerImage: Int {
        var macs = 0
        let r = resolution
        if isIsotropic {
            macs += ConvCounts.conv(out: width, in: inChannels, k: patchSize, side: gridSide)
        } else {
            var side = r
            macs += ConvCounts.conv(out: ch, in: inChannels, k: 3, side: side)
            for level in 0..<levels {
                let cout = levelOutput(level)
                for block in 0..<resBlocks(level: level) {
                    let cin = block == 0 ? levelInput(level) : cout
                    macs += ConvCounts.conv(out: cout, in: cin, k: 3, side: side)
                    macs += ConvCounts.conv(out: cout, in: cout, k: 3, side: side)
                    if cin != cout { macs += ConvCounts.conv(out: cout, in: cin, k: 1, side: side) }
                }
                if level < levels - 1 {
                    side /= 2
                    macs += ConvCounts.conv(out: cout, in: cout, k: 3, side: side)
                }
            }
        }
        let c = width
        let schedule = MergeSchedule(config: self)
        for l in 0..<numAttBlocks {
            let t = schedule.tokensIn[l]
            let after = t - schedule.effective[l]
            macs += t * c * 3 * c + 2 * t * t * c + t * c * c
            if schedule.effective[l] > 0 { macs += ((t + 1) / 2) * (t / 2) * headWidth }
            macs += 8 * after * c * c
        }
        macs += keptTokens * c * headChannels
        if quantizer == .vq { macs += keptTokens * zChannels * (codebookSize ?? 0) }
        return macs
    }
}

enum ConvCounts {
    static func conv(out: Int, in cin: Int, k: Int, side: Int) -> Int { out * cin * k * k * side * side }
}
