import Foundation
import ImageDecoding
import ShardReader
import TestSupport
import Testing

/// `mtok stats` against a float64 NumPy computation over the same records (read by the Python
/// package): per-channel mean and std within 1e-9 relative (float64 sums in another order),
/// min, max, code counts, group sizes and labels exactly.
struct StatsTests {
    @Test func statsEqualAFloat64NumPyComputation() throws {
        guard let python = TestSupport.python else { Issue.record("no Python (.venv)"); return }
        let dir = try TestSupport.temporaryDirectory("stats")
        #expect(try TestSupport.mtok(["model", "init", "--preset", "tiny-vae-vq", "--seed", "4", "--out", dir + "/m.safetensors"]).status == 0)
        let photos = TestSupport.packageRoot + "/tools/demo/images"
        let made = try TestSupport.mtok(["tokenize", photos, "--model", dir + "/m.safetensors", "--out", dir + "/c", "--latent-dtype", "f32"])
        #expect(made.status == 0, "\(made.stderr)")
        let r = try TestSupport.mtok(["stats", dir + "/c", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        try r.stdout.write(toFile: dir + "/stats.json", atomically: true, encoding: .utf8)
        let script = """
            import json, sys, numpy as np, mtokcache
            c = mtokcache.open(sys.argv[1])
            s = json.load(open(sys.argv[2]))
            recs = [c[i] for i in range(len(c))]
            failures = []
            def close(a, b, what):
                if not np.allclose(a, b, rtol=1e-9, atol=1e-12): failures.append(what)
            for key in ("latents", "logvar"):
                x = np.concatenate([np.asarray(r[key], dtype=np.float64).reshape(-1, r[key].shape[-1]) for r in recs])
                got = s[key]
                close([g["mean"] for g in got], x.mean(0), key + " mean")
                close([g["std"] for g in got], x.std(0), key + " std")
                if [g["min"] for g in got] != x.min(0).tolist() or [g["max"] for g in got] != x.max(0).tolist(): failures.append(key + " min/max")
                if any(g["count"] != x.shape[0] for g in got): failures.append(key + " count")
            idx = np.concatenate([np.asarray(r["indices"]).ravel() for r in recs])
            counts = np.bincount(idx, minlength=64)
            cb = s["codebook"]
            if cb["counts"] != counts.tolist() or cb["used"] != int((counts > 0).sum()) or cb["size"] != 64: failures.append("codebook counts")
            p = counts[counts > 0] / counts.sum()
            close(cb["perplexity"], np.exp(-(p * np.log(p)).sum()), "perplexity")
            sizes = np.concatenate([np.bincount(np.asarray(r["groups"]).ravel(), minlength=len(r["indices"])) for r in recs])
            hist = np.bincount(sizes[sizes > 0])
            if s["groups"]["sizes"][1:] != hist.tolist()[1:] or s["groups"]["largest"] != int(sizes.max()): failures.append("group sizes")
            labels = {}
            for r in recs: labels[int(r["label"])] = labels.get(int(r["label"]), 0) + 1
            if {d["label"]: d["records"] for d in s["labels"]} != labels: failures.append("labels")
            print("records", len(recs), "failures", failures)
            """
        let py = try TestSupport.run(python, ["-c", script, dir + "/c", dir + "/stats.json"],
                                     environment: ["PYTHONPATH": TestSupport.packageRoot + "/tools/python"])
        #expect(py.status == 0 && py.stdout.contains("records 22 failures []"), "\(py.stdout)\n\(py.stderr)")
        let text = try TestSupport.mtok(["stats", dir + "/c"])
        #expect(text.status == 0 && text.stdout.contains("codebook  ") && text.stdout.contains("of 64 codes used"), "\(text.stdout)")

        // Stored by tokenize (what was printed above), equal to a recomputation, read by Python.
        let recomputed = try TestSupport.mtok(["stats", dir + "/c", "--recompute", "--json"])
        #expect(recomputed.status == 0 && recomputed.stdout == r.stdout, "stored and recomputed statistics differ")
        let stored = try #require(FileManager.default.contents(atPath: dir + "/c/stats.json"))
        let fileObject = try JSONSerialization.jsonObject(with: stored) as? NSDictionary
        let printed = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? NSDictionary
        #expect(fileObject != nil && fileObject == printed)
        let fromPython = try TestSupport.run(python, ["-c", "import sys, mtokcache; c = mtokcache.open(sys.argv[1]); m, s = c.latent_mean_std(); print(c.stats['records'], len(m), float(s.min()) > 0)", dir + "/c"],
                                             environment: ["PYTHONPATH": TestSupport.packageRoot + "/tools/python"])
        #expect(fromPython.stdout == "22 8 True\n", "\(fromPython.stdout)\(fromPython.stderr)")
        // A changed figure: the fast check (digest) passes, the deep one recomputes and says so.
        var json = try #require(try JSONSerialization.jsonObject(with: stored) as? [String: Any])
        var channels = try #require(json["latents"] as? [[String: Any]])
        channels[0]["mean"] = (channels[0]["mean"] as? Double ?? 0) + 1e-6
        json["latents"] = channels
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/c/stats.json"))
        #expect(try TestSupport.mtok(["verify", dir + "/c"]).status == 0)
        let deep = try TestSupport.mtok(["verify", dir + "/c", "--deep"])
        #expect(deep.status == 1 && deep.stdout.contains("stats.json differs from the statistics of the records"), "\(deep.stdout)")
        // Another cache's statistics are refused by every reader of them.
        json["content_digest"] = "sha256:" + String(repeating: "0", count: 64)
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: dir + "/c/stats.json"))
        #expect(try TestSupport.mtok(["verify", dir + "/c"]).stdout.contains("stats.json describes other records"))
        #expect(try TestSupport.mtok(["stats", dir + "/c"]).status != 0)
        #expect(try TestSupport.mtok(["stats", dir + "/c", "--recompute", "--write"]).status == 0)
        #expect(try TestSupport.mtok(["verify", dir + "/c", "--deep"]).status == 0)
    }
}

/// `mtok show` on demo photos: the picture's size-map panel is exactly the record's groups, the
/// crop is re-made for a mirrored view, and a changed or missing source is named.
struct ShowTests {
    @Test func showDrawsTheRecordsGroupsAndChecksTheSource() throws {
        let dir = try TestSupport.temporaryDirectory("show")
        #expect(try TestSupport.mtok(["model", "init", "--preset", "tiny", "--seed", "2", "--out", dir + "/m.safetensors"]).status == 0)
        let photos = dir + "/photos"
        try FileManager.default.copyItem(atPath: TestSupport.packageRoot + "/tools/demo/images", toPath: photos)
        #expect(try TestSupport.mtok(["tokenize", photos, "--model", dir + "/m.safetensors", "--out", dir + "/c"]).status == 0)
        let id = "animals/chelsea.jpg"
        let r = try TestSupport.mtok(["show", dir + "/c", id, "--view", "1", "--images", photos, "--out", dir + "/g.png", "--size", "128"])
        #expect(r.status == 0 && r.stdout.contains("merge groups over 256 patches"), "\(r.stdout)\(r.stderr)")
        let png = try ImageDecoder.decode(bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/g.png"))))
        #expect(png.width == 2 * 128 + 8 && png.height == 128)

        // The right panel, at each patch's centre, is the shade of that patch's group size.
        let record = try #require(try TokenCache(path: dir + "/c").record(id: id, view: 1))
        let groups = record.groups.bytes.map(Int.init)  // u8 for the tiny model (K = 169 ≤ 256)
        #expect(groups.count == 256)
        var sizes = [Int: Int]()
        for g in groups { sizes[g, default: 0] += 1 }
        let largest = Double(sizes.values.max() ?? 1)
        var mismatches = 0
        for p in 0..<256 {
            let x = 128 + 8 + (p % 16) * 8 + 3, y = (p / 16) * 8 + 3
            let want = UInt8(40 + 215 * (Double(sizes[groups[p]]! - 1) / max(1, largest - 1)))
            if png[x, y].0 != want { mismatches += 1 }
        }
        #expect(mismatches == 0, "\(mismatches) patches shaded unlike their group's size")

        try Data("not the photo".utf8).write(to: URL(fileURLWithPath: photos + "/" + id))
        let changed = try TestSupport.mtok(["show", dir + "/c", id, "--images", photos, "--out", dir + "/h.png"])
        #expect(changed.status != 0 && changed.stderr.contains("changed since it was tokenized"), "\(changed.stderr)")
        let missing = try TestSupport.mtok(["show", dir + "/c", id, "--images", dir + "/nowhere", "--out", dir + "/h.png"])
        #expect(missing.status != 0 && missing.stderr.contains("is not at"), "\(missing.stderr)")
        let unknown = try TestSupport.mtok(["show", dir + "/c", "no/such.jpg", "--images", photos, "--out", dir + "/h.png"])
        #expect(unknown.status != 0 && unknown.stderr.contains("has no record"), "\(unknown.stderr)")
    }
}

/// `mtok report` renders in headless Chromium (Debian's package, `tools/install-deps.sh
/// --browser`): a screenshot that is not blank and a console without a message.
struct ReportTests {
    static var chromium: String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Screenshot of `page` and the console lines Chromium logged for it.
    static func render(_ page: String, to png: String) throws -> (status: Int32, console: [String]) {
        let r = try TestSupport.run("/usr/bin/timeout", ["120", chromium!, "--headless", "--no-sandbox", "--disable-gpu",
                                                         "--hide-scrollbars", "--window-size=1200,2400", "--enable-logging=stderr",
                                                         "--v=0", "--screenshot=" + png, "file://" + page])
        return (r.status, (r.stdout + r.stderr).split(separator: "\n").map(String.init).filter { $0.contains(":CONSOLE") })
    }

    @Test func reportRendersInHeadlessChromiumWithoutErrors() throws {
        guard Self.chromium != nil else { try Test.cancel("chromium is not installed (tools/install-deps.sh --browser)") }
        let dir = try TestSupport.temporaryDirectory("report")
        #expect(try TestSupport.mtok(["model", "init", "--preset", "tiny-vae-vq", "--seed", "2", "--out", dir + "/m.safetensors"]).status == 0)
        let photos = TestSupport.packageRoot + "/tools/demo/images"
        #expect(try TestSupport.mtok(["tokenize", photos, "--model", dir + "/m.safetensors", "--out", dir + "/c"]).status == 0)
        let r = try TestSupport.mtok(["report", dir + "/c", "--images", photos, "--out", dir + "/report.html"])
        #expect(r.status == 0, "\(r.stderr)")
        let html = try String(contentsOfFile: dir + "/report.html", encoding: .utf8)
        for section in ["Summary", "Failures", "Latents per channel", "Log-variance per channel", "Codebook usage", "Merge groups", "Records per label", "Samples"] {
            #expect(html.contains("<h2>\(section)</h2>"), "\(section) missing")
        }
        #expect(html.components(separatedBy: "<img ").count - 1 == 8)
        #expect(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("<script"), "the report must need no network and no script")

        let shot = try Self.render(dir + "/report.html", to: dir + "/report.png")
        #expect(shot.status == 0)
        #expect(shot.console.isEmpty, "\(shot.console)")
        let png = try ImageDecoder.decode(bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/report.png"))))
        #expect(png.width == 1200 && png.height == 2400)
        var inked = 0
        var colours = Set<Int>()
        for y in stride(from: 0, to: png.height, by: 3) {
            for x in stride(from: 0, to: png.width, by: 3) {
                let (r, g, b) = png[x, y]
                if Int(r) + Int(g) + Int(b) < 600 { inked += 1 }
                colours.insert(Int(r) << 16 | Int(g) << 8 | Int(b))
            }
        }
        let sampled = (png.width / 3) * (png.height / 3)
        #expect(inked > sampled / 20 && colours.count > 200, "looks blank: \(inked) of \(sampled) sampled pixels inked, \(colours.count) colours")

        // The console check can fail: a page with a script error is caught.
        try "<html><body><script>notAFunction()</script></body></html>".write(toFile: dir + "/bad.html", atomically: true, encoding: .utf8)
        #expect(try Self.render(dir + "/bad.html", to: dir + "/bad.png").console.contains { $0.contains("Uncaught") })
    }
}
