import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAllocDiagnostics
@testable import InspectMemoryKit

/// Names with newlines and trailing spaces (hostile-inputs, minor).
@Suite(.usesHugepagePool) struct EscapingTests {
    @Test func controlCharactersAreEscapedInTextTables() {
        #expect(TextTable.escaped("plain name") == "plain name")
        #expect(TextTable.escaped("evil\nname\t\u{1b}[31m") == "evil\\nname\\t\\x1b[31m")
        var table = TextTable(["PID", "COMMAND"])
        table.append(["42", "two\nlines"])
        #expect(table.render().split(separator: "\n").count == 2, "one line per row")
    }

    @Test func mappedPathsKeepTheirTrailingSpaces() throws {
        let line = "7f0000000000-7f0000200000 rw-s 00000000 00:2e 1234                       /dev/hugepages/file  "
        let mapping = try #require(ProcessMemoryMap.parseHeader(line[...]))
        #expect(mapping.path == "/dev/hugepages/file  ")
        let anonymous = try #require(ProcessMemoryMap.parseHeader("7f0000000000-7f0000200000 rw-p 00000000 00:00 0 "[...]))
        #expect(anonymous.path == nil)
    }

    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 1, "needs root and a free 2 MiB hugepage"))
    func aHolderNamedWithANewlineStaysOnOneLine() throws {
        // A process that renames itself "evil<newline>name" and holds a hugepage.
        let script = """
        import mmap, sys, time
        open('/proc/self/comm', 'w').write('evil\\nname')
        m = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)
        m[0] = 1
        print('ready', flush=True)
        sys.stdin.read()
        """
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = ["python3", "-c", script]
        let input = Pipe(), output = Pipe()
        holder.standardInput = input
        holder.standardOutput = output
        try holder.run()
        defer { try? input.fileHandleForWriting.close(); holder.waitUntilExit() }
        let ready = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        try #require(ready.hasPrefix("ready"), "the holder did not start: \(ready)")
        let (status, out, _) = try run(["hugepages"])
        #expect(status == 0)
        let lines = out.split(separator: "\n").filter { $0.contains("\(holder.processIdentifier)") }
        #expect(lines.count == 1 && lines.first?.contains("evil\\nname") == true, "holder line: \(lines)")
        #expect(!out.split(separator: "\n").contains { $0.hasPrefix("name") }, "no line starts with the name's second half")
    }
}
