import Glibc
import HugeAlloc
import SystemPackage

/// A throwaway file-system root for the readers that take a `KernelFiles`
/// rather than text: a folder per parser below one `mkdtemp(3)` folder, so
/// one parser's input never leaks into another's tree. Removed at exit.
///
/// libFuzzer calls the entry point from one thread only, so the cache of
/// written files needs no lock.
final class FixtureTree: @unchecked Sendable {
    /// The root given to `KernelFiles(root:)`.
    let root: String
    /// What each file holds now, so an unchanged file is not written again.
    private var written: [String: [UInt8]] = [:]

    /// The shared parent of every tree of this process.
    private static let parent: String = {
        let base = (getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp") + "/hugealloc-fuzz.XXXXXX"
        var template = Array(base.utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            fatalError("hugealloc-fuzz: mkdtemp \(base) failed (errno \(errno))")
        }
        let path = String(cString: made)
        atexit { removeTree(FixtureTree.parent) }
        return path
    }()

    /// A tree named `name` holding `files` (paths relative to the root).
    init(_ name: String, files: [String: String] = [:]) {
        root = Self.parent + "/" + name
        for (path, text) in files { write(path, Array(text.utf8)) }
    }

    var kernelFiles: KernelFiles { KernelFiles(root: root) }

    /// Writes `bytes` to `path` below the root, creating folders on the way.
    func write(_ path: String, _ bytes: some Collection<UInt8>) {
        let array = Array(bytes)
        if written[path] == array { return }
        written[path] = array
        let full = root + "/" + path
        func create() throws -> FileDescriptor {
            try FileDescriptor.open(FilePath(full), .writeOnly, options: [.create, .truncate],
                                    permissions: [.ownerReadWrite, .groupRead, .otherRead])
        }
        do {
            let fd: FileDescriptor
            do {
                fd = try create()
            } catch Errno.noSuchFileOrDirectory {
                var folder = ""
                for component in full.split(separator: "/").dropLast() {
                    folder += "/" + component
                    try Sys.makeDirectory(folder)
                }
                fd = try create()
            }
            try fd.closeAfter { _ = try fd.writeAll(array) }
        } catch {
            fatalError("hugealloc-fuzz: cannot write \(full): \(error)")
        }
    }
}

/// Removes `path` and everything below it, without following links.
private func removeTree(_ path: String) {
    guard let status = try? Sys.fileStatus(path, followLinks: false) else { return }
    if status.isDirectory {
        for name in (try? Sys.directoryEntries(atPath: path)) ?? [] { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        try? Sys.unlink(path)
    }
}
