import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory doctor`: can this machine serve DMA memory?
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check that this machine can serve DMA memory; one line per check with OK, WARN or FAIL and the command that fixes it.",
        discussion: "Exits 1 when any check FAILs."
    )

    @OptionGroup var options: CommonOptions

    struct Check: Encodable {
        var name: String
        var status: String
        var detail: String
        var fix: String?
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(status, forKey: .status)
            try c.encode(detail, forKey: .detail)
            try c.encode(fix, forKey: .fix)
        }
        enum CodingKeys: String, CodingKey { case name, status, detail, fix }
    }
    struct Report: Encodable {
        var ok: Bool
        var checks: [Check]
    }

    func run() throws {
        let checks = Doctor.run(in: options.fs)
        let failed = checks.contains { $0.status == .fail }
        if options.json {
            try printJSON(Report(ok: !failed, checks: checks.map {
                Check(name: $0.name, status: $0.status.rawValue, detail: $0.detail, fix: $0.fix)
            }))
        } else {
            let width = checks.map(\.name.count).max() ?? 0
            for c in checks {
                let status = c.status.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0)
                let name = c.name.padding(toLength: width, withPad: " ", startingAt: 0)
                print("\(status)  \(name)  \(c.detail)" + (c.fix.map { " -- fix: \($0)" } ?? ""))
            }
        }
        if failed {
            let names = checks.filter { $0.status == .fail }.map(\.name).joined(separator: ", ")
            throw CommandFailure("doctor: \(names) failed")
        }
    }
}
