//! A smoke run of the benchmark (`lb-bench --quick`), so the code behind
//! `cargo xtask bench` keeps working. Only the sections that need nothing
//! beyond the project itself (the end-to-end section needs HAProxy, nginx,
//! wrk and iperf3, which `cargo xtask bench` installs). The numbers of a
//! debug build on a shared machine mean nothing; what is checked is that
//! every measurement ran and the report says so.

use std::process::Command;

use lb_tests::topology::default_ebpf_object;

/// Runs `lb-bench --quick --only SECTIONS` into a temporary directory and
/// returns its report and which of `files` it wrote; panics with the
/// output if it failed.
fn quick_bench<const N: usize>(sections: &str, files: [&str; N]) -> (String, [bool; N]) {
    let object = default_ebpf_object();
    assert!(
        object.exists(),
        "the XDP object {} is missing: run `cargo xtask build` (or `cargo xtask test`)",
        object.display()
    );
    let out = std::env::temp_dir().join(format!(
        "lb-bench-smoke-{}-{}",
        sections.replace(',', "-"),
        std::process::id()
    ));
    let status = Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args(["--quick", "--only", sections, "--out"])
        .arg(&out)
        .env("LB_EBPF_OBJECT", &object)
        .output()
        .expect("running lb-bench");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    let written = files.map(|f| out.join(f).exists());
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        status.status.success(),
        "lb-bench failed: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        String::from_utf8_lossy(&status.stdout)
    );
    (report, written)
}

#[test]
fn quick_bench_writes_a_complete_report() {
    let (report, svgs) = quick_bench("packet,control", ["packet-cost.svg", "ring-build.svg"]);
    for needle in [
        "| new flow (SYN) | XDP_REDIRECT |",
        "| new flow (SYN), XDP_TX | XDP_TX |",
        "| new flow (SYN), XDP_TX, one tuple repeated | XDP_TX |",
        "| established | XDP_REDIRECT |",
        "| reply from backend | XDP_REDIRECT |",
        "| other address (pass) | XDP_PASS |",
        "| floor (parse, swap MACs, XDP_TX) | XDP_TX |",
        "| 1000 | 65537 |",
        "Health change to kernel",
        "Against the reference",
        "Target: 1,000 backends",
        "1,048,576 flows",
    ] {
        assert!(
            report.contains(needle),
            "the report lacks {needle:?}:\n{report}"
        );
    }
    assert_eq!(svgs, [true, true], "plots written");
}

/// The failover section against a real keepalived pair (`cargo xtask test`
/// installs keepalived) and an lbd pair: one round each at a 100 ms advert
/// interval.
#[test]
fn quick_failover_bench_measures_keepalived_and_lbd() {
    let (report, [plot]) = quick_bench("failover", ["failover-gap.svg"]);
    assert!(plot, "failover-gap.svg written");
    for peer in ["keepalived", "lbd"] {
        assert!(
            report.contains(&format!("| {peer} | 100 ms |")),
            "the report lacks {peer}'s gap:\n{report}"
        );
    }
    assert!(report.contains("/30 |"), "survival counted:\n{report}");
    for peer in ["keepalived", "lbd"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("| {peer} | "))
                    && l.ends_with(" ms |")
                    && !l.contains("advert")),
            "the report lacks {peer}'s EC2 takeover:\n{report}"
        );
    }
    assert!(report.contains("### EC2 takeover"), "{report}");
    assert!(
        report.lines().any(
            |l| l.starts_with("| lbd | reconcile after a partition | ") && l.ends_with(" ms |")
        ),
        "the report lacks the reconcile after a partition:\n{report}"
    );
}

#[test]
fn an_unknown_section_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args([
            "--only",
            "packet,failovr",
            "--out",
            "/nonexistent/never-written",
        ])
        .output()
        .expect("running lb-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown section \"failovr\""), "{stderr}");
}
