/// Validated encoder weights: every tensor the configuration needs, by its state-dict name.
///
/// Thread-safe to share: immutable after init. The float pointers point either into owned
/// allocations or into a read-only memory map; `owners` keeps whichever it is alive.
public final class EncoderWeights: @unchecked Sendable {  // immutable; pointers live as long as `owners`
    public let config: EncoderConfig
    /// Free-form provenance strings (e.g. `mtok.untrained`, `mtok.seed`).
    public let metadata: [String: String]
    let tensors: [String: UnsafeBufferPointer<Float>]
    private let owners: [AnyObject]

    /// Checks names and shapes against `config` and keeps the tensors.
    ///
    /// - Parameters:
    ///   - tensors: name → (shape, float view). Extra names (decoder, dist_head, …) are ignored.
    ///   - owner: keeps the memory behind the views alive.
    /// - Throws: ``EncoderError/invalidWeights(_:)`` naming every missing or misshapen tensor.
    init(config: EncoderConfig, metadata: [String: String],
         tensors: [String: (shape: [Int], values: UnsafeBufferPointer<Float>)], owners: [AnyObject]) throws {
        try config.validate()
        var problems: [String] = []
        var kept: [String: UnsafeBufferPointer<Float>] = [:]
        for spec in config.tensorSpecs {
            guard let t = tensors[spec.name] else {
                problems.append("missing \(spec.name) \(spec.shape)")
                continue
            }
            if t.shape != spec.shape {
                problems.append("\(spec.name) has shape \(t.shape), expected \(spec.shape)")
                continue
            }
            precondition(t.values.count == spec.shape.reduce(1, *), "tensor view does not match its shape")
            kept[spec.name] = t.values
        }
        if !problems.isEmpty { throw EncoderError.invalidWeights(problems) }
        self.config = config
        self.metadata = metadata
        self.tensors = kept
        self.owners = owners
    }

    /// Weights from owned arrays (tests, random init, conversions).
    public convenience init(config: EncoderConfig, arrays: [String: (shape: [Int], values: [Float])],
                            metadata: [String: String] = [:]) throws {
        let store = FloatStore(arrays.mapValues(\.values))
        var views: [String: (shape: [Int], values: UnsafeBufferPointer<Float>)] = [:]
        for (name, t) in arrays { views[name] = (t.shape, store.view(name)) }
        try self.init(config: config, metadata: metadata, tensors: views, owners: [store])
    }

    /// The float values of one tensor (for writing a weights file).
    public func values(_ name: String) -> UnsafeBufferPointer<Float>? { tensors[name] }

    func pointer(_ name: String) -> UnsafePointer<Float> {
        guard let t = tensors[name] else { preconditionFailure("validated weights lack \(name)") }
        // Validation guarantees a non-empty shape for every tensor the model reads.
        return t.baseAddress!
    }
}

/// Owned float buffers, one allocation per tensor, freed with the store.
final class FloatStore {
    private var buffers: [String: UnsafeMutableBufferPointer<Float>] = [:]

    init(_ arrays: [String: [Float]]) {
        for (name, a) in arrays {
            let b = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(a.count, 1))
            _ = b.initialize(from: a)
            buffers[name] = b
        }
    }

    func view(_ name: String) -> UnsafeBufferPointer<Float> {
        guard let b = buffers[name] else { preconditionFailure("no buffer \(name)") }
        return UnsafeBufferPointer(rebasing: b[0..<b.count])
    }

    deinit { for b in buffers.values { b.deallocate() } }
}
