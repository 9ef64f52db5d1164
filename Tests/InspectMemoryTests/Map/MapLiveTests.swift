import Foundation
import Testing
import HugeAlloc
import HugeAllocTestSupport

/// Whether `tool` is an executable on PATH (Debian's chromium, prometheus's
/// promtool, tmux: tools/test installs them).
func toolPath(_ tool: String) -> String? {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let path = "\(directory)/\(tool)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}

/// Runs `tool` with `arguments`, standard input from `input`; gives up
/// (killing it) after `timeout` seconds. Output goes to files, so a chatty
/// tool never blocks on a full pipe. Started with `posix_spawnp` and reaped
/// with `waitpid`: Foundation's `Process` waits for descriptors a
/// daemonizing tool (the tmux server) keeps open, and never sees it exit.
func runTool(_ tool: String, _ arguments: [String], input: String? = nil, timeout: Double = 120) throws
    -> (status: Int32, out: String, err: String) {
    let directory = NSTemporaryDirectory() + "hugealloc-tool-\(getpid())-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try (input ?? "").write(toFile: "\(directory)/in", atomically: false, encoding: .utf8)
    let path = try #require(toolPath(tool), "\(tool) not found")
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "\(directory)/in", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "\(directory)/out", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, "\(directory)/err", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // The child starts with no signal blocked (a test thread may block some).
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
    try #require(spawned == 0, "posix_spawn \(tool): \(spawned)")
    var status: Int32 = 0
    let deadline = Date().addingTimeInterval(timeout)
    while waitpid(pid, &status, WNOHANG) == 0 {
        if Date() > deadline {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
            break
        }
        usleep(20_000)
    }
    let out = (try? String(contentsOfFile: "\(directory)/out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: "\(directory)/err", encoding: .utf8)) ?? ""
    let exited = status & 0x7f == 0
    return (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), out, err)
}

/// The map, the metrics and the live view on this machine.
@Suite(.usesHugepagePool) struct MapLiveTests {
    static let canMap = isRoot && freeHugepages(.huge2M) >= 8

    /// Frames this test maps show as held by its PID, at the physical
    /// addresses its own translation gives; a frame it does not map does not.
    @Test(.enabled(if: canMap, "needs root (CAP_SYS_ADMIN for the frame tables) and 8 free 2 MiB hugepages"))
    func liveMapMarksFramesThisTestHoldsAsHeldByItsPID() throws {
        let mapping = try MemoryMapping(length: 4 << 20, options: MappingOptions(pageSize: .huge2M))
        let pid = getpid()
        let mine = Set((0..<2).compactMap { mapping.physicalAddress(ofPage: $0)?.description })
        try #require(mine.count == 2)
        let result = try run(["map", "--json", "--size", "2M"])
        #expect(result.status == 0, "\(result.err)")
        let object = try #require(try jsonObject(result.out) as? [String: Any])
        let frames = try #require(object["nodes"] as? [[String: Any]]).flatMap { ($0["frames"] as? [[String: Any]]) ?? [] }
        let held = frames.filter { ($0["holders"] as? [Int])?.contains(Int(pid)) == true }
        #expect(Set(held.compactMap { $0["physical"] as? String }) == mine)
        for frame in held {
            #expect(frame["state"] as? String == "held" && (frame["map_count"] as? Int ?? 0) >= 1)
        }
        let holders = try #require(object["holders"] as? [[String: Any]])
        #expect(holders.contains { $0["pid"] as? Int == Int(pid) })
        // Negative control: a free frame is not ours.
        let free = try #require(frames.first { $0["state"] as? String == "free" })
        #expect(!mine.contains(free["physical"] as? String ?? ""))
        try mapping.unmap()
    }

    @Test(.enabled(if: isRoot && toolPath("promtool") != nil, "needs root and promtool (Debian's prometheus package; tools/test installs it)"))
    func liveMetricsPassPromtool() throws {
        let metrics = try run(["metrics"])
        #expect(metrics.status == 0, "\(metrics.err)")
        #expect(metrics.out.contains("hugealloc_hugepages_pool_pages{node=\"0\",size=\"2M\"}"))
        #expect(metrics.out.contains("hugealloc_largest_free_run_bytes{node=\"0\",size=\"2M\"}"))
        let check = try runTool("promtool", ["check", "metrics"], input: metrics.out)
        #expect(check.status == 0 && check.out.isEmpty && check.err.isEmpty, "promtool: \(check.out) \(check.err)")
    }

    /// The live view under tmux: it draws, shows this test's hugepages when
    /// it maps them and drops them when it unmaps them, and q (then Ctrl-C
    /// in a second run) quits with the terminal as it was: main screen,
    /// cursor shown, line editing and echo back on.
    @Test(.enabled(if: canMap && toolPath("tmux") != nil, "needs root, 8 free 2 MiB hugepages and tmux (tools/test installs it)"))
    func watchUnderTmuxDrawsRefreshesAndRestoresTheTerminal() throws {
        let socket = "hugealloc-watch-\(getpid())"
        func tmux(_ arguments: String...) throws -> String {
            let result = try runTool("tmux", ["-L", socket] + arguments, timeout: 20)
            try #require(result.status == 0, "tmux \(arguments): \(result.err)")
            return result.out
        }
        defer { _ = try? runTool("tmux", ["-L", socket, "kill-server"], timeout: 10) }
        func screen() throws -> String { try tmux("capture-pane", "-p", "-t", "watch") }
        func wait(_ what: String, _ condition: (String) -> Bool) throws -> String {
            var text = ""
            for _ in 0..<200 {
                text = try screen()
                if condition(text) { return text }
                usleep(100_000)
            }
            Issue.record("timed out waiting for \(what); screen:\n\(text)")
            return text
        }
        let pid = getpid()
        let myRow = { (text: String) in text.split(separator: "\n").contains { $0.hasPrefix("\(pid) ") } }

        for quit in ["q", "C-c"] {
            let done = NSTemporaryDirectory() + "hugealloc-watch-\(pid)-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: done) }
            _ = try tmux("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40",
                         "\(inspectMemoryPath) watch --interval 0.3; stty -a > \(done); sleep 600")
            let drawn = try wait("the first screen") { $0.contains("POOL") && $0.contains("2M all") }
            #expect(drawn.contains("q or Ctrl-C quits"))
            #expect(try tmux("display", "-p", "-t", "watch", "#{alternate_on} #{cursor_flag}") == "1 0\n")
            #expect(!myRow(drawn), "this test holds no hugepages yet:\n\(drawn)")

            let mapping = try MemoryMapping(length: 4 << 20, options: MappingOptions(pageSize: .huge2M))
            let held = try wait("this test's hugepages") { myRow($0) }
            let row = try #require(held.split(separator: "\n").first { $0.hasPrefix("\(pid) ") })
            #expect(row.contains("4M"), "\(row)")
            try mapping.unmap()
            _ = try wait("this test's hugepages to go") { !myRow($0) }

            _ = try tmux("send-keys", "-t", "watch", quit)
            for _ in 0..<100 where !FileManager.default.fileExists(atPath: done) { usleep(100_000) }
            usleep(200_000)
            let modes = (try? String(contentsOfFile: done, encoding: .utf8)) ?? ""
            #expect(!modes.isEmpty, "watch did not exit on \(quit)")
            let words = Set(modes.split(whereSeparator: \.isWhitespace).map(String.init))
            for mode in ["icanon", "echo", "isig", "iexten", "icrnl", "ixon"] {
                #expect(words.contains(mode) && !words.contains("-" + mode), "\(mode) not restored after \(quit): \(modes)")
            }
            #expect(try tmux("display", "-p", "-t", "watch", "#{alternate_on} #{cursor_flag}") == "0 1\n", "after \(quit)")
            _ = try tmux("kill-session", "-t", "watch")
        }
    }
}

/// The SVG in a real browser: headless Chromium opens the fixture's map and
/// takes a screenshot of it.
@Suite struct MapBrowserTests {
    @Test(.enabled(if: toolPath("chromium") != nil, "needs chromium (Debian's chromium package; tools/test installs it)"))
    func svgOpensInHeadlessChromiumAndIsScreenshotted() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let svg = fixture.root + "/map.svg", png = fixture.root + "/map.png"
        let map = try run(["map", "--root", fixture.root, "--svg", svg])
        #expect(map.status == 0, "\(map.err)")
        let text = try String(contentsOfFile: svg, encoding: .utf8)
        let height = try #require(text.firstMatch(of: /height="([0-9.]+)"/).flatMap { Double($0.1) })
        let width = 1160, windowHeight = Int(height.rounded(.up))
        let shot = try runTool("chromium", [
            "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=\(fixture.root)/chromium",
            "--screenshot=\(png)", "--window-size=\(width),\(windowHeight)", "file://\(svg)",
        ], timeout: 120)
        #expect(shot.status == 0, "chromium: \(shot.err)")
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: png)))
        // A PNG of the window's size: the signature, then IHDR's width and height.
        try #require(bytes.count > 33)
        #expect(Array(bytes[0..<8]) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        func bigEndian(_ at: Int) -> Int { bytes[at..<at + 4].reduce(0) { $0 << 8 | Int($1) } }
        #expect(bigEndian(16) == width && bigEndian(20) == windowHeight)
        // Not a blank page: a blank white page of this width screenshots to about 3 KB.
        #expect(bytes.count > 8_000, "\(bytes.count) bytes")
    }
}
