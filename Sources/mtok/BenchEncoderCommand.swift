import ArgumentParser
import EncoderModel
import Foundation
import TensorCore

/// Hidden `mtok bench-encoder`: the Swift side of tools/bench_encoder.py.
///
/// Loads the weights, encodes one warm-up batch, then answers commands read line by line from
/// stdin, one JSON object per line on stdout, so the Python driver can interleave Swift, PyTorch
/// and sgemm runs and every figure sees the same machine load:
/// `encode` (one timed batch), `stages` (per-stage seconds of one image), `sgemm` (one timed
/// n×n×n product), `rss` (peak RSS so far).
struct BenchEncoderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-encoder", abstract: "Encoder throughput benchmark server (JSON lines).",
        shouldDisplay: false)

    @Option(help: "Weights file (.safetensors).") var model: String
    @Option(help: "Images per encode call.") var batch: Int = 1
    @Option(help: "Encoder threads.") var threads: Int = 1
    @Option(help: "Side of the square sgemm reference product.") var gemmSize: Int = 2048
    @Option(help: "Optional .npy input to encode instead of random pixels.") var input: String?

    func run() throws {
        Parallel.setThreadCount(threads)
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
        let gemm = SgemmProbe(size: gemmSize)
        let flopsPerImage = 2 * weights.config.macsPerImage
        reply(["ready": true, "flops_per_image": flopsPerImage, "batch": batch, "threads": threads])
        while let line = readLine() {
            switch line.trimmingCharacters(in: .whitespaces) {
            case "encode":
                let t0 = DispatchTime.now().uptimeNanoseconds
                _ = try encoder.encode(batch: images)
                let s = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                reply(["seconds": s, "images_per_second": Double(batch) / s,
                       "gflops": Double(flopsPerImage * batch) / s / 1e9])
            case "stages":
                // Seconds from the previous traced point to each point, one image (the trace's
                // copies add a little time to every stage).
                var last = DispatchTime.now().uptimeNanoseconds
                var stages: [[Any]] = []
                _ = try encoder.encode(image: image) { name, _, _ in
                    let now = DispatchTime.now().uptimeNanoseconds
                    stages.append([name, Double(now - last) / 1e9])
                    last = DispatchTime.now().uptimeNanoseconds
                }
                reply(["stages": stages])
            case "sgemm":
                reply(["sgemm_gflops": gemm.run()])
            case "rss":
                reply(["peak_rss_bytes": Self.peakRSS()])
            default:
                reply(["error": "unknown command \(line)"])
            }
        }
    }

    private func reply(_ object: [String: Any]) {
        // Plain numbers, strings and booleans always serialise.
        var data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        data.append(0x0A)
        // Unbuffered, so the driver sees each answer at once.
        FileHandle.standardOutput.write(data)
    }

    /// VmHWM from /proc/self/status (Linux), in bytes; 0 where unavailable.
    static func peakRSS() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) * 1024
        }
        return 0
    }
}

/// One n×n×n product cut as the encoder cuts its products (``Parallel/sgemm``), timed; operands allocated once.
final class SgemmProbe {
    let n: Int
    let a, b, c: UnsafeMutablePointer<Float>

    init(size n: Int) {
        self.n = n
        a = .allocate(capacity: n * n)
        b = .allocate(capacity: n * n)
        c = .allocate(capacity: n * n)
        a.initialize(repeating: 0.5, count: n * n)
        b.initialize(repeating: 0.25, count: n * n)
        c.initialize(repeating: 0, count: n * n)
        _ = run()
    }

    deinit {
        a.deallocate()
        b.deallocate()
        c.deallocate()
    }

    /// GFLOP/s of one product.
    func run() -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        Parallel.sgemm(.none, .none, m: n, n: n, k: n, a: a, lda: n, b: b, ldb: n, c: c, ldc: n)
        let s = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        return 2 * Double(n) * Double(n) * Double(n) / s / 1e9
    }
}
