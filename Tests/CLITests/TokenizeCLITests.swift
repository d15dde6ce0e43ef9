import Foundation
import ShardFormat
import ShardReader
import TensorFiles
import TestSupport
import Testing

/// End-to-end runs of `mtok tokenize` on real photographs with the tiny preset.
@Suite(.serialized)
struct TokenizeCLITests {
    static let fixtures = TestSupport.packageRoot + "/Tests/ImageDecodingTests/Fixtures"
    static let photos = TestSupport.packageRoot + "/tools/demo/images"

    /// An untrained tiny model (64×64 input), made once per test.
    func tinyModel(_ dir: String) throws -> String {
        let path = dir + "/tiny.safetensors"
        let r = try TestSupport.mtok(["model", "init", "--preset", "tiny", "--seed", "3", "--out", path])
        #expect(r.status == 0, "\(r.stderr)")
        return path
    }

    /// An ImageFolder: the demo photos copied `copies` times, plus the given extra files per class.
    func dataset(_ dir: String, copies: Int = 1, extras: [String: [String]] = [:]) throws -> String {
        let root = dir + "/data"
        let fm = FileManager.default
        for cls in try fm.contentsOfDirectory(atPath: Self.photos).sorted() {
            try fm.createDirectory(atPath: root + "/" + cls, withIntermediateDirectories: true)
            for name in try fm.contentsOfDirectory(atPath: Self.photos + "/" + cls) {
                for c in 0..<copies {
                    try fm.copyItem(atPath: "\(Self.photos)/\(cls)/\(name)", toPath: "\(root)/\(cls)/\(c)_\(name)")
                }
            }
        }
        for (cls, files) in extras {
            try fm.createDirectory(atPath: root + "/" + cls, withIntermediateDirectories: true)
            for f in files { try fm.copyItem(atPath: Self.fixtures + "/" + f, toPath: root + "/" + cls + "/" + f) }
        }
        return root
    }

    func tokenize(_ data: String, _ model: String, _ out: String, _ extra: [String] = []) throws -> TestSupport.ProcessResult {
        try TestSupport.mtok(["tokenize", data, "--model", model, "--out", out, "--resolution", "64"] + extra)
    }

    func digest(_ cache: String) throws -> String? { try TokenCache(path: cache).manifest.contentDigest }

    /// The bytes of a cache's stats.json (nil when it has none).
    func statsFile(_ cache: String) -> Data? { FileManager.default.contents(atPath: cache + "/stats.json") }

    @Test func cleanRunVerifiesAndLogsExactlyTheBrokenInputs() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let broken = ["empty.jpg", "truncated_baseline.jpg", "not_an_image.jpg", "truncated.png", "corrupt_marker.jpg"]
        let tricky = ["png_named.jpg", "photo_chelsea_cmyk_adobe.jpg", "photo_chelsea_ycck.jpg", "photo_hubble_gray.jpg",
                      "photo_camera_gray16.png", "photo_ihc_rgba.png", "photo_chelsea_palette_trns.png"]
        let data = try dataset(dir, extras: ["zz_odd": broken + tricky])
        let r = try tokenize(data, model, dir + "/cache")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("finished"))
        #expect(try TestSupport.mtok(["verify", dir + "/cache", "--deep"]).status == 0)
        let lines = try String(contentsOfFile: dir + "/cache/failures.jsonl", encoding: .utf8).split(separator: "\n")
        let failed = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(Set(failed.compactMap { $0["id"] as? String }) == Set(broken.map { "zz_odd/" + $0 }))
        #expect(failed.allSatisfy { ($0["reason"] as? String)?.isEmpty == false && $0["path"] is String })
        let kinds = Dictionary(uniqueKeysWithValues: failed.map { ($0["id"] as! String, $0["kind"] as! String) })
        #expect(kinds["zz_odd/empty.jpg"] == "empty")
        #expect(kinds["zz_odd/truncated_baseline.jpg"] == "truncated")
        #expect(kinds["zz_odd/not_an_image.jpg"] == "notAnImage")
        try expectValidAgainstSchemas(dir + "/cache")
        let cache = try TokenCache(path: dir + "/cache")
        #expect(cache.count == 2 * (11 + tricky.count))
        #expect(cache.manifest.classes == ["animals", "objects", "people", "science", "zz_odd"])
        let flipped = try #require(try cache.record(id: "zz_odd/png_named.jpg", view: 1))
        #expect(flipped.label == 4 && flipped.view == 1)
        #expect(flipped.latents.shape == [169, 8] && flipped.groups.shape == [256])
        let cat = try #require(try cache.record(id: "animals/0_chelsea.jpg"))
        #expect(cat.sourceWidth == 384 && cat.sourceHeight == 255 && cat.label == 0)
        // The centre square of a 384×255 landscape photo, to within the floor of ADM's box halving.
        #expect(cat.cropBox.y == 0 && cat.cropBox.height == 255)
        #expect(abs(cat.cropBox.width - 255) <= 3 && abs(cat.cropBox.x - (384 - cat.cropBox.width) / 2) <= 3)
    }

    /// The cache's JSON files follow the JSON Schemas in Schemas/ (checked with Python's jsonschema).
    func expectValidAgainstSchemas(_ cache: String) throws {
        guard let python = TestSupport.python else {
            Issue.record("no Python with jsonschema: run tools/install-deps.sh")
            return
        }
        let script = """
        import json, os, sys, jsonschema
        schemas, cache = sys.argv[1], sys.argv[2]
        load = lambda n: json.load(open(f"{schemas}/{n}"))
        jsonschema.validate(json.load(open(f"{cache}/manifest.json")), load("manifest.schema.json"))
        n = 0
        failures = f"{cache}/failures.jsonl"
        for line in (open(failures) if os.path.exists(failures) else []):
            jsonschema.validate(json.loads(line), load("failure.schema.json"))
            n += 1
        stats = f"{cache}/stats.json"
        if os.path.exists(stats):
            jsonschema.validate(json.load(open(stats)), load("stats.schema.json"))
        print("valid", n, os.path.exists(stats))
        """
        let r = try TestSupport.run(python, ["-c", script, TestSupport.packageRoot + "/Schemas", cache])
        #expect(r.status == 0 && r.stdout.contains("valid"), "\(r.stderr)")
        let m = try? Manifest.read(fromCache: cache)
        if m?.complete == true && m?.part == nil { #expect(r.stdout.hasSuffix("True\n"), "a finished cache without stats.json") }
    }

    @Test func recordsDoNotDependOnThreadsOrBatchSize() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        #expect(try tokenize(data, model, dir + "/a", ["--threads", "1", "--batch-size", "3"]).status == 0)
        #expect(try tokenize(data, model, dir + "/b", ["--threads", "2", "--decode-workers", "3", "--batch-size", "8"]).status == 0)
        let a = try digest(dir + "/a"), b = try digest(dir + "/b")
        #expect(a != nil && a == b)
        #expect(statsFile(dir + "/a") != nil && statsFile(dir + "/a") == statsFile(dir + "/b"), "statistics depend on threads or batch size")
    }

    @Test func fourRanksAndMergeGiveTheRecordsOfOneRank() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir, copies: 2)
        #expect(try tokenize(data, model, dir + "/one").status == 0)
        for rank in 0..<4 {
            // Rank 2 takes its rank from the Slurm array variables, as an array job would.
            let r: TestSupport.ProcessResult
            if rank == 2 {
                r = try TestSupport.run(TestSupport.mtokBinary,
                                        ["tokenize", data, "--model", model, "--out", dir + "/four", "--resolution", "64"],
                                        environment: ["SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"])
            } else {
                r = try tokenize(data, model, dir + "/four", ["--rank", "\(rank)", "--world-size", "4"])
            }
            #expect(r.status == 0, "\(r.stderr)")
        }
        let early = try TestSupport.mtok(["merge", dir + "/nothing-here"])
        #expect(early.status == 1)
        let merged = try TestSupport.mtok(["merge", dir + "/four"])
        #expect(merged.status == 0, "\(merged.stderr)")
        #expect(try TestSupport.mtok(["verify", dir + "/four", "--deep"]).status == 0)
        try expectValidAgainstSchemas(dir + "/four")
        #expect(try digest(dir + "/four") == (try digest(dir + "/one")))
        #expect(statsFile(dir + "/four") != nil && statsFile(dir + "/four") == statsFile(dir + "/one"), "4 ranks + merge: other statistics than one rank")
        let one = try TokenCache(path: dir + "/one"), four = try TokenCache(path: dir + "/four")
        #expect(one.count == four.count && one.count == 44)
        for i in stride(from: 0, to: one.count, by: 7) { #expect(try one.payload(at: i) == four.payload(at: i)) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/four/parts"))
    }

    /// A merge tried before every rank finished names the unfinished and missing ranks and
    /// leaves nothing that stops the ranks (its lock file stays, and is no obstacle); `merge
    /// --wait` started early merges once the last rank finishes.
    @Test func earlyMergeNeverBlocksTheRanks() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        let out = dir + "/three"
        func rank(_ r: Int) throws -> TestSupport.ProcessResult {
            try tokenize(data, model, out, ["--rank", "\(r)", "--world-size", "3", "--views", "center"])
        }
        #expect(try rank(0).status == 0)
        let early = try TestSupport.mtok(["merge", out])
        #expect(early.status == 1 && early.stderr.contains("cannot be merged yet: 1 of 3 parts finished") && early.stderr.contains("not started: rank 1, 2")
                && !early.stderr.contains("shard"),
                "\(early.stderr)")
        #expect(FileManager.default.fileExists(atPath: out + "/.merge.lock"))
        let timedOut = try TestSupport.mtok(["merge", out, "--wait", "--timeout", "1", "--poll", "0.2"])
        #expect(timedOut.status == 1 && timedOut.stderr.contains("gave up after 1 s"), "\(timedOut.stderr)")
        #expect(try rank(1).status == 0, "a rank starting after an early merge must not be refused")
        // A merge step started before the last rank: it waits, then merges.
        let waiting = Process()
        waiting.executableURL = URL(fileURLWithPath: TestSupport.mtokBinary)
        waiting.arguments = ["merge", out, "--wait", "--timeout", "300", "--poll", "0.2"]
        waiting.standardOutput = FileHandle.nullDevice
        waiting.standardError = FileHandle.nullDevice
        try waiting.run()
        let last = try rank(2)
        #expect(last.status == 0, "\(last.stderr)")
        waiting.waitUntilExit()
        #expect(waiting.terminationStatus == 0)
        #expect(try TestSupport.mtok(["verify", out, "--deep"]).status == 0)
        #expect(try TokenCache(path: out).count == 11)
    }

    /// A merge SIGKILLed half-way (after its plan and some moves) leaves a cache that the next
    /// `mtok merge` finishes, to the single-machine digest; a merge lock held by a live process
    /// refuses a second merge, and the same lock left by a killed process is taken over.
    @Test func killedMergeResumesAndADeadLockHolderIsNoObstacle() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        #expect(try tokenize(data, model, dir + "/one", ["--views", "center"]).status == 0)
        let out = dir + "/three"
        for r in 0..<3 {
            #expect(try tokenize(data, model, out, ["--rank", "\(r)", "--world-size", "3", "--views", "center"]).status == 0)
        }
        // A live holder of the lock (util-linux flock, a real second process).
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = [out + "/.merge.lock", "sleep", "60"]
        try holder.run()
        var busy: TestSupport.ProcessResult?
        for _ in 0..<50 {  // until flock has the lock
            busy = try TestSupport.mtok(["merge", out])
            if busy?.stderr.contains("another process is merging") == true { break }
            usleep(100_000)
        }
        #expect(busy?.status == 1 && busy?.stderr.contains("another process is merging") == true, "\(busy?.stderr ?? "")")
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()

        // The merge dies after one of its three moves.
        let killed = try TestSupport.run(TestSupport.mtokBinary, ["merge", out], environment: ["MTOK_TEST_KILL_MERGE_AFTER_MOVES": "1"])
        #expect(killed.status == SIGKILL, "\(killed.status) \(killed.stderr)")
        #expect(FileManager.default.fileExists(atPath: out + "/merge-plan.json"))
        #expect(!FileManager.default.fileExists(atPath: out + "/manifest.json"))
        let resumed = try TestSupport.mtok(["merge", out])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try TestSupport.mtok(["verify", out, "--deep"]).status == 0)
        #expect(try digest(out) == (try digest(dir + "/one")))
        #expect(statsFile(out) != nil && statsFile(out) == statsFile(dir + "/one"), "3 ranks + merge: other statistics than one rank")
        #expect(!FileManager.default.fileExists(atPath: out + "/merge-plan.json"))
    }

    /// First contact: every message says what happened and what to do next. An untrained model
    /// is named as such; a summary names failures.jsonl and counts the non-image files it left
    /// out; an unfinished cache is "unfinished" (exit 2), not faulty; a changed --limit, a JPEG
    /// given as the model and an early merge say so; a relative output path works.
    @Test func messagesSayWhatHappenedAndWhatToDo() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir, extras: ["zz_odd": ["empty.jpg", "not_an_image.jpg"]])
        try Data("notes".utf8).write(to: URL(fileURLWithPath: data + "/animals/notes.txt"))
        try Data("readme".utf8).write(to: URL(fileURLWithPath: data + "/README.txt"))
        func mtok(_ args: [String]) throws -> TestSupport.ProcessResult {
            try TestSupport.run(TestSupport.mtokBinary, args, currentDirectory: dir)  // "c" is relative to dir
        }
        let base = ["tokenize", data, "--model", model, "--out", "c", "--resolution", "64"]

        // Stops at the first failure (--max-failures 0): unfinished, resumable, no fault.
        let stopped = try mtok(base + ["--max-failures", "0"])
        #expect(stopped.status == 3, "\(stopped.stderr)")
        #expect(stopped.stderr.contains("UNTRAINED random weights (preset tiny, seed 3)"), "\(stopped.stderr)")
        let unfinished = try mtok(["verify", "c"])
        #expect(unfinished.status == 2, "\(unfinished.stdout)")
        #expect(unfinished.stdout.contains("UNFINISHED its writer has not finished") && !unfinished.stdout.contains("FAULT"), "\(unfinished.stdout)")

        let resumed = try mtok(base)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stdout.contains("failures   1 input(s) could not be tokenized; each is a line of c/failures.jsonl"), "\(resumed.stdout)")
        #expect(resumed.stdout.contains("skipped    2 file(s) that are not images by their extension, e.g. animals/notes.txt"), "\(resumed.stdout)")
        #expect(try mtok(["verify", "c", "--deep"]).status == 0)
        let info = try mtok(["info", "c"]).stdout
        #expect(info.contains("classes         5: animals, objects, people, science, zz_odd"), "\(info)")
        #expect(info.contains("failures        2 input(s) could not be tokenized"), "\(info)")
        #expect(info.contains("model           UNTRAINED random weights"), "\(info)")
        #expect(info.contains("preprocessing   crop adm, views center,hflip, 64 px"), "\(info)")
        let json = try JSONSerialization.jsonObject(with: Data(try mtok(["info", "c", "--json"]).stdout.utf8)) as? [String: Any]
        #expect(json?["failures"] as? Int == 2)
        #expect((json?["class_names"] as? [String])?.last == "zz_odd")

        let limited = try mtok(base + ["--limit", "3"])
        #expect(limited.status != 0 && limited.stderr.contains("inputs.count is 13 there, 3 now") && limited.stderr.contains("another --limit"),
                "\(limited.stderr)")
        let jpeg = try mtok(["tokenize", data, "--model", data + "/animals/0_chelsea.jpg", "--out", "d"])
        #expect(jpeg.status != 0 && jpeg.stderr.contains("is a JPEG image, not encoder weights"), "\(jpeg.stderr)")
        let version = try mtok(["--version"])
        #expect(version.status == 0 && version.stdout.hasPrefix("mtok ") && version.stdout.contains("encoder arithmetic"), "\(version.stdout)")
    }

    /// `tokenize` takes `preprocess`'s decode choices: EXIF rotation and an alpha background
    /// change the records of exactly the images they concern, go into the settings (only when not
    /// the default, so older caches still resume), and a resume with other choices is refused.
    @Test func decodeChoicesChangeTheirImagesAndAreRecorded() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = dir + "/flat"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        for f in ["exif_orientation_6.jpg", "photo_ihc_rgba.png", "photo_chelsea_ycck.jpg"] {
            try FileManager.default.copyItem(atPath: Self.fixtures + "/" + f, toPath: data + "/" + f)
        }
        #expect(try tokenize(data, model, dir + "/plain", ["--views", "center"]).status == 0)
        let chosen = ["--views", "center", "--apply-exif", "--background", "255,255,255"]
        let r = try tokenize(data, model, dir + "/chosen", chosen)
        #expect(r.status == 0, "\(r.stderr)")
        let plain = try TokenCache(path: dir + "/plain"), other = try TokenCache(path: dir + "/chosen")
        func latents(_ c: TokenCache, _ id: String) throws -> [UInt8] {
            try c.record(at: try #require(try c.index(of: id))).latents.bytes
        }
        #expect(try latents(plain, "exif_orientation_6.jpg") != latents(other, "exif_orientation_6.jpg"))
        #expect(try latents(plain, "photo_ihc_rgba.png") != latents(other, "photo_ihc_rgba.png"))
        #expect(try latents(plain, "photo_chelsea_ycck.jpg") == latents(other, "photo_chelsea_ycck.jpg"))
        let pre = other.manifest.settings["preprocessing"]
        #expect(pre?["exif_transpose"] == .bool(true))
        #expect(pre?["alpha_background"] == .array([.number(255), .number(255), .number(255)]))
        #expect(plain.manifest.settings["preprocessing"]?["exif_transpose"] == nil)
        let again = try tokenize(data, model, dir + "/chosen", ["--views", "center"])
        #expect(again.status != 0 && again.stderr.contains("preprocessing.alpha_background is [255,255,255] there, absent now")
                && again.stderr.contains("mtok info shows them"), "\(again.stderr)")
    }

    /// `--append` adds only the new photos after the cache's records, survives SIGKILL, and gives
    /// the records (and content digest) of a fresh run over the old inputs followed by the new.
    @Test func appendAddsNewInputsAsAFreshRunOverOldThenNew() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir, copies: 2)
        let fm = FileManager.default
        let later = ["objects/1_coins.jpg", "objects/1_rocket.jpg", "science/1_hubble_deep_field.jpg",
                     "science/1_immunohistochemistry.jpg", "science/1_moon.jpg", "science/1_retina.jpg"]
        try fm.createDirectory(atPath: dir + "/held", withIntermediateDirectories: true)
        for (n, id) in later.enumerated() { try fm.moveItem(atPath: data + "/" + id, toPath: "\(dir)/held/\(n)") }
        let args = ["--views", "center,hflip", "--batch-size", "1"]
        #expect(try tokenize(data, model, dir + "/g", args).status == 0)
        let oldIds = try (0..<16).map { try TokenCache(path: dir + "/g").record(at: 2 * $0).id }
        for (n, id) in later.enumerated() { try fm.moveItem(atPath: "\(dir)/held/\(n)", toPath: data + "/" + id) }

        // Not --append: the grown folder is refused, and the message names --append.
        let plain = try tokenize(data, model, dir + "/g", args)
        #expect(plain.status != 0 && plain.stderr.contains("--append"), "\(plain.stderr)")
        // SIGKILL the append until a kill lands after some of its records are committed.
        var committedBeforeKill: Int?
        for delay in [0.5, 0.8, 1.1, 1.5, 2.0, 2.5, 3.0] where committedBeforeKill == nil {
            let run = try TestSupport.mtok(["tokenize", data, "--model", model, "--out", dir + "/g", "--resolution", "64", "--append"] + args,
                                           signal: SIGKILL, after: delay)
            guard run.signalled else { break }
            let count = try TokenCache(path: dir + "/g").count
            if count > 32 { committedBeforeKill = count }
        }
        #expect(committedBeforeKill.map { $0 < 44 } == true, "no kill landed mid-append: \(String(describing: committedBeforeKill))")
        #expect(try TestSupport.mtok(["verify", dir + "/g"]).status == 2, "a killed append leaves an unfinished cache")
        let done = try tokenize(data, model, dir + "/g", args + ["--append"])
        #expect(done.status == 0, "\(done.stderr)")
        #expect(try TestSupport.mtok(["verify", dir + "/g", "--deep"]).status == 0)
        let grown = try TokenCache(path: dir + "/g")
        #expect(grown.count == 44)
        #expect(try (32..<44).map { try grown.record(at: $0).id } == later.flatMap { [$0, $0] })

        // A fresh run over a list: the old inputs in their order, then the new ones.
        let classes = try #require(grown.manifest.classes)
        let lines = try (oldIds + later).map { id -> String in
            let label = try #require(classes.firstIndex(of: String(id.split(separator: "/")[0])))
            return #"{"path": "\#(data)/\#(id)", "id": "\#(id)", "label": \#(label)}"#
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/all.jsonl", atomically: true, encoding: .utf8)
        #expect(try tokenize(dir + "/all.jsonl", model, dir + "/fresh", args).status == 0)
        let fresh = try TokenCache(path: dir + "/fresh")
        #expect(fresh.count == grown.count)
        for i in 0..<grown.count { #expect(try grown.record(at: i) == fresh.record(at: i), "record \(i)") }
        #expect(grown.manifest.contentDigest != nil && grown.manifest.contentDigest == fresh.manifest.contentDigest)

        let again = try tokenize(data, model, dir + "/g", args + ["--append"])
        #expect(again.status == 0 && again.stdout.contains("nothing to add: all 22 inputs"), "\(again.stdout)")
        try fm.createDirectory(atPath: data + "/zz_new", withIntermediateDirectories: true)
        try fm.copyItem(atPath: data + "/animals/0_chelsea.jpg", toPath: data + "/zz_new/x.jpg")
        let newClass = try tokenize(data, model, dir + "/g", args + ["--append"])
        #expect(newClass.status != 0 && newClass.stderr.contains("has a class 'zz_new' that"), "\(newClass.stderr)")
    }

    @Test func killedWithSIGKILLAndResumedGivesTheSameCache() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir, copies: 4)
        let args = ["--batch-size", "4"]
        #expect(try tokenize(data, model, dir + "/clean", args).status == 0)
        var kills = 0
        for _ in 0..<5 {
            let run = try TestSupport.mtok(["tokenize", data, "--model", model, "--out", dir + "/crashed", "--resolution", "64"] + args,
                                           signal: SIGKILL, after: .random(in: 0.1...0.9))
            if run.signalled { kills += 1 }
        }
        #expect(kills >= 2, "the run should have been killed mid-way at least twice")
        let r = try tokenize(data, model, dir + "/crashed", args)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try TestSupport.mtok(["verify", dir + "/crashed", "--deep"]).status == 0)
        #expect(try digest(dir + "/crashed") == (try digest(dir + "/clean")))
        #expect(statsFile(dir + "/crashed") != nil && statsFile(dir + "/crashed") == statsFile(dir + "/clean"), "statistics after SIGKILL + resume")
        // Every record is attributed to a session, the killed ones included (one kernel set here).
        let m = try TokenCache(path: dir + "/crashed").manifest
        #expect(m.arithmeticProblem == nil, "\(m.arithmetic ?? [])")
        #expect(Set((m.arithmetic ?? []).map { $0.madeBy?.kernel }).count == 1, "\(m.arithmetic ?? [])")
        #expect(m.arithmetic?.last?.records ?? 0 > 0)
    }

    @Test func sigtermFinishesTheBatchAndTheRunResumes() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir, copies: 4)
        #expect(try tokenize(data, model, dir + "/clean", ["--batch-size", "2"]).status == 0)
        let run = try TestSupport.mtok(["tokenize", data, "--model", model, "--out", dir + "/stopped", "--resolution", "64", "--batch-size", "2"],
                                       signal: SIGTERM, after: 0.4)
        // Stopped cleanly between batches (130), or finished before the signal arrived (0).
        if run.signalled { #expect(run.status == 130 || run.status == 0) }
        #expect(try tokenize(data, model, dir + "/stopped", ["--batch-size", "2"]).status == 0)
        #expect(try digest(dir + "/stopped") == (try digest(dir + "/clean")))
    }

    /// `mtok encode IMAGE` and `mtok tokenize` see the same pixels and produce the same tokens.
    @Test func encodeOfAnImageMatchesTheTokenizedRecord() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        #expect(try tokenize(data, model, dir + "/cache", ["--views", "center", "--latent-dtype", "f32"]).status == 0)
        let image = data + "/objects/0_coffee.jpg"
        let r = try TestSupport.mtok(["encode", image, "--model", model, "--out", dir + "/one.safetensors"])
        #expect(r.status == 0, "\(r.stderr)")
        let blob = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir + "/one.safetensors")))
        let (tensors, _) = try blob.withUnsafeBytes { try Safetensors.decode($0) }
        let encoded = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0) })
        let record = try #require(try TokenCache(path: dir + "/cache").record(id: "objects/0_coffee.jpg"))
        #expect(encoded["latents"]?.bytes == record.latents.bytes)
        #expect(encoded["indices"].map { $0.bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) } } == record.indicesAsUInt32())
        #expect(encoded["groups"].map { $0.bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)).map(UInt32.init) } } == record.groupsAsUInt32())
    }

    /// JSONL and CSV lists: paths relative to the list, ids and labels as given, in list order;
    /// a flat folder gets ids from file names and no labels.
    @Test func listsAndFlatFoldersNumberRecordsAsGiven() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        try Data(("{\"path\": \"data/science/0_moon.jpg\", \"id\": \"moon\", \"label\": 7}\n"
                  + "{\"path\": \"data/animals/0_chelsea.jpg\"}\n").utf8).write(to: URL(fileURLWithPath: dir + "/list.jsonl"))
        try Data("path,label,id\ndata/people/0_camera.jpg,2,cam\ndata/objects/0_rocket.jpg,,\n".utf8)
            .write(to: URL(fileURLWithPath: dir + "/list.csv"))
        #expect(try tokenize(dir + "/list.jsonl", model, dir + "/j", ["--views", "center"]).status == 0)
        #expect(try tokenize(dir + "/list.csv", model, dir + "/c", ["--views", "center"]).status == 0)
        let j = try TokenCache(path: dir + "/j"), c = try TokenCache(path: dir + "/c")
        #expect(try (0..<2).map { try j.record(at: $0).id } == ["moon", "data/animals/0_chelsea.jpg"])
        #expect(try (0..<2).map { try j.record(at: $0).label } == [7, -1])
        #expect(try (0..<2).map { try c.record(at: $0).id } == ["cam", "data/objects/0_rocket.jpg"])
        #expect(try (0..<2).map { try c.record(at: $0).label } == [2, -1])
        #expect(j.manifest.classes == nil)
        let flat = data + "/science"
        #expect(try tokenize(flat, model, dir + "/f", ["--views", "center"]).status == 0)
        let f = try TokenCache(path: dir + "/f")
        #expect(try (0..<f.count).map { try f.record(at: $0).id } == ["0_hubble_deep_field.jpg", "0_immunohistochemistry.jpg", "0_moon.jpg", "0_retina.jpg"])
        #expect(try f.record(at: 0).label == -1)
    }

    /// ImageFolder order is torchvision's: classes sorted, then `sorted(os.walk)` inside each
    /// (whole paths compared, so "sub 2" and "sub-a" come between "sub" and "sub/deeper"), files
    /// sorted by code point ("B" before "a"). Hidden files and folders are skipped
    /// (.ipynb_checkpoints, macOS "._" files), and a symbolic-link loop is walked once.
    @Test func imageFolderOrderIsTorchvisionsSortedWalk() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let photo = Self.photos + "/objects/coffee.jpg"
        let root = dir + "/tree"
        let files = ["a/x.jpg", "a/sub/y.jpg", "a/sub 2/w.jpg", "a/sub-a/z.jpg", "a/sub/deeper/v.jpg", "b/B.jpg", "b/a.jpg",
                     ".hidden/h.jpg", "a/.ipynb_checkpoints/c.jpg", "a/._x.jpg"]
        let fm = FileManager.default
        for f in files {
            try fm.createDirectory(atPath: (root + "/" + f as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try fm.copyItem(atPath: photo, toPath: root + "/" + f)
        }
        try fm.createSymbolicLink(atPath: root + "/a/sub/again", withDestinationPath: "..")
        let r = try tokenize(root, model, dir + "/out", ["--views", "center"])
        #expect(r.status == 0, "\(r.stderr)")
        let cache = try TokenCache(path: dir + "/out")
        let ids = try (0..<cache.count).map { try cache.record(at: $0).id }
        #expect(ids == ["a/x.jpg", "a/sub/y.jpg", "a/sub 2/w.jpg", "a/sub-a/z.jpg", "a/sub/deeper/v.jpg", "b/B.jpg", "b/a.jpg"])
        #expect(try (0..<cache.count).map { try cache.record(at: $0).label } == [0, 0, 0, 0, 0, 1, 1])
        #expect(cache.manifest.classes == ["a", "b"])
    }

    /// Lists as spreadsheets and scripts write them: a byte-order mark, CRLF, quoted fields with
    /// commas, doubled quotes and line breaks, integer ids in JSON; and lists that are wrong
    /// refused before any work, naming the line.
    @Test func listsInTheirCommonDialects() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/img", withIntermediateDirectories: true)
        try fm.copyItem(atPath: Self.photos + "/objects/coffee.jpg", toPath: dir + "/img/with space, comma.jpg")
        try fm.copyItem(atPath: Self.photos + "/animals/chelsea.jpg", toPath: dir + "/img/cat.jpg")
        func write(_ name: String, _ bytes: [UInt8]) throws -> String {
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name))
            return dir + "/" + name
        }
        let csv = try write("list.csv", [0xEF, 0xBB, 0xBF] + Array(("path , label,id\r\n"
            + "\"img/with space, comma.jpg\",1,\"say \"\"hi\"\"\"\r\n\r\n"
            + "img/cat.jpg, 0 ,\"two\r\nlines\"\r\n").utf8))
        #expect(try tokenize(csv, model, dir + "/c", ["--views", "center"]).status == 0)
        let c = try TokenCache(path: dir + "/c")
        #expect(try (0..<c.count).map { try c.record(at: $0).id } == ["say \"hi\"", "two\r\nlines"])
        #expect(try (0..<c.count).map { try c.record(at: $0).label } == [1, 0])
        let jsonl = try write("list.jsonl", Array(("{\"path\": \"img/cat.jpg\", \"id\": 17, \"label\": 3}\r\n\r\n"
            + "{\"path\": \"img/with space, comma.jpg\", \"label\": null}\r\n").utf8))
        #expect(try tokenize(jsonl, model, dir + "/j", ["--views", "center"]).status == 0)
        let j = try TokenCache(path: dir + "/j")
        #expect(try (0..<j.count).map { try j.record(at: $0).id } == ["17", "img/with space, comma.jpg"])
        #expect(try (0..<j.count).map { try j.record(at: $0).label } == [3, -1])

        try fm.createDirectory(atPath: dir + "/empty/sub", withIntermediateDirectories: true)
        let refused: [(String, String)] = [
            (try write("a.csv", Array("path,label\nimg/cat.jpg,1\n\"img/x.jpg,2\n".utf8)), "line 3: a quoted field is not closed"),
            (try write("b.csv", Array("path,label\nimg/cat.jpg,cat\n".utf8)), "line 2: label \"cat\" is not an integer in -1...2147483647"),
            (try write("g.jsonl", Array("{\"path\": \"img/cat.jpg\", \"label\": 3000000000}\n".utf8)),
             "line 1: \"label\" must be an integer in -1...2147483647"),
            (try write("c.jsonl", Array("{\"path\": \"img/cat.jpg\"}\n{\"path\": \"img/cat.jpg\", \"label\": true}\n".utf8)),
             "line 2: \"label\" must be an integer"),
            (try write("d.jsonl", Array("{\"path\": \"img/cat.jpg\", \"id\": [1]}\n".utf8)), "line 1: \"id\" must be a string or an integer"),
            (try write("e.csv", Array("path,label\n".utf8)), "the list names no images"),
            (try write("f.jsonl", Array(("{\"path\": \"img/cat.jpg\", \"id\": \"a\"}\n{\"path\": \"img/cat.jpg\", \"id\": \"b\"}\n"
                + "{\"path\": \"img/cat.jpg\", \"id\": \"a\"}\n").utf8)), "id \"a\" is given to inputs 1 and 3"),
            (dir + "/empty", "holds no image files"),
        ]
        for (input, message) in refused {
            let r = try tokenize(input, model, dir + "/refused")
            #expect(r.status != 0 && r.stderr.contains(message), "\(input): \(r.stderr)")
            #expect(!fm.fileExists(atPath: dir + "/refused"), "\(input) left an output behind")
        }
    }

    @Test func badSetupIsRefusedBeforeAnyWork() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        let missing = try tokenize(dir + "/no-such-folder", model, dir + "/x")
        #expect(missing.status == 1 && missing.stderr.contains("no-such-folder"))
        try Data("not a model".utf8).write(to: URL(fileURLWithPath: dir + "/bad.safetensors"))
        let badModel = try tokenize(data, dir + "/bad.safetensors", dir + "/y")
        #expect(badModel.status == 1 && badModel.stderr.contains("bad.safetensors"))
        #expect(try tokenize(data, model, dir + "/z", ["--views", "center"]).status == 0)
        let other = try tokenize(data, model, dir + "/z", ["--views", "center,hflip"])
        // The message names what differs, so the user knows which flag to restore.
        #expect(other.status == 1 && other.stderr.contains("other settings: preprocessing.views is [0] there, [0,1] now"),
                "\(other.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/x/manifest.json"))
        // A list that gives one id to two inputs is refused up front, naming the id.
        let list = dir + "/list.jsonl"
        try Data((#"{"path": "\#(data)/animals/0_chelsea.jpg", "id": "same", "label": 1}"# + "\n"
                  + #"{"path": "\#(data)/people/0_camera.jpg", "id": "same"}"# + "\n").utf8).write(to: URL(fileURLWithPath: list))
        let dup = try tokenize(list, model, dir + "/w")
        #expect(dup.status == 1 && dup.stderr.contains("\"same\"") && dup.stderr.contains("inputs 1 and 2"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/w/manifest.json"))
    }

    /// A rank of another split, or a rank rerun (a requeued Slurm task) after its parts were
    /// merged, is refused before it encodes anything.
    @Test func ranksOfAnotherSplitOrAfterTheMergeAreRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        let out = dir + "/split"
        for rank in 0..<2 {
            let r = try tokenize(data, model, out, ["--rank", "\(rank)", "--world-size", "2", "--limit", "4"])
            #expect(r.status == 0, "\(r.stderr)")
        }
        let other = try tokenize(data, model, out, ["--rank", "0", "--world-size", "3", "--limit", "4"])
        #expect(other.status == 1 && other.stderr.contains("split 2 ways"), "\(other.stderr)")
        #expect(try TestSupport.mtok(["merge", out]).status == 0)
        let again = try tokenize(data, model, out, ["--rank", "1", "--world-size", "2", "--limit", "4"])
        #expect(again.status == 1 && again.stderr.contains("already one cache"), "\(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/parts"))
        #expect(try TestSupport.mtok(["verify", out, "--deep"]).status == 0)
    }

    /// Mistakes that would leave a half-made output, mix a cache into other files, or write a
    /// whole cache where a part was meant are refused before anything is written.
    @Test func mistakenOutputsAndFlagsAreRefusedUpFront() throws {
        let dir = try TestSupport.temporaryDirectory()
        let model = try tinyModel(dir)
        let data = try dataset(dir)
        let fm = FileManager.default
        let twice = try tokenize(data, model, dir + "/a", ["--views", "center,center"])
        #expect(twice.status == 1 && twice.stderr.contains("names a view twice"))
        #expect(!fm.fileExists(atPath: dir + "/a"))
        // The dataset folder itself, or any directory holding other files.
        let intoData = try tokenize(data, model, data)
        #expect(intoData.status == 1 && intoData.stderr.contains("inside the input folder"), "\(intoData.stderr)")
        #expect(!fm.fileExists(atPath: data + "/shards") && !fm.fileExists(atPath: data + "/manifest.json"))
        try fm.createDirectory(atPath: dir + "/notes", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/notes/todo.txt"))
        let intoOther = try tokenize(data, model, dir + "/notes")
        #expect(intoOther.status == 1 && intoOther.stderr.contains("holds no cache (it has todo.txt)"), "\(intoOther.stderr)")
        #expect(!fm.fileExists(atPath: dir + "/notes/shards"))
        // Inside the input folder the next run would list the cache among the inputs.
        let inside = try tokenize(data, model, data + "/cache")
        #expect(inside.status == 1 && inside.stderr.contains("inside the input folder"), "\(inside.stderr)")
        #expect(!fm.fileExists(atPath: data + "/cache"))
        // A shards folder holding other files is not a writer's leftover.
        try fm.createDirectory(atPath: dir + "/odd/shards", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/odd/shards/notes.txt"))
        let odd = try tokenize(data, model, dir + "/odd")
        #expect(odd.status == 1 && odd.stderr.contains("shards/notes.txt"), "\(odd.stderr)")
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/file"))
        let intoFile = try tokenize(data, model, dir + "/file")
        #expect(intoFile.status == 1 && intoFile.stderr.contains("not a directory"))
        // A rank without a world size (and no scheduler variables) is a mistake, not rank 0 of 1.
        let rankOnly = try tokenize(data, model, dir + "/b", ["--rank", "1"])
        #expect(rankOnly.status == 64 && rankOnly.stderr.contains("no world size"))
        #expect(!fm.fileExists(atPath: dir + "/b"))
        for flags in [["--limit", "0"], ["--batch-size", "0"], ["--threads", "0"], ["--shard-size-mb", "0"],
                      ["--shard-size-mb", "99999999999"]] {
            let r = try tokenize(data, model, dir + "/c", flags)
            #expect(r.status == 64 && r.stderr.contains("\(flags[0]) must be at"), "\(flags): \(r.stderr)")
        }
        #expect(!fm.fileExists(atPath: dir + "/c"))
        // Without --resolution the model's side is used; a different one is refused.
        let plain = try TestSupport.mtok(["tokenize", data, "--model", model, "--out", dir + "/d", "--views", "center", "--limit", "2"])
        #expect(plain.status == 0, "\(plain.stderr)")
        let wrong = try TestSupport.mtok(["tokenize", data, "--model", model, "--out", dir + "/e", "--resolution", "256"])
        #expect(wrong.status == 1 && wrong.stderr.contains("takes 64×64 inputs"))
    }
}
