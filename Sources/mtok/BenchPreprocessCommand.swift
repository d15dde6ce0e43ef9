import ArgumentParser
import Foundation
import ImageDecoding

/// `mtok bench-preprocess`: times the preprocessing path on real files, one thread, for
/// tools/bench_preprocess.py, which runs Pillow on the same files and compares.
struct BenchPreprocessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-preprocess",
        abstract: "Time decode + crop on image files (one thread); prints JSON.",
        shouldDisplay: false)

    @Argument(help: "Image files.")
    var files: [String]

    @Option(help: "Side of the square output.")
    var resolution: Int = 256

    @Option(help: "adm or resize-center.")
    var crop: String = CropMode.adm.rawValue

    @Option(help: "Timed passes over all files.")
    var rounds: Int = 3

    @Flag(help: "Time the DCT-scaling fast path instead of the exact one.")
    var fast = false

    @Flag(help: "Decode whole images (no region decode), to measure what region decode saves.")
    var noRegion = false

    @Option(help: "Write each output as raw RGB bytes (NAME.rgb) into this folder.")
    var dump: String?

    @Flag(help: "Also measure how far the fast path's pixels are from the exact path's.")
    var compareFast = false

    func validate() throws {
        guard !files.isEmpty, rounds > 0, resolution > 0, CropMode(rawValue: crop) != nil else {
            throw ValidationError("need files, --rounds > 0, --resolution > 0, --crop adm|resize-center")
        }
    }

    func run() throws {
        var pre = Preprocessor(resolution: resolution, crop: CropMode(rawValue: crop) ?? .adm)
        pre.usesDCTScaling = fast
        pre.usesRegionDecode = !noRegion
        var roundSeconds: [Double] = []
        var checksum = 0
        for _ in 0..<rounds {
            let start = DispatchTime.now().uptimeNanoseconds
            for path in files {
                let out = try pre.preprocessFile(atPath: path)
                checksum &+= Int(out.pixels[out.pixels.count / 2])  // keeps the work observable
            }
            roundSeconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        var report: [String: Any] = [
            "images": files.count, "rounds": roundSeconds, "checksum": checksum,
            "images_per_second": Double(files.count) / roundSeconds.sorted()[roundSeconds.count / 2],
        ]
        if let dump {
            try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
            for path in files {
                let out = try pre.preprocessFile(atPath: path)
                let name = (path as NSString).lastPathComponent
                try Data(out.pixels).write(to: URL(fileURLWithPath: dump).appendingPathComponent(name + ".rgb"))
            }
        }
        if compareFast {
            var exact = pre, quick = pre
            exact.usesDCTScaling = false
            quick.usesDCTScaling = true
            var worst = 0, total = 0, count = 0, changedTotal = 0, changedCount = 0, changedImages = 0
            for path in files {
                let a = try exact.preprocessFile(atPath: path), b = try quick.preprocessFile(atPath: path)
                var sum = 0
                for i in 0..<a.pixels.count {
                    let d = abs(Int(a.pixels[i]) - Int(b.pixels[i]))
                    worst = max(worst, d)
                    sum += d
                }
                total += sum
                count += a.pixels.count
                if a != b {  // images small enough need no halving, so the fast path changes nothing
                    changedImages += 1
                    changedTotal += sum
                    changedCount += a.pixels.count
                }
            }
            report["fast_max_abs_diff"] = worst
            report["fast_mean_abs_diff"] = Double(total) / Double(max(count, 1))
            report["fast_changed_images"] = changedImages
            report["fast_mean_abs_diff_changed"] = Double(changedTotal) / Double(max(changedCount, 1))
        }
        let json = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
        print(String(decoding: json, as: UTF8.self))
    }
}
