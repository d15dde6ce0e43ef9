import Foundation
import ShardReader
import TestSupport
import Testing

/// End-to-end runs of the built `mtok` binary: what users type, checked by exit code and output.
@Suite(.serialized)
struct StoreCLITests {
    @Test func helpListsEverySubcommand() throws {
        let r = try TestSupport.mtok(["--help"])
        #expect(r.status == 0)
        for name in ["info", "get", "verify", "synth-cache"] { #expect(r.stdout.contains("  \(name) "), "\(name) missing") }
    }

    @Test func synthInfoGetVerify() throws {
        let dir = try TestSupport.temporaryDirectory() + "/cache"
        let made = try TestSupport.mtok(["synth-cache", dir, "--records", "300", "--tokens", "64", "--groups-from", "100",
                                         "--channels", "8", "--batch-size", "64", "--shard-size-mb", "1"])
        #expect(made.status == 0, "\(made.stderr)")
        let info = try TestSupport.mtok(["info", dir, "--json"])
        #expect(info.status == 0)
        let json = try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as! [String: Any]
        #expect(json["records"] as? Int == 300)
        #expect(json["complete"] as? Bool == true)
        #expect((json["content_digest"] as? String)?.hasPrefix("sha256:") == true)

        let human = try TestSupport.mtok(["get", dir, "synthetic/00000007"])
        #expect(human.status == 0 && human.stdout.contains("latents    BF16 [64, 8]"))
        let missing = try TestSupport.mtok(["get", dir, "no/such/id"])
        #expect(missing.status == 1)
        #expect(missing.stderr.split(separator: "\n").count == 1 && missing.stderr.contains("no/such/id"))
        #expect(try TestSupport.mtok(["get", dir, "--index", "300"]).status == 1)
        #expect(try TestSupport.mtok(["verify", dir, "--deep"]).status == 0)
        let report = try TestSupport.mtok(["verify", dir, "--deep", "--json"])
        let parsed = try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as! [String: Any]
        #expect(parsed["clean"] as? Bool == true && parsed["records_checked"] as? Int == 300)
        #expect(try TestSupport.mtok(["verify", dir + "/nope"]).status == 1)
        #expect(try TestSupport.mtok(["info", dir + "/nope"]).status == 1)
    }

    /// Writes arrays with `get --out` in every format and reads them back with NumPy.
    @Test func getWritesFilesThatNumpyReads() throws {
        guard let python = TestSupport.python else {
            Issue.record("no Python with numpy: run tools/install-deps.sh")
            return
        }
        let base = try TestSupport.temporaryDirectory()
        let dir = base + "/cache"
        #expect(try TestSupport.mtok(["synth-cache", dir, "--records", "10", "--tokens", "16", "--channels", "4",
                                      "--logvar", "--latent-dtype", "f16"]).status == 0)
        for ext in ["npz", "json", "safetensors"] {
            #expect(try TestSupport.mtok(["get", dir, "synthetic/00000003", "--out", "\(base)/r.\(ext)"]).status == 0)
        }
        // Asking for fewer records than the cache holds is refused, not reported as negative.
        let fewer = try TestSupport.mtok(["synth-cache", dir, "--records", "4", "--tokens", "16", "--channels", "4",
                                          "--logvar", "--latent-dtype", "f16"])
        #expect(fewer.status == 1 && fewer.stderr.contains("already holds 10 records, more than --records 4"), "\(fewer.stderr)")
        // Options that a continued cache cannot take are named, not silently dropped.
        let relaid = try TestSupport.mtok(["synth-cache", dir, "--records", "12", "--tokens", "16", "--channels", "4",
                                           "--logvar", "--latent-dtype", "f16", "--records-per-chunk", "5"])
        #expect(relaid.status == 0 && relaid.stderr.contains("ignoring --records-per-chunk 5 (it has 16)"), "\(relaid.stderr)")
        let script = """
        import json, struct, sys, numpy as np
        base = sys.argv[1]
        z = np.load(base + "/r.npz")
        j = json.load(open(base + "/r.json"))
        raw = open(base + "/r.safetensors", "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        h = json.loads(raw[8:8 + n])
        a, b = h["latents"]["data_offsets"]
        st = np.frombuffer(raw[8 + n + a: 8 + n + b], dtype="<f2").reshape(h["latents"]["shape"]).astype(np.float32)
        assert z["latents"].dtype == np.float32 and z["latents"].shape == (16, 4)
        assert np.array_equal(z["latents"], np.array(j["latents"], dtype=np.float32))
        assert np.array_equal(z["latents"], st)
        assert np.array_equal(z["logvar"], np.array(j["logvar"], dtype=np.float32))
        assert z["indices"].tolist() == j["indices"] and z["groups"].tolist() == j["groups"]
        assert h["__metadata__"]["id"] == j["id"] == "synthetic/00000003"
        print("ok")
        """
        let r = try TestSupport.run(python, ["-c", script, base])
        #expect(r.status == 0 && r.stdout.contains("ok"), "\(r.stderr)")
    }

    /// A writer killed with SIGKILL at random moments, then resumed, ends with exactly the cache
    /// of an uninterrupted run.
    @Test func writerKilledWithSIGKILLResumesLosingNothing() throws {
        let base = try TestSupport.temporaryDirectory()
        let args = ["--records", "2500", "--tokens", "64", "--channels", "8", "--batch-size", "40", "--shard-size-mb", "1",
                    "--threads", "1"]
        let clean = base + "/clean"
        #expect(try TestSupport.mtok(["synth-cache", clean] + args).status == 0)
        let crashed = base + "/crashed"
        var kills = 0
        var previousCount = 0
        for attempt in 0..<6 {
            let run = try TestSupport.mtok(["synth-cache", crashed] + args, signal: SIGKILL, after: .random(in: 0.15...0.7))
            if run.signalled { kills += 1 }
            // What was committed before the kill is still there.
            if let m = try? String(contentsOfFile: crashed + "/manifest.json", encoding: .utf8),
               let data = m.data(using: .utf8),
               let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               let totals = json["totals"] as? [String: Any], let n = totals["records"] as? Int {
                #expect(n >= previousCount, "attempt \(attempt): \(n) records after resume, had \(previousCount)")
                previousCount = n
            }
        }
        #expect(kills >= 2, "the writer should have been killed mid-run at least twice")
        let resumed = try TestSupport.mtok(["synth-cache", crashed] + args)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let verify = try TestSupport.mtok(["verify", crashed, "--deep"])
        #expect(verify.status == 0, "\(verify.stdout)")
        let a = try TokenCache(path: clean), b = try TokenCache(path: crashed)
        #expect(a.count == 2500 && b.count == 2500)
        #expect(a.manifest.contentDigest == b.manifest.contentDigest)
    }
}
