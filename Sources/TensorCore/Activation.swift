import Foundation

/// Pointwise activations, in the exact forms the encoder specifies.
public enum Activation {
    /// SiLU, `t / (1 + e^(−t))`.
    @inlinable
    public static func silu(_ t: Float) -> Float { t / (1 + Foundation.exp(-t)) }

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

    /// GELU in the exact erf form `0.5·t·(1 + erf(t/√2))` (not the tanh approximation) on 16
    /// lanes with ``erf(_:)``; the per-lane result does not depend on the lane.
    @inlinable
    public static func gelu(_ t: SIMD16<Float>) -> SIMD16<Float> {
        0.5 * t * (1 + erf(t * 0.70710678118654752440))
    }

    /// erf on 16 lanes, within about 1.3 ulp (tested against `erf` in binary64).
    ///
    /// |x| < 1: `x + x·P(x²)`, P fitted to erf(y)/y − 1, so the leading term is exact and the
    /// rounding falls on a term an eighth of the size. 1 ≤ |x|: `1 − e^(−x²)·R(u)`, u = (|x| − 2.5)/1.5,
    /// R fitted to erfc(y)·e^(y²) on [1, 4]; |x| is clamped to 4, where the result already rounds to 1.
    /// Coefficients: relative least squares on Chebyshev nodes in binary64, rounded to binary32.
    @inlinable
    public static func erf(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let bits = unsafeBitCast(x, to: SIMD16<UInt32>.self)
        let sign = bits & 0x8000_0000
        let y = unsafeBitCast(bits & 0x7FFF_FFFF, to: SIMD16<Float>.self)
        let s = y * y
        var p = SIMD16<Float>(repeating: -9.63499132922152e-06)
        p = p * s + 0.00011254641140112653
        p = p * s - 0.0008482507546432316
        p = p * s + 0.0052209231071174145
        p = p * s - 0.026865392923355103
        p = p * s + 0.11283782124519348
        p = p * s - 0.37612637877464294
        p = p * s + 0.12837916612625122
        let small = y + y * p
        var yc = y
        yc.replace(with: 4, where: yc .> 4)
        let u = (yc - 2.5) * (1 / Float(1.5))
        var r = SIMD16<Float>(repeating: 1.2445649190340191e-05)
        r = r * u - 3.665494659799151e-05
        r = r * u + 5.902049451833591e-05
        r = r * u - 0.0001446941023459658
        r = r * u + 0.0004099893558304757
        r = r * u - 0.0010163813130930066
        r = r * u + 0.0024040043354034424
        r = r * u - 0.005567650310695171
        r = r * u + 0.01248917542397976
        r = r * u - 0.027005670592188835
        r = r * u + 0.05611051619052887
        r = r * u - 0.11152100563049316
        r = r * u + 0.21080636978149414
        let large = 1 - exp(-(yc * yc)) * r
        var result = large
        result.replace(with: small, where: y .< 1)
        return unsafeBitCast(unsafeBitCast(result, to: SIMD16<UInt32>.self) | sign, to: SIMD16<Float>.self)
    }

    /// GELU in place over `count` values, split over the lanes; the tail goes through the same
    /// vector code one value at a time, so every element gets identical arithmetic.
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let p = UncheckedBox(x)
        Parallel.chunks(count / 16, minimumChunk: 256) { blocks in
            for b in blocks {
                let at = UnsafeMutableRawPointer(p.value + 16 * b)
                at.storeBytes(of: gelu(at.loadUnaligned(as: SIMD16<Float>.self)), as: SIMD16<Float>.self)
            }
        }
        for i in (count / 16 * 16)..<count { x[i] = gelu(SIMD16<Float>(repeating: x[i]))[0] }
    }
}
