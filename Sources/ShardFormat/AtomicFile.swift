import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Replaces a file so that readers and crash recovery see either the old or the new content.
public enum AtomicFile {
    public struct WriteError: Error, CustomStringConvertible {
        public let path: String
        public let reason: String
        public var description: String { "\(path): \(reason)" }
    }

    public static func write(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp"
        // A fresh temporary file, never an existing one: whatever sits at its name (a leftover,
        // or a link planted to make the writer write elsewhere) is removed, not written through.
        unlink(tmp)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WriteError(path: tmp, reason: String(cString: strerror(errno))) }
        var ok = data.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok else { throw WriteError(path: tmp, reason: String(cString: strerror(errno))) }
        guard rename(tmp, path) == 0 else { throw WriteError(path: path, reason: "rename: " + String(cString: strerror(errno))) }
        syncDirectory(of: path)
    }

    /// fsync of the containing directory makes a rename durable.
    public static func syncDirectory(of path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }
}
