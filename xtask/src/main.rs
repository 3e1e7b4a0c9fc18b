//! lb's developer tasks: `cargo xtask <task>`.
//!
//! Everything a fresh Debian 12 machine needs is installed from here (`setup`),
//! so the README's two commands (`cargo xtask run`, `cargo xtask test`) work on
//! a new box and in CI.

mod deps;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "lb's build, run, test and lint tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (Debian packages, bpf-linker).
    Setup,
    /// Build the XDP object (target/bpf/bpfel-unknown-none/release/lb-ebpf).
    BuildEbpf,
    /// Build the XDP object and the userspace binaries.
    Build {
        /// Build userspace in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Run lbd. Without `--config`, runs a self-contained sandbox: namespaces
    /// with a client and three backends, the real daemon, live counters.
    Run {
        /// Build userspace in release mode.
        #[arg(long)]
        release: bool,
        /// Run the sandbox with an HA pair of lbds (VRRP) that fails over
        /// every few seconds, instead of a single lbd.
        #[arg(long)]
        pair: bool,
        /// Arguments for lbd (e.g. `-- --config /etc/lb/lb.toml`); none runs the sandbox.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test, privileged ones included.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The dependency policy (sources and licences, see xtask/src/deps.rs),
    /// then rustfmt and clippy -D warnings on the host crates and the eBPF
    /// crate.
    Lint,
    /// The fuzz-style tests (`fuzz_*`: the VRRP decoder, the control
    /// protocol, the configuration loader, the XDP program) with many more
    /// cases than `cargo xtask test` runs.
    Fuzz {
        /// Cases per test (proptest's PROPTEST_CASES).
        #[arg(long, default_value_t = 20_000)]
        cases: u32,
    },
    /// Benchmarks with a Markdown report and plots in results/<time>/ (see
    /// docs/performance.md). Installs the peers it compares with.
    Bench {
        /// Tiny sample counts and durations: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Sections to run, comma-separated: packet, control, e2e, failover.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::ensure(),
        Task::BuildEbpf => build_ebpf().map(|_| ()),
        Task::Build { release } => build(release).map(|_| ()),
        Task::Run {
            release,
            pair,
            args,
        } => run(release, pair, args),
        Task::Test { args } => test(args),
        Task::Lint => lint(),
        Task::Fuzz { cases } => fuzz(cases),
        Task::Bench { quick, only } => bench(quick, only),
    }
}

/// The workspace root (the parent of this crate).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start {cmd:?}"))
}

fn check(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Path of the built XDP object.
fn ebpf_object() -> PathBuf {
    root().join("target/bpf/bpfel-unknown-none/release/lb-ebpf")
}

/// Builds the XDP object with whichever eBPF toolchain this machine has.
fn build_ebpf() -> Result<PathBuf> {
    let toolchain = setup::ebpf_toolchain()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("lb-ebpf"))
        .args(["build", "--release", "--bin", "lb-ebpf"])
        .args(["--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(root().join("target/bpf"));
    toolchain.configure(&mut cmd);
    check(&mut cmd).context("building the XDP object")?;
    Ok(ebpf_object())
}

/// Builds everything; returns the directory holding lbd, lbctl and lb-testkit.
fn build(release: bool) -> Result<PathBuf> {
    let obj = build_ebpf()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--bins", "-p", "lb-user", "-p", "lb-tests"])
        .env("LB_EBPF_OBJECT", &obj);
    if release {
        cmd.arg("--release");
    }
    check(&mut cmd).context("building userspace")?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}

fn run(release: bool, pair: bool, args: Vec<String>) -> Result<()> {
    if pair && !args.is_empty() {
        bail!("--pair runs the sandbox; it does not take lbd arguments");
    }
    setup::ensure()?;
    let bin = build(release)?;
    let mut cmd = if args.is_empty() {
        let mut c = Command::new(bin.join("lb-sandbox"));
        c.arg("--bin-dir").arg(&bin);
        if pair {
            c.arg("--pair");
        }
        c
    } else {
        let mut c = Command::new(bin.join("lbd"));
        c.args(&args);
        c
    };
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    forward_signals_to(child.id());
    let st = child.wait()?;
    if !st.success() {
        bail!("{st}");
    }
    Ok(())
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Passes SIGINT/SIGTERM on to `pid` instead of dying, so that the daemon or
/// sandbox shuts down cleanly and `cargo xtask run` returns only after it has.
fn forward_signals_to(pid: u32) {
    CHILD.store(pid as i32, std::sync::atomic::Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `forward` only does async-signal-safe work.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
}

fn test(args: Vec<String>) -> Result<()> {
    setup::ensure()?;
    let moto = setup::ensure_test_peers()?;
    let bin = build(false)?;
    check(&mut test_command(&bin, &moto, &args))
}

/// `cargo test` of the workspace with what the privileged tests need.
fn test_command(bin: &Path, moto: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(["test", "--no-fail-fast"]);
    // `--workspace` would override a `-p` the caller passed to narrow the run.
    let narrowed = args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || a.starts_with("-p"));
    if !narrowed {
        cmd.arg("--workspace");
    }
    cmd.env("LB_EBPF_OBJECT", ebpf_object())
        .env("LB_BIN_DIR", bin)
        .env("LB_MOTO_VENV", moto)
        .args(args);
    cmd
}

fn fuzz(cases: u32) -> Result<()> {
    setup::ensure()?;
    let moto = setup::ensure_test_peers()?;
    let bin = build(false)?;
    let args = vec!["fuzz_".to_string()];
    let mut cmd = test_command(&bin, &moto, &args);
    cmd.env("PROPTEST_CASES", cases.to_string());
    check(&mut cmd)
}

fn bench(quick: bool, only: Vec<String>) -> Result<()> {
    setup::ensure()?;
    let moto = setup::ensure_bench_peers()?;
    let bin = build(true)?;
    let stamp = Command::new("date")
        .arg("+%Y%m%d-%H%M%S")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "run".into());
    let out = root().join("results").join(stamp);
    let mut cmd = Command::new(bin.join("lb-bench"));
    cmd.arg("--out")
        .arg(&out)
        .env("LB_EBPF_OBJECT", ebpf_object())
        .env("LB_BIN_DIR", &bin)
        .env("LB_MOTO_VENV", &moto);
    if quick {
        cmd.arg("--quick");
    }
    if !only.is_empty() {
        cmd.arg("--only").arg(only.join(","));
    }
    check(&mut cmd)?;
    let latest = root().join("results/latest");
    let _ = std::fs::remove_file(&latest);
    std::os::unix::fs::symlink(out.file_name().expect("a directory name"), &latest)?;
    eprintln!("bench: report in {}", out.join("report.md").display());
    Ok(())
}

fn lint() -> Result<()> {
    let root = root();
    deps::check(&root)?;
    check(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    check(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate for its real target, with Debian's clippy (same rustc as the build).
    let mut cmd = setup::ebpf_toolchain()?.clippy();
    cmd.current_dir(root.join("lb-ebpf"))
        .args(["--release", "--bin", "lb-ebpf"])
        .args(["--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(root.join("target/bpf"))
        .args(["--", "-D", "warnings"]);
    check(&mut cmd)
}
