import Foundation
import Testing
import ImageDecoding

@Suite("Thread safety")
struct ConcurrencyTests {
    @Test("one Preprocessor used from many threads gives the same results as one thread")
    func parallelPreprocess() async throws {
        let names = ["photo_chelsea_420.jpg", "photo_coffee_422_progressive.jpg", "photo_ihc_rgba.png",
                     "photo_chelsea_ycck.jpg", "photo_camera_gray16.png", "truncated_baseline.jpg"]
        let inputs = try names.map { try Fixtures.bytes($0) }
        let pre = Preprocessor(resolution: 48, crop: .adm)
        let serial = inputs.map { try? pre.preprocess(bytes: $0, view: .horizontalFlip) }
        let parallel = await withTaskGroup(of: (Int, RGBImage?).self) { group in
            for _ in 0..<8 {
                for (i, bytes) in inputs.enumerated() {
                    group.addTask { (i, try? pre.preprocess(bytes: bytes, view: .horizontalFlip)) }
                }
            }
            var results: [(Int, RGBImage?)] = []
            for await r in group { results.append(r) }
            return results
        }
        #expect(parallel.count == 8 * inputs.count)
        for (i, image) in parallel { #expect(image == serial[i], "\(names[i])") }
        #expect(serial.last! == nil)  // the truncated file fails on every thread too
    }
}
