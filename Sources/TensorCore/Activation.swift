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

    /// SiLU on 16 lanes with ``exp(_:)``; the per-lane result does not depend on the lane.
    @inlinable
    public static func silu(_ t: SIMD16<Float>) -> SIMD16<Float> { t / (1 + exp(-t)) }

    /// e^x on 16 lanes: range reduction by ln 2 (Cody–Waite split) and a degree-6 polynomial on
    /// [−ln2/2, ln2/2]; relative error within a few ulp of binary32 (tested against `expf`).
    /// Arguments are clamped to [−87.3, 88.7], so huge negative inputs give a tiny positive value
    /// rather than 0, which SiLU does not distinguish.
    @inlinable
    public static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        // Mask-based clamp: the stdlib's pointwiseMin/Max run lane by lane through memory.
        let hi = SIMD16<Float>(repeating: 88.7), lo = SIMD16<Float>(repeating: -87.3)
        var x = x
        x.replace(with: hi, where: x .> hi)
        x.replace(with: lo, where: x .< lo)
        // Round x·log2(e) to the nearest integer by adding 1.5·2^23: the sum's low mantissa bits
        // then hold n, which also gives the integer without a (slow, generic) float→int conversion.
        let magic = SIMD16<Float>(repeating: 12582912)
        let shifted = x * 1.44269504088896341 + magic
        let n = shifted - magic
        var r = x - n * 0.693359375
        r = r + n * 2.12194440e-4
        // exp(r) ≈ 1 + r + r²·P(r), coefficients of the Cephes expf polynomial.
        var p = SIMD16<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let e = (p * r * r + r) + 1
        let ni = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- unsafeBitCast(magic, to: SIMD16<Int32>.self)
        let scale = unsafeBitCast((ni &+ 127) &<< 23, to: SIMD16<Float>.self)
        return e * scale
    }

    /// GELU in place over `count` values, split over the BLAS thread count.
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let p = UncheckedBox(x)
        Parallel.chunks(count, minimumChunk: 4096) { range in
            for i in range { p.value[i] = gelu(p.value[i]) }
        }
    }
}
