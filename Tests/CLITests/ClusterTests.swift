import Foundation
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The cluster kit as users run it: `tools/cluster/tokenize.slurm` on a real one-node Slurm
/// cluster, the statically linked `mtok` with the Swift toolchain out of reach, and the
/// Kubernetes manifest against the API schema of the version it states.
@Suite(.serialized)
struct ClusterTests {
    static let root = TestSupport.packageRoot
    /// Where `tools/test.sh` installs the statically linked binary (`tools/install.sh --prefix`).
    static let staticBinary = root + "/.build/static-prefix/bin/mtok"

    static func onPath(_ name: String) -> Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/\(name)")
        }
    }

    static func shell(_ script: String, environment: [String: String]? = nil) throws -> TestSupport.ProcessResult {
        try TestSupport.run("/bin/sh", ["-c", script], environment: environment, currentDirectory: root)
    }

    // MARK: Slurm

    /// The whole story on a real scheduler (tools/cluster/slurm-e2e.sh): 4 array tasks, one
    /// SIGKILLed mid-run and requeued after the others ended, the dependent merge job waiting for
    /// it and merging once; the merged cache verifies deep and equals a single-machine run.
    @Test func slurmArrayWithAKilledAndRequeuedTaskMergesToTheSingleMachineCache() throws {
        // The installed (static, release) binary when tools/test.sh built it: what goes to nodes.
        let binary = FileManager.default.isExecutableFile(atPath: Self.staticBinary) ? Self.staticBinary : TestSupport.mtokBinary
        let r = try TestSupport.run("/bin/bash", [Self.root + "/tools/cluster/slurm-e2e.sh", binary])
        if r.status == 77 {
            try Test.cancel(Comment(rawValue: r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        func digest(_ label: String) -> String? {
            r.stdout.split(separator: "\n").first { $0.contains(label) && $0.contains("content digest") }
                .flatMap { $0.split(separator: " ").last.map(String.init) }
        }
        let single = digest("single machine"), merged = digest("merged: ")
        #expect(single != nil && single == merged, "\(r.stdout)")
        #expect(r.stdout.contains("waits: waiting: 3 of 4 parts finished; unfinished: rank 1"))
        #expect(r.stdout.contains("one merge: merged 4 shard(s)"))
        #expect(r.stdout.contains("requeued task 1 resumed: "))
    }

    // MARK: The statically linked binary

    /// The Debian packages a statically linked mtok needs at run time, as the cluster image's
    /// runtime stage installs them (tools/cluster/Dockerfile, `RUNTIME_PACKAGES`).
    static func runtimePackages() throws -> [String] {
        let dockerfile = try String(contentsOfFile: root + "/tools/cluster/Dockerfile", encoding: .utf8)
        guard let line = dockerfile.split(separator: "\n").first(where: { $0.hasPrefix("ARG RUNTIME_PACKAGES=") }) else { return [] }
        return line.dropFirst("ARG RUNTIME_PACKAGES=".count).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            .split(separator: " ").map(String.init)
    }

    /// Links no Swift library, needs only what the runtime packages (and their dependencies)
    /// bring, and tokenizes and verifies real photos with the toolchain's folder hidden.
    @Test func staticBinaryRunsWithoutTheToolchain() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.staticBinary) else {
            try Test.cancel("no \(Self.staticBinary): tools/test.sh builds it with tools/install.sh --prefix .build/static-prefix")
        }
        let ldd = try TestSupport.run("/usr/bin/ldd", [Self.staticBinary])
        #expect(ldd.status == 0, "\(ldd.stderr)")
        let linked = ldd.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(!linked.isEmpty)
        #expect(!linked.contains { $0.range(of: "swift|Foundation|dispatch|BlocksRuntime", options: .regularExpression) != nil },
                "links the toolchain: \(ldd.stdout)")
        #expect(!linked.contains { $0.contains("not found") }, "\(ldd.stdout)")

        // Every library it loads comes from a runtime package, one of their dependencies, or the
        // base image (libc6, libgcc-s1, libstdc++6).
        let packages = try Self.runtimePackages()
        #expect(packages.contains("liblmdb0") && packages.contains("libopenblas0"), "\(packages)")
        let closure = try TestSupport.run("/usr/bin/apt-cache", ["depends", "--recurse", "--no-recommends", "--no-suggests",
                                                                 "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + packages)
        let provided = Set(closure.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .map { $0.hasPrefix("Depends: ") || $0.hasPrefix("PreDepends: ") ? String($0.split(separator: " ")[1]) : $0 }
            .map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "<>|")) })
            .union(["libc6", "libgcc-s1", "libstdc++6"])
        for path in linked.compactMap({ line -> String? in
            guard let arrow = line.range(of: "=> ") else { return line.hasPrefix("/") ? String(line.split(separator: " ")[0]) : nil }
            return String(line[arrow.upperBound...].split(separator: " ")[0])
        }) {
            // dpkg knows a file by the path its package installed it at: the name ldd printed
            // (a package's symlink), or the resolved file, with or without /usr (merged /usr).
            let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            var package = "?"
            for candidate in [path, real, real.hasPrefix("/usr/") ? String(real.dropFirst(4)) : "/usr" + real] {
                let owner = try TestSupport.run("/usr/bin/dpkg", ["-S", candidate])
                if owner.status == 0, let name = owner.stdout.split(separator: ":").first {
                    package = String(name)
                    break
                }
            }
            #expect(provided.contains(package), "\(path) (\(real)) comes from \(package), which RUNTIME_PACKAGES does not bring")
        }

        // Hide the folder the toolchain's runtime lives in (a private mount namespace with an
        // empty tmpfs over it), then tokenize the demo photos, verify, and read one record back.
        let dynamicLdd = try TestSupport.run("/usr/bin/ldd", [TestSupport.mtokBinary]).stdout
        guard let core = dynamicLdd.split(separator: "\n").first(where: { $0.contains("libswiftCore.so") })?
            .components(separatedBy: "=> ").last?.split(separator: " ").first else {
            Issue.record("the debug build links no libswiftCore.so to hide: \(dynamicLdd)")
            return
        }
        let toolchainLib = URL(fileURLWithPath: String(core)).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path  // …/usr/lib/swift/linux/libswiftCore.so → …/usr/lib
        let dir = try TestSupport.temporaryDirectory("static")
        let script = """
            set -e
            mount -t tmpfs none '\(toolchainLib)'
            test ! -e '\(core)'
            export LD_LIBRARY_PATH= PATH=/usr/bin:/bin
            m='\(Self.staticBinary)'
            "$m" model init --preset tiny --seed 3 --out '\(dir)/tiny.safetensors'
            "$m" tokenize tools/demo/images --model '\(dir)/tiny.safetensors' --out '\(dir)/cache'
            "$m" verify '\(dir)/cache' --deep
            "$m" get '\(dir)/cache' animals/chelsea.jpg --view 1
            """
        let r = try TestSupport.run("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script],
                                    currentDirectory: Self.root)
        if r.status != 0 && r.stderr.contains("unshare failed") {
            try Test.cancel("this machine allows no mount namespace (\(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))); the ldd checks above passed")
        }
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("OK"), "\(r.stdout)")
        #expect(r.stdout.contains("animals/chelsea.jpg"), "\(r.stdout)")
    }

    // MARK: Kubernetes

    /// The rendered manifest passes the strict API schema of Kubernetes 1.29 (the version it
    /// states) and fails 1.27's (no backoffLimitPerIndex), so the check can tell versions apart;
    /// the world size given to the pods is `completions`, and the merge Job waits.
    @Test func kubernetesManifestValidatesForItsStatedVersion() throws {
        guard let python = TestSupport.python else { Issue.record("no Python (.venv)"); return }
        let validator = URL(fileURLWithPath: python).deletingLastPathComponent().path + "/kubernetes-validate"
        let dir = try TestSupport.temporaryDirectory("k8s")
        let manifest = dir + "/job.yaml"
        let render = try Self.shell("tools/cluster/k8s-job.sh --ranks 6 --image registry.example.com/mtok:1 -- --views center > '\(manifest)'")
        #expect(render.status == 0, "\(render.stderr)")
        let text = try String(contentsOfFile: manifest, encoding: .utf8)
        #expect(text.contains("Kubernetes 1.29 or later"))

        let ok = try TestSupport.run(validator, ["--kubernetes-version", "1.29.0", "--strict", manifest])
        #expect(ok.status == 0, "\(ok.stdout)\n\(ok.stderr)")
        #expect(ok.stdout.contains("job/mtok-tokenize ") && ok.stdout.contains("job/mtok-tokenize-merge "), "\(ok.stdout)")
        let old = try TestSupport.run(validator, ["--kubernetes-version", "1.27.0", "--strict", manifest])
        #expect(old.status != 0 && (old.stdout + old.stderr).contains("backoffLimitPerIndex"), "\(old.stdout)\n\(old.stderr)")

        // Read it back as YAML: one number feeds completions and MTOK_WORLD_SIZE.
        let check = """
            import sys, yaml
            tokenize, merge = yaml.safe_load_all(open(sys.argv[1]))
            spec = tokenize["spec"]
            env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
            command = spec["template"]["spec"]["containers"][0]["command"]
            print(spec["completions"], env["MTOK_WORLD_SIZE"], spec["parallelism"], " ".join(command))
            print(" ".join(merge["spec"]["template"]["spec"]["containers"][0]["command"]))
            """
        let parsed = try TestSupport.run(python, ["-c", check, manifest])
        let lines = parsed.stdout.split(separator: "\n").map(String.init)
        #expect(parsed.status == 0 && lines.count == 2, "\(parsed.stderr)")
        #expect(lines.first?.hasPrefix("6 6 6 mtok tokenize /data/train ") == true, "\(lines)")
        #expect(lines.first?.hasSuffix("--views center") == true, "\(lines)")
        #expect(lines.last?.contains("mtok merge \"$0\" --wait") == true, "\(lines)")

        for (args, message) in [("--ranks 0", "--ranks must be a positive whole number"),
                                ("--image 'x\" y'", "--image must be an image reference"),
                                ("--memory 16GB", "--memory must be a quantity"),
                                ("--cache-claim Cache", "--cache-claim must be a claim name")] {
            let bad = try Self.shell("tools/cluster/k8s-job.sh \(args)")
            #expect(bad.status == 64 && bad.stderr.contains(message), "\(args): \(bad.stderr)")
        }
    }
}
