import Foundation
import ShardReader
import TensorFiles
#if canImport(Glibc)
import Glibc
#endif

/// The files and folders a writer creates or changes inside a cache, and the rule for them: it
/// writes only through what it made itself. A symbolic link (or a FIFO, a device, a socket)
/// planted where a cache file goes would have the writer create, grow or truncate a file outside
/// the cache, or read without end; so each is refused, naming the path, before anything is
/// written. (The cache folder itself is the user's choice and may be a link; readers may follow
/// a shard link to shared storage, see `mtok verify`.)
public enum OwnFiles {
    /// Throws unless `path` is absent or a regular file that is not a symbolic link.
    public static func checkFile(_ path: String) throws {
        try check(path, kind: S_IFREG, what: "a regular file")
    }

    /// Throws unless `path` is absent or a directory that is not a symbolic link.
    public static func checkDirectory(_ path: String) throws {
        try check(path, kind: S_IFDIR, what: "a directory")
    }

    /// Opens `path` (creating it with `O_CREAT` in `flags`) without following a link at its last
    /// component, after `checkFile`. The caller owns the descriptor.
    public static func open(_ path: String, _ flags: Int32) throws -> Int32 {
        try checkFile(path)
        let fd = Glibc.open(path, flags | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            let reason = errno == ELOOP ? "is a symbolic link (made just now?): refused" : String(cString: strerror(errno))
            throw CacheError(.io, "\(path): \(reason)")
        }
        return fd
    }

    /// The bytes of a file of the writer's own (`checkFile`), or nil when it does not exist.
    public static func contents(_ path: String) throws -> Data? {
        try checkFile(path)
        return FileManager.default.contents(atPath: path)
    }

    /// Creates `path` (and missing parents) as a directory, after refusing a link or other file there.
    public static func makeDirectory(_ path: String) throws {
        try checkDirectory(path)
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw CacheError(.io, "cannot create \(path): \(describeFileError(error))")
        }
    }

    private static func check(_ path: String, kind: mode_t, what: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }  // absent: the writer makes it itself
        let type = st.st_mode & S_IFMT
        if type == kind { return }
        if type == S_IFLNK {
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
            throw CacheError(.notACache, "\(path) is a symbolic link (to \(target)): a writer never writes through a link it did not make; remove the link, or write to a new cache")
        }
        throw CacheError(.notACache, "\(path) is not \(what): a writer writes only through files and folders it made; remove it, or write to a new cache")
    }
}
