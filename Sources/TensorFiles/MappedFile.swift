import Foundation  // NSError, for describeFileError
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct MappedFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// A whole file mapped read-only into memory; unmapped when the object goes away.
///
/// Thread-safe for reading: the mapping never changes after `init`.
public final class MappedFile: @unchecked Sendable {  // immutable after init; the mapping is read-only
    public let path: String
    private let base: UnsafeMutableRawPointer?
    private let length: Int

    public init(path: String) throws(MappedFileError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MappedFileError(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw MappedFileError(path: path, reason: String(cString: strerror(errno))) }
        length = Int(st.st_size)
        if length == 0 {
            base = nil
            return
        }
        let p = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw MappedFileError(path: path, reason: "mmap: " + String(cString: strerror(errno))) }
        base = p
    }

    deinit {
        if let base { munmap(base, length) }
    }

    /// The file's bytes; valid while this object lives.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: length) }
}

/// The operating system's reason for a Foundation file error ("Permission denied"), instead of
/// the NSError dump its description gives; for one-line messages.
public func describeFileError(_ error: any Error) -> String {
    let ns = error as NSError
    if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return String(cString: strerror(Int32(underlying.code)))
    }
    if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
    // Foundation's own codes for the common cases, which it reports without a POSIX error.
    let cocoa: [Int: Int32] = [NSFileNoSuchFileError: ENOENT, NSFileReadNoSuchFileError: ENOENT,
                               NSFileWriteNoPermissionError: EACCES, NSFileReadNoPermissionError: EACCES,
                               NSFileWriteOutOfSpaceError: ENOSPC, NSFileWriteFileExistsError: EEXIST,
                               NSFileWriteVolumeReadOnlyError: EROFS]
    if ns.domain == NSCocoaErrorDomain, let code = cocoa[ns.code] { return String(cString: strerror(code)) }
    return ns.localizedDescription
}
