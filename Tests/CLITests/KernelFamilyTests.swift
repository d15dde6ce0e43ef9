import Foundation
import ShardReader
import TestSupport
import Testing

/// Bytes on every kernel family: the determinism suites and `mtok tokenize` run in child
/// processes under each OpenBLAS kernel set this CPU can execute (`OPENBLAS_CORETYPE`), so a
/// machine of one kind also checks what machines of other kinds compute.
@Suite(.serialized)
struct KernelFamilyTests {
    static let families = KernelFamilies.available
    static let photos = TestSupport.packageRoot + "/tools/demo/images"
    /// The suites about bytes: products and convolutions per thread count, the encoder per
    /// thread count and batch split, and the encoder against PyTorch's golden outputs.
    static let byteSuites = "TensorCoreTests\\.KernelTests|EncoderModelTests\\.DeterminismTests|EncoderModelTests\\.GoldenFixtureTests"
    static let childMarker = "MTOK_KERNEL_FAMILY_CHILD"

    @Test func atLeastTwoFamiliesRunHere() {
        print("kernel families this CPU runs: \(Self.families.joined(separator: ", "))")
        // Elsewhere OpenBLAS has no x86 kernel sets to force, and the in-process suites stand alone.
        if KernelFamilies.isX86 {
            #expect(Self.families.count >= 2, "only \(Self.families) found in /proc/cpuinfo's flags")
        }
    }

    /// This test binary again, restricted to the byte suites, with the kernel set forced. The
    /// child's `KernelTests.kernelIsNamed` checks that OpenBLAS really runs the forced set.
    @Test(.enabled(if: ProcessInfo.processInfo.environment[childMarker] == nil), arguments: families)
    func byteSuitesPassUnder(_ family: String) throws {
        let r = try TestSupport.run(CommandLine.arguments[0],
                                    ["--testing-library", "swift-testing", "--filter", Self.byteSuites],
                                    environment: ["OPENBLAS_CORETYPE": family, "MTOK_EXPECT_KERNEL": family, Self.childMarker: "1"])
        let output = r.stdout + r.stderr
        let summary = output.split(separator: "\n").last { $0.contains("Test run with") }.map(String.init) ?? "(no summary)"
        print("kernel family \(family): \(summary)")
        #expect(r.status == 0, "under \(family):\n\(output.split(separator: "\n").filter { $0.contains("✘") || $0.contains("failed") }.prefix(40).joined(separator: "\n"))")
        // Ran the suites, not nothing: each suite reports itself.
        for suite in ["KernelTests", "DeterminismTests", "GoldenFixtureTests"] {
            #expect(output.contains("Suite \(suite) passed"), "under \(family): suite \(suite) did not pass (\(summary))")
        }
        #expect(output.contains("Test kernelIsNamed() passed"), "under \(family): the child did not check its kernel set")
    }

    /// Four photographs as a list, one view: small enough to tokenize 6 ways per family; with
    /// `brokenSecond`, a file that is no image comes second.
    func inputs(_ dir: String, brokenSecond: Bool = false) throws -> String {
        let fm = FileManager.default
        var lines: [String] = []
        if brokenSecond {
            let fixtures = TestSupport.packageRoot + "/Tests/ImageDecodingTests/Fixtures"
            try fm.copyItem(atPath: fixtures + "/not_an_image.jpg", toPath: dir + "/broken.jpg")
        }
        for cls in try fm.contentsOfDirectory(atPath: Self.photos).sorted() {
            let name = try fm.contentsOfDirectory(atPath: Self.photos + "/" + cls).sorted()[0]
            try fm.copyItem(atPath: "\(Self.photos)/\(cls)/\(name)", toPath: "\(dir)/\(cls)-\(name)")
            lines.append("{\"path\": \"\(cls)-\(name)\"}")
            if brokenSecond && lines.count == 1 { lines.append("{\"path\": \"broken.jpg\"}") }
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/list.jsonl", atomically: true, encoding: .utf8)
        return dir + "/list.jsonl"
    }

    func tinyModel(_ dir: String) throws -> String {
        let path = dir + "/tiny.safetensors"
        let r = try TestSupport.mtok(["model", "init", "--preset", "tiny", "--seed", "5", "--out", path])
        #expect(r.status == 0, "\(r.stderr)")
        return path
    }

    func tokenize(_ list: String, _ model: String, _ out: String, family: String, _ extra: [String]) throws -> TestSupport.ProcessResult {
        try TestSupport.run(TestSupport.mtokBinary,
                            ["tokenize", list, "--model", model, "--out", out, "--views", "center", "--latent-dtype", "f32"] + extra,
                            environment: ["OPENBLAS_CORETYPE": family])
    }

    /// The `arithmetic` segments of `mtok info --json`: (first record, records, kernel, rank).
    func segments(_ cache: String) throws -> [(first: Int, records: Int, kernel: String?, rank: Int?)] {
        let r = try TestSupport.mtok(["info", cache, "--json"])
        let info = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return (info?["arithmetic"] as? [[String: Any]] ?? []).map {
            ($0["first_record"] as? Int ?? -1, $0["records"] as? Int ?? -1,
             ($0["made_by"] as? [String: Any])?["kernel"] as? String, $0["rank"] as? Int)
        }
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment[childMarker] == nil), arguments: families)
    func tokenizeGivesOneDigestPerFamily(_ family: String) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let list = try inputs(dir)
        let model = try tinyModel(dir)
        var digests: [String: String] = [:]
        for threads in [1, 2, 3] {
            for batch in [1, 8] {
                let out = "\(dir)/cache-\(threads)-\(batch)"
                let r = try tokenize(list, model, out, family: family, ["--threads", "\(threads)", "--batch-size", "\(batch)"])
                #expect(r.status == 0, "\(family) --threads \(threads) --batch-size \(batch): \(r.stderr)")
                digests["--threads \(threads) --batch-size \(batch)"] = try TokenCache(path: out).manifest.contentDigest ?? "none"
                #expect(try segments(out).map(\.kernel) == [family], "the cache names the kernel that made it")
            }
        }
        print("kernel family \(family): \(Set(digests.values).sorted()) over \(digests.count) runs")
        #expect(Set(digests.values).count == 1, "\(family): \(digests)")
    }

    /// A resume on another machine kind is reported plainly and recorded per segment. The first
    /// run stops (resumably) at the broken second input with `--max-failures 0`, having committed
    /// the first; the second goes on past it on another kernel set.
    @Test(.enabled(if: ProcessInfo.processInfo.environment[childMarker] == nil && families.count >= 2))
    func resumeOnAnotherKernelIsRecordedAndReported() throws {
        let (a, b) = (Self.families[0], Self.families[1])
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let list = try inputs(dir, brokenSecond: true)
        let model = try tinyModel(dir)
        func run(_ out: String, _ family: String, stopAtFailure: Bool) throws -> TestSupport.ProcessResult {
            try tokenize(list, model, out, family: family, ["--batch-size", "1"] + (stopAtFailure ? ["--max-failures", "0"] : []))
        }
        let out = dir + "/cache"
        let first = try run(out, a, stopAtFailure: true)
        #expect(first.status == 3, "stops at the broken input: \(first.stderr)")
        let second = try run(out, b, stopAtFailure: false)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("holds records made by OpenBLAS") && second.stderr.contains(a), "\(second.stderr)")
        #expect(second.stdout.contains("MIXED"), "\(second.stdout)")
        let s = try segments(out)
        #expect(s.map(\.kernel) == [a, b] && s.map(\.first) == [0, 1] && s.map(\.records) == [1, 3], "\(s)")
        let info = try TestSupport.mtok(["info", out])
        #expect(info.stdout.contains("MIXED") && info.stdout.contains("records 1–3: OpenBLAS"), "\(info.stdout)")
        let verify = try TestSupport.mtok(["verify", out, "--deep"])
        #expect(verify.status == 0, "mixed arithmetic is not a fault: \(verify.stdout)")
        #expect(verify.stdout.contains("NOTE   arithmetic: MIXED"), "\(verify.stdout)")
        // A resume on the same kernel set adds a segment of the same arithmetic: not mixed.
        let same = dir + "/same"
        #expect(try run(same, a, stopAtFailure: true).status == 3)
        let again = try run(same, a, stopAtFailure: false)
        #expect(again.status == 0 && !again.stderr.contains("holds records made by"), "\(again.stderr)")
        #expect(try segments(same).map(\.kernel) == [a, a])
        #expect(try TestSupport.mtok(["info", same]).stdout.contains("all records by OpenBLAS"))
    }

    /// Ranks on different machine kinds: the merged cache says which rank's records came from where.
    @Test(.enabled(if: ProcessInfo.processInfo.environment[childMarker] == nil && families.count >= 2))
    func mergedRanksKeepTheirArithmetic() throws {
        let (a, b) = (Self.families[0], Self.families[1])
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let list = try inputs(dir)
        let model = try tinyModel(dir)
        let out = dir + "/cache"
        for (rank, family) in [(0, a), (1, b)] {
            let r = try tokenize(list, model, out, family: family, ["--rank", "\(rank)", "--world-size", "2"])
            #expect(r.status == 0, "\(r.stderr)")
        }
        #expect(try TestSupport.mtok(["merge", out]).status == 0)
        let s = try segments(out)
        #expect(s.map(\.kernel) == [a, b] && s.map(\.rank) == [0, 1] && s.map(\.first) == [0, 2] && s.map(\.records) == [2, 2], "\(s)")
        #expect(try TestSupport.mtok(["verify", out, "--deep"]).status == 0)
    }
}
