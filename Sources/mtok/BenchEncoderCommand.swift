import ArgumentParser
import EncoderModel
import Foundation
import TensorCore

/// Hidden `mtok bench-encoder`: the Swift side of tools/bench_encoder.py.
///
/// Times ``MergeTokEncoder/encode(batch:)`` on random inputs, and OpenBLAS sgemm on a large square
/// product in the same process and thread setting, and prints one JSON object (medians).
struct BenchEncoderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-encoder", abstract: "Encoder throughput benchmark (JSON).", shouldDisplay: false)

    @Option(help: "Weights file (.safetensors).") var model: String
    @Option(help: "Images per encode call.") var batch: Int = 1
    @Option(help: "Timed repetitions (after one warm-up).") var repeats: Int = 3
    @Option(help: "OpenBLAS threads.") var threads: Int = 1
    @Option(help: "Side of the square sgemm reference product (0 skips it).") var gemmSize: Int = 2048
    @Option(help: "Optional .npy input to encode instead of random pixels.") var input: String?

    func run() throws {
        BLAS.setThreadCount(threads)
        let weights = try EncoderWeights.load(path: model)
        let encoder = MergeTokEncoder(weights: weights)
        let r = weights.config.resolution
        var image: [Float]
        if let input {
            image = try EncodeCommand.readInput(input, resolution: r)
        } else {
            var state: UInt64 = 12345
            image = (0..<encoder.inputCount).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Float(state >> 40) / Float(1 << 24) * 2 - 1
            }
        }
        let images = Array(repeating: image, count: batch)
        _ = try encoder.encode(batch: images)
        var times: [Double] = []
        for _ in 0..<repeats {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try encoder.encode(batch: images)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        let median = times.sorted()[times.count / 2]
        let flops = Double(2 * weights.config.macsPerImage * batch)
        let gemm = gemmSize > 0 ? Self.sgemmGFlops(gemmSize, repeats: max(3, repeats)) : 0
        let object: [String: Any] = [
            "batch": batch, "threads": threads, "seconds": times, "median_seconds": median,
            "images_per_second": Double(batch) / median, "gflops": flops / median / 1e9,
            "sgemm_gflops": gemm, "peak_rss_bytes": Self.peakRSS(),
            "flops_per_image": 2 * weights.config.macsPerImage,
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }

    /// Median GFLOP/s of `C = A·B` with n×n×n operands.
    static func sgemmGFlops(_ n: Int, repeats: Int) -> Double {
        let a = [Float](repeating: 0.5, count: n * n)
        let b = [Float](repeating: 0.25, count: n * n)
        var c = [Float](repeating: 0, count: n * n)
        var rates: [Double] = []
        for i in 0...repeats {
            let t0 = DispatchTime.now().uptimeNanoseconds
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    c.withUnsafeMutableBufferPointer { pc in
                        BLAS.sgemm(.none, .none, m: n, n: n, k: n, a: pa.baseAddress!, lda: n,
                                   b: pb.baseAddress!, ldb: n, c: pc.baseAddress!, ldc: n)
                    }
                }
            }
            let s = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if i > 0 { rates.append(2 * Double(n) * Double(n) * Double(n) / s / 1e9) }
        }
        return rates.sorted()[rates.count / 2]
    }

    /// VmHWM from /proc/self/status (Linux), in bytes; 0 where unavailable.
    static func peakRSS() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
            return kb * 1024
        }
        return 0
    }
}
