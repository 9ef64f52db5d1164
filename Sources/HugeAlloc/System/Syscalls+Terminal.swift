import CHugeAllocShims
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Terminal calls for `inspect-memory watch`: whether a descriptor is a
/// terminal, its size, its line discipline, and waiting for input.
extension Sys {
    /// Whether `fd` is a terminal. The corresponding C function is `isatty(3)`.
    package static func isTerminal(_ fd: Int32) -> Bool { Glibc.isatty(fd) == 1 }

    /// The terminal's size in character cells, or nil when `fd` is not a
    /// terminal or reports 0. The corresponding call is `ioctl(2)` with `TIOCGWINSZ`.
    package static func terminalSize(_ fd: Int32) -> (rows: Int, columns: Int)? {
        var size = winsize()
        guard unsafe ha_ioctl_pointer(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_row > 0, size.ws_col > 0 else { return nil }
        return (Int(size.ws_row), Int(size.ws_col))
    }

    /// A terminal's line-discipline settings, kept to be restored.
    package struct TerminalMode: Sendable {
        var attributes: termios
    }

    /// The current settings of terminal `fd`. The corresponding C function is `tcgetattr(3)`.
    package static func terminalMode(_ fd: Int32) throws(SystemCallError) -> TerminalMode {
        var attributes = termios()
        _ = try retryingInterrupts("tcgetattr") { unsafe tcgetattr(fd, &attributes) }
        return TerminalMode(attributes: attributes)
    }

    /// Sets terminal `fd` to `mode` after the output written so far has been sent.
    /// The corresponding C function is `tcsetattr(3)` with `TCSADRAIN`.
    package static func setTerminalMode(_ fd: Int32, _ mode: TerminalMode) throws(SystemCallError) {
        var attributes = mode.attributes
        _ = try retryingInterrupts("tcsetattr") { unsafe tcsetattr(fd, TCSADRAIN, &attributes) }
    }

    /// `mode` with input delivered a byte at a time, not echoed, and Ctrl-C
    /// read as a byte (0x03) instead of raising SIGINT: a full-screen view
    /// reads keys itself. Output processing is kept.
    package static func keyAtATime(_ mode: TerminalMode) -> TerminalMode {
        var attributes = mode.attributes
        attributes.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
        attributes.c_iflag &= ~tcflag_t(IXON | ICRNL)
        unsafe withUnsafeMutableBytes(of: &attributes.c_cc) { cc in
            unsafe cc[Int(VMIN)] = 1
            unsafe cc[Int(VTIME)] = 0
        }
        return TerminalMode(attributes: attributes)
    }

    /// Waits up to `milliseconds` for `fd` to have input. Returns false on
    /// timeout or when a signal interrupts the wait (the caller checks why).
    /// The corresponding C function is `poll(2)`.
    package static func waitForInput(_ fd: Int32, milliseconds: Int) throws(SystemCallError) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let result = unsafe poll(&entry, 1, Int32(clamping: milliseconds))
        if result == -1 {
            if lastErrno == .interrupted { return false }
            throw SystemCallError(call: "poll", errno: lastErrno, detail: "fd \(fd)")
        }
        return result > 0
    }

    /// Reads up to `count` bytes of input from `fd` (0 at end of file).
    /// The corresponding C function is `read(2)`.
    package static func readInput(_ fd: Int32, count: Int) throws(SystemCallError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try retryingInterrupts("read") {
            unsafe bytes.withUnsafeMutableBytes { unsafe Glibc.read(fd, $0.baseAddress, $0.count) }
        }
        return Array(bytes[..<n])
    }
}

/// The last termination signal (SIGTERM, SIGHUP, SIGINT) caught since
/// ``Sys/catchTerminationSignals()``, or 0: set from the signal handler,
/// so an atomic.
package let caughtTerminationSignal = Atomic<Int32>(0)

extension Sys {
    /// Catches SIGTERM, SIGHUP and SIGINT into ``caughtTerminationSignal``
    /// instead of dying, and SIGWINCH (a terminal resize) without action: a
    /// full-screen view must restore the terminal before it exits, and a
    /// `poll(2)` in progress returns early (EINTR) when one arrives, so the
    /// view redraws or leaves at once. The four signals are unblocked too: a
    /// process inherits its parent's signal mask, and a parent that blocks
    /// SIGTERM would otherwise leave the view unstoppable. The corresponding
    /// C functions are `signal(2)` and `pthread_sigmask(3)`.
    package static func catchTerminationSignals() {
        let record: @convention(c) (Int32) -> Void = { caughtTerminationSignal.store($0, ordering: .relaxed) }
        let ignore: @convention(c) (Int32) -> Void = { _ in }
        var set = sigset_t()
        unsafe sigemptyset(&set)
        for number in [SIGTERM, SIGHUP, SIGINT] {
            _ = signal(number, record)
            unsafe sigaddset(&set, number)
        }
        _ = signal(SIGWINCH, ignore)
        unsafe sigaddset(&set, SIGWINCH)
        _ = unsafe pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
