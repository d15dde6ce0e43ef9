import Foundation

/// Pointwise activations, in the exact forms the encoder specifies.
public enum Activation {
    /// SiLU, `t / (1 + e^(−t))`.
    @inlinable
    public static func silu(_ t: Float) -> Float { t / (1 + Foundation.exp(-t)) }

    /// GELU in the exact erf form `0.5·t·(1 + erf(t/√2))` (not the tanh approximation).
    @inlinable
    public static func gelu(_ t: Float) -> Float {
        0.5 * t * (1 + Foundation.erf(t * 0.70710678118654752440))
    }

    public static func silu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = silu(x[i]) }
    }

    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = gelu(x[i]) }
    }
}
