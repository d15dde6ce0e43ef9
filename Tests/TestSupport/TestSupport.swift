import Foundation

/// Helpers shared by the test targets: temporary directories, the built `mtok` binary, and
/// child processes.
public enum TestSupport {
    /// A fresh empty directory, unique per call.
    public static func temporaryDirectory(_ label: String = "mtok") throws -> String {
        let path = NSTemporaryDirectory() + "/\(label)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The package root (where Package.swift is).
    public static var packageRoot: String {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.path + "/Package.swift") { return url.path }
        }
        return FileManager.default.currentDirectoryPath
    }

    /// The `mtok` executable built next to the test bundle (or `MTOK_BIN`).
    public static var mtokBinary: String {
        if let env = ProcessInfo.processInfo.environment["MTOK_BIN"] { return env }
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = testBinary.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("mtok").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir.deleteLastPathComponent()
        }
        return packageRoot + "/.build/debug/mtok"
    }

    /// A Python with numpy, lmdb and zstandard: `MTOK_PYTHON`, else the project's `.venv`.
    public static var python: String? {
        if let env = ProcessInfo.processInfo.environment["MTOK_PYTHON"], FileManager.default.isExecutableFile(atPath: env) {
            return env
        }
        let venv = packageRoot + "/.venv/bin/python"
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : nil
    }

    public struct ProcessResult: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs a program to completion and captures its output.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                           currentDirectory: String? = nil) throws -> ProcessResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        if let environment {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if let currentDirectory { p.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Read both pipes concurrently with the process so a full pipe cannot block it.
        let outData = LockedData()
        let errData = LockedData()
        let group = DispatchGroup()
        for (pipe, sink) in [(out, outData), (err, errData)] {
            group.enter()
            DispatchQueue.global().async {
                sink.set(pipe.fileHandleForReading.readDataToEndOfFile())
                group.leave()
            }
        }
        p.waitUntilExit()
        group.wait()
        return ProcessResult(status: p.terminationStatus, stdout: String(decoding: outData.get(), as: UTF8.self),
                             stderr: String(decoding: errData.get(), as: UTF8.self))
    }

    /// Starts `mtok` with arguments and, if it is still running after `delay` seconds, kills it
    /// with `signal` (a real SIGKILL or SIGTERM, as a crash or a scheduler would). Returns whether
    /// the signal was sent, and the exit status.
    public static func mtok(_ arguments: [String], signal: Int32, after delay: Double) throws -> (signalled: Bool, status: Int32) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: mtokBinary)
        p.arguments = arguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        usleep(UInt32(delay * 1e6))
        var sent = false
        if p.isRunning {
            kill(p.processIdentifier, signal)
            sent = true
        }
        p.waitUntilExit()
        return (sent, p.terminationStatus)
    }

    /// Runs `mtok` with arguments.
    @discardableResult
    public static func mtok(_ arguments: [String]) throws -> ProcessResult {
        try run(mtokBinary, arguments)
    }
}

final class LockedData: @unchecked Sendable {  // guarded by `lock`
    private let lock = NSLock()
    private var data = Data()
    func set(_ d: Data) { lock.lock(); data = d; lock.unlock() }
    func get() -> Data { lock.lock(); defer { lock.unlock() }; return data }
}

/// The OpenBLAS kernel sets (`OPENBLAS_CORETYPE` values) this CPU can execute, one per family of
/// GEMM kernels, read from the CPU's flags: what the determinism checks run under, so that a
/// machine of one kind also tests the kernels that machines of other kinds pick.
public enum KernelFamilies {
    /// Widest first: SkylakeX (AVX-512), Haswell (AVX2 + FMA), Sandybridge (AVX), Nehalem (SSE).
    public static var available: [String] {
        let flags = cpuFlags
        var out: [String] = []
        if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]) { out.append("SkylakeX") }
        if flags.isSuperset(of: ["avx2", "fma"]) { out.append("Haswell") }
        if flags.contains("avx") { out.append("Sandybridge") }
        if flags.isSuperset(of: ["ssse3", "sse4_1", "sse4_2"]) { out.append("Nehalem") }
        return out
    }

    /// The `flags` line of /proc/cpuinfo (empty where there is none, e.g. not Linux x86).
    static var cpuFlags: Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }

    /// Whether this is an x86-64 machine, where OpenBLAS has several kernel families to choose from.
    public static var isX86: Bool {
        #if arch(x86_64)
        return true
        #else
        return false
        #endif
    }
}
