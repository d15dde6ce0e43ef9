/// Errors of configuration, weights and inputs (bad data throws; shape bugs in callers trap).
public enum EncoderError: Error, Equatable, CustomStringConvertible {
    /// The configuration breaks the listed shape rules.
    case invalidConfig([String])
    /// Each entry names one tensor that is missing, misshapen or of an unusable dtype.
    case invalidWeights([String])
    /// No configuration in the file's metadata and no sidecar JSON.
    case missingConfig(String)
    /// The file is something else (an image, an unconverted checkpoint): what it is and what to do.
    case notWeights(String)
    /// An input image has the wrong number of values.
    case invalidInput(String)
    /// A ToMe metric vector had zero norm (NaN cosine scores), spec §3.5.
    case degenerateMetric(layer: Int)

    public var description: String {
        switch self {
        case .invalidConfig(let p): "invalid encoder config: " + p.joined(separator: "; ")
        case .invalidWeights(let p): "invalid encoder weights: " + p.joined(separator: "; ")
        case .missingConfig(let s): "no encoder config: \(s)"
        case .notWeights(let s): s
        case .invalidInput(let s): "invalid encoder input: \(s)"
        case .degenerateMetric(let l): "zero-norm token-merging metric in block \(l)"
        }
    }
}
