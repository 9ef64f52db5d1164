import ArgumentParser
import Foundation
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory watch`: a live view of the pools and their holders, like `top`.
struct WatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "A live full-screen view of the hugepage pools per size and node and the processes holding hugepages.",
        discussion: """
            Refreshes every --interval seconds; what changed since the last refresh is highlighted. \
            q or Ctrl-C quits and restores the terminal. When standard input or output is not a \
            terminal, prints one line per interval instead.
            """
    )

    @Option(help: ArgumentHelp("Seconds between refreshes (at least 0.1).", valueName: "S"))
    var interval: Double = 2

    /// A directory standing in for "/" (fixture trees in tests).
    @Option(help: .hidden)
    var root: String = "/"

    func validate() throws {
        guard interval >= 0.1, interval <= 86_400 else {
            throw ValidationError("--interval must be between 0.1 and 86400 seconds, not \(interval)")
        }
    }

    func run() throws {
        let fs = KernelFiles(root: root)
        Sys.catchTerminationSignals()
        if Sys.isTerminal(0) && Sys.isTerminal(1) {
            try fullScreen(fs)
        } else {
            try lines(fs)
        }
    }

    func read(_ fs: KernelFiles) throws -> WatchState {
        do {
            return WatchState(try HugepageSnapshot.read(in: fs))
        } catch {
            throw CommandFailure("watch: \(error.description)")
        }
    }

    /// One line per interval until a termination signal.
    func lines(_ fs: KernelFiles) throws {
        var previous: WatchState?
        while caughtTerminationSignal.load(ordering: .relaxed) == 0 {
            let state = try read(fs)
            write(WatchScreen.line(state, previous: previous, time: Date()) + "\n")
            previous = state
            Thread.sleep(forTimeInterval: interval)
        }
    }

    /// The full-screen view: redraws every interval or on resize; q or Ctrl-C quits.
    func fullScreen(_ fs: KernelFiles) throws {
        let screen = try FullScreen()
        var previous: WatchState?
        var state = try read(fs)
        var next = Date().addingTimeInterval(interval)
        while true {
            let size = Sys.terminalSize(1) ?? (rows: 24, columns: 80)
            let lines = WatchScreen.render(state, previous: previous, interval: interval, time: Date(),
                                           rows: size.rows, columns: size.columns)
            write("\u{1B}[H" + lines.map { $0 + "\u{1B}[K" }.joined(separator: "\r\n") + "\u{1B}[J")
            let wait = max(0, next.timeIntervalSinceNow)
            let hasInput: Bool
            do {
                hasInput = try Sys.waitForInput(0, milliseconds: Int(wait * 1000))
            } catch {
                screen.leave()
                throw CommandFailure("watch: \(error.description)")
            }
            if caughtTerminationSignal.load(ordering: .relaxed) != 0 { break }
            if hasInput {
                let keys = (try? Sys.readInput(0, count: 64)) ?? []
                if keys.isEmpty || keys.contains(where: { $0 == UInt8(ascii: "q") || $0 == UInt8(ascii: "Q") || $0 == 3 || $0 == 4 }) {
                    break
                }
            }
            if Date() >= next {
                previous = state
                state = try read(fs)
                next = Date().addingTimeInterval(interval)
            }
        }
        screen.leave()
    }

    func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}

/// The terminal in full-screen mode: the alternate screen, no cursor, keys
/// read one at a time without echo. Leaving (or dropping the value, on
/// any path out) restores the settings found and the main screen, once.
struct FullScreen: ~Copyable {
    let saved: Sys.TerminalMode

    init() throws {
        let found: Sys.TerminalMode
        do {
            found = try Sys.terminalMode(0)
            try Sys.setTerminalMode(0, Sys.keyAtATime(found))
        } catch {
            throw CommandFailure("watch: cannot set up the terminal: \(error.description)")
        }
        saved = found
        FileHandle.standardOutput.write(Data("\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J".utf8))
    }

    consuming func leave() {}

    deinit {
        FileHandle.standardOutput.write(Data("\u{1B}[?25h\u{1B}[?1049l".utf8))
        try? Sys.setTerminalMode(0, saved)
    }
}

/// What the watch view shows of a snapshot, in a form that compares:
/// counters per pool row and bytes per holder.
struct WatchState: Equatable {
    struct Pool: Equatable, Hashable {
        var size: PageSize
        /// nil: system-wide.
        var node: Int?
        var total: Int
        var free: Int
        var reserved: Int?
        var surplus: Int
        var key: String { "\(size) \(node.map(String.init) ?? "all")" }
    }
    struct Holder: Equatable {
        var pid: Int32
        var command: String
        /// Bytes per page size.
        var bytes: [PageSize: Int]
    }
    var pools: [Pool]
    var holders: [Holder]

    init(_ s: HugepageSnapshot) {
        pools = s.pools.flatMap { pool in
            [Pool(size: pool.pageSize, node: nil, total: pool.total, free: pool.free, reserved: pool.reserved, surplus: pool.surplus)]
                + s.nodePools.filter { $0.counts.pageSize == pool.pageSize }.map {
                    Pool(size: pool.pageSize, node: $0.node, total: $0.counts.total, free: $0.counts.free, reserved: nil, surplus: $0.counts.surplus)
                }
        }
        var byPID: [Int32: Holder] = [:]
        for h in s.holders {
            guard let size = PageSize(rawValue: h.pageSize) else { continue }
            byPID[h.pid, default: Holder(pid: h.pid, command: h.command, bytes: [:])].bytes[size] = h.bytes
        }
        holders = byPID.values.sorted { $0.pid < $1.pid }
    }

    var sizes: [PageSize] { Array(Set(pools.map(\.size))).sorted() }
}

/// The text of the watch view.
enum WatchScreen {
    static let changed = "\u{1B}[7m", new = "\u{1B}[1;32m", gone = "\u{1B}[2m", reset = "\u{1B}[0m"

    /// The full screen: a title, the pools and the holders, cut to the terminal's size.
    /// Values that changed since `previous` are in reverse video with the difference.
    static func render(_ state: WatchState, previous: WatchState?, interval: Double, time: Date,
                       rows: Int, columns: Int) -> [String] {
        var lines = ["inspect-memory watch · every \(format(interval))s · \(clock(time)) · q or Ctrl-C quits"
            + (previous == nil ? "" : " · changes since the last refresh highlighted"), ""]
        lines.append(pad(["POOL", "TOTAL", "FREE", "RESERVED", "SURPLUS"], [12, 14, 14, 14, 12]))
        let before = Dictionary(uniqueKeysWithValues: (previous?.pools ?? []).map { ($0.key, $0) })
        for pool in state.pools {
            let old = before[pool.key]
            func cell(_ value: Int?, _ oldValue: Int?) -> (String, Bool) {
                guard let value else { return ("-", false) }
                guard let oldValue, oldValue != value, previous != nil else { return ("\(value)", false) }
                let delta = value - oldValue
                return ("\(value) (\(delta > 0 ? "+" : "")\(delta))", true)
            }
            let cells = [("\(pool.size) " + (pool.node.map { "node \($0)" } ?? "all"), false),
                         cell(pool.total, old?.total), cell(pool.free, old?.free),
                         cell(pool.reserved, old?.reserved), cell(pool.surplus, old?.surplus)]
            lines.append(highlightedRow(cells, [12, 14, 14, 14, 12]))
        }
        lines.append("")
        let sizes = state.sizes
        lines.append(pad(["PID", "COMMAND"] + sizes.map { "\($0) BYTES" }, [8, 18] + sizes.map { _ in 14 }))
        let oldHolders = Dictionary(uniqueKeysWithValues: (previous?.holders ?? []).map { ($0.pid, $0) })
        if state.holders.isEmpty { lines.append("(no process maps hugepages)") }
        for holder in state.holders {
            let old = oldHolders[holder.pid]
            let isNew = previous != nil && old == nil
            var cells: [(String, Bool)] = [("\(holder.pid)", false), (String(TextTable.escaped(holder.command).prefix(17)), false)]
            for size in sizes {
                let bytes = holder.bytes[size] ?? 0
                cells.append((bytes == 0 ? "-" : ByteCount.format(bytes), previous != nil && !isNew && (old?.bytes[size] ?? 0) != bytes))
            }
            let row = highlightedRow(cells, [8, 18] + sizes.map { _ in 14 })
            lines.append(isNew ? new + row + reset + "  (new)" : row)
        }
        let current = Set(state.holders.map(\.pid))
        for old in previous?.holders ?? [] where !current.contains(old.pid) {
            lines.append(gone + pad(["\(old.pid)", String(old.command.prefix(17)), "(exited or unmapped)"], [8, 18, 20]) + reset)
        }
        if lines.count > rows {
            lines = Array(lines.prefix(max(1, rows - 1))) + ["… \(lines.count - rows + 1) more lines (enlarge the terminal)"]
        }
        return lines.map { clip($0, columns) }
    }

    /// One line for a non-terminal: the time, each pool and each holder;
    /// what changed since `previous` follows "changed:".
    static func line(_ state: WatchState, previous: WatchState?, time: Date) -> String {
        var parts = [iso(time)]
        for pool in state.pools {
            let name = "\(pool.size) " + (pool.node.map { "node\($0)" } ?? "all")
            parts.append("\(name) total=\(pool.total) free=\(pool.free)" + (pool.reserved.map { " reserved=\($0)" } ?? "") + " surplus=\(pool.surplus)")
        }
        let holders = state.holders.map { h in
            "\(h.pid)/\(TextTable.escaped(h.command))=" + h.bytes.keys.sorted().map { "\($0):\(h.bytes[$0]!)" }.joined(separator: ",")
        }
        parts.append("holders: " + (holders.isEmpty ? "none" : holders.joined(separator: " ")))
        if let previous, previous != state {
            var changes: [String] = []
            let before = Dictionary(uniqueKeysWithValues: previous.pools.map { ($0.key, $0) })
            for pool in state.pools where before[pool.key] != pool { changes.append("pool \(pool.key)") }
            let old = Set(previous.holders.map(\.pid)), now = Set(state.holders.map(\.pid))
            for pid in now.subtracting(old).sorted() { changes.append("new holder \(pid)") }
            for pid in old.subtracting(now).sorted() { changes.append("holder \(pid) gone") }
            for h in state.holders where old.contains(h.pid) && previous.holders.first(where: { $0.pid == h.pid }) != h {
                changes.append("holder \(h.pid)")
            }
            parts.append("changed: " + changes.joined(separator: ", "))
        }
        return parts.joined(separator: " | ")
    }

    static func highlightedRow(_ cells: [(String, Bool)], _ widths: [Int]) -> String {
        zip(cells, widths).map { cell, width in
            let text = cell.0.padding(toLength: max(width, cell.0.count + 1), withPad: " ", startingAt: 0)
            return cell.1 ? changed + cell.0 + reset + String(text.dropFirst(cell.0.count)) : text
        }.joined()
    }

    static func pad(_ cells: [String], _ widths: [Int]) -> String {
        highlightedRow(cells.map { ($0, false) }, widths)
    }

    /// Cuts a line to `columns` visible characters, keeping escape sequences whole.
    static func clip(_ line: String, _ columns: Int) -> String {
        var out = "", visible = 0, inEscape = false
        for ch in line {
            if ch == "\u{1B}" { inEscape = true }
            if inEscape {
                out.append(ch)
                if ch.isLetter { inEscape = false }
                continue
            }
            if visible >= columns { continue }
            out.append(ch)
            visible += 1
        }
        return out.contains("\u{1B}") ? out + reset : out
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }

    static func clock(_ time: Date) -> String {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss"
        return f.string(from: time)
    }

    static func iso(_ time: Date) -> String {
        ISO8601DateFormatter().string(from: time)
    }
}
