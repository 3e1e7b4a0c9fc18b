//! Installing and finding what the build needs.
//!
//! Two ways to build the eBPF crate are supported:
//! - **Debian** (what these machines have): `rustc-web` 1.96 with the prebuilt
//!   `core` for `bpfel-unknown-none` from `libstd-rust-web-dev-bpf`, linked by
//!   `bpf-linker` built against LLVM 22. No `rust-src` needed.
//! - **rustup nightly with `rust-src`** (a typical developer or EC2 box with
//!   internet): `cargo +nightly build -Z build-std=core`.
//!
//! `ensure` installs the Debian route when it can (root with apt-get); when it
//! can't, the error says exactly what is missing and how to get it.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Debian packages the build and the tests need.
const DEBIAN_PACKAGES: &[&str] = &[
    // eBPF toolchain (Debian route) and what bpf-linker links against.
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Test topologies.
    "iproute2",
    "ethtool",
];

const BPF_LINKER_VERSION: &str = "^0.13";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with cargo's bin directory first, so an installed bpf-linker is found.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin_dir()];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    env::join_paths(paths).expect("PATH entries are valid")
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn bpf_linker_present() -> bool {
    quiet_ok(
        Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", path_with_cargo_bin()),
    )
}

fn nightly_with_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false)
}

/// The peers `cargo xtask bench` measures lbd against, and its load generators.
const BENCH_PACKAGES: &[&str] = &[
    "haproxy",
    "nftables",
    "nginx-light",
    "wrk",
    "iperf3",
    "keepalived",
];

/// Real peers the test suite runs (the failover benchmark's smoke run).
const TEST_PACKAGES: &[&str] = &["keepalived"];

/// Installs the test suite's peers if missing; returns moto's virtual
/// environment (see [`ensure_moto`]).
pub fn ensure_test_peers() -> Result<PathBuf> {
    install_missing(TEST_PACKAGES)?;
    stop_system_services();
    ensure_moto()
}

/// moto's EC2 server (PyPI), the EC2 API the takeover tests run against,
/// pinned, with boto3 for the tests' own calls.
const MOTO: &str = "moto[server]==5.2.5";
const MOTO_VERSION: &str = "5.2.5";

/// Where moto's virtual environment lives: outside the checkout, so a new
/// clone reuses it (the install step stays here).
pub fn moto_venv() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/lb")
        .join(format!("moto-{MOTO_VERSION}"))
}

fn moto_present(venv: &Path) -> bool {
    venv.join("bin/moto_server").is_file()
        && quiet_ok(Command::new(venv.join("bin/python")).args([
            "-c",
            &format!("import boto3, moto; assert moto.__version__ == '{MOTO_VERSION}'"),
        ]))
}

/// Installs moto's EC2 server into its own virtual environment if missing.
pub fn ensure_moto() -> Result<PathBuf> {
    let venv = moto_venv();
    if moto_present(&venv) {
        return Ok(venv);
    }
    eprintln!("setup: installing {MOTO} into {}", venv.display());
    let _ = std::fs::remove_dir_all(&venv);
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let made = quiet_ok(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    if !made {
        // Debian's python3 needs python3-venv for `-m venv`.
        install_missing(&["python3", "python3-venv"])?;
        let _ = std::fs::remove_dir_all(&venv);
        crate::check(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )
        .context("creating a Python virtual environment for moto")?;
    }
    crate::check(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        MOTO,
    ]))
    .context("installing moto from PyPI")?;
    if !moto_present(&venv) {
        bail!(
            "moto is still missing from {} after installing it",
            venv.display()
        );
    }
    Ok(venv)
}

/// Installs the benchmark peers if missing; returns moto's virtual
/// environment (the EC2 API of the failover section).
pub fn ensure_bench_peers() -> Result<PathBuf> {
    install_missing(BENCH_PACKAGES)?;
    stop_system_services();
    ensure_moto()
}

/// The peers' packages start system-wide services; the benchmarks and tests
/// run their own instances in namespaces and need none outside them.
fn stop_system_services() {
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "nginx", "haproxy", "keepalived"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !quiet_ok(Command::new("apt-get").arg("--version")) {
        bail!(
            "missing Debian packages: {}\n  install them with: sudo apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    crate::check(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::check(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")
}

/// Installs whatever is missing. Idempotent and quick when all is present.
pub fn ensure() -> Result<()> {
    install_missing(DEBIAN_PACKAGES)?;
    if !bpf_linker_present() {
        eprintln!("setup: building bpf-linker against LLVM 22 (about 2 minutes)");
        crate::check(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )
        .context(
            "cargo install bpf-linker (needs llvm-22-dev, libpolly-22-dev, libzstd-dev, zlib1g-dev)",
        )?;
    }
    Ok(())
}

/// How this machine builds the eBPF crate.
pub enum EbpfToolchain {
    Debian,
    Nightly,
}

/// Finds a toolchain that can build for `bpfel-unknown-none`, or says what is missing.
pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    if !bpf_linker_present() {
        bail!(
            "bpf-linker not found: run `cargo xtask setup`, or \
             `LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22`"
        );
    }
    if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).is_dir() {
        return Ok(EbpfToolchain::Debian);
    }
    if nightly_with_rust_src() {
        return Ok(EbpfToolchain::Nightly);
    }
    bail!(
        "no Rust toolchain can build for bpfel-unknown-none here. Either:\n  \
         - Debian 12: apt-get install rustc-web libstd-rust-web-dev-bpf (from bookworm-security), or\n  \
         - rustup: rustup toolchain install nightly --component rust-src"
    )
}

impl EbpfToolchain {
    /// Points a `cargo build` for bpfel-unknown-none at this toolchain.
    pub fn configure(&self, cmd: &mut Command) {
        cmd.env("PATH", path_with_cargo_bin());
        match self {
            EbpfToolchain::Debian => {
                // aya-ebpf uses feature(asm_experimental_arch); Debian's rustc
                // is a stable-channel build.
                cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            }
            EbpfToolchain::Nightly => {
                cmd.env("RUSTUP_TOOLCHAIN", "nightly")
                    .args(["-Z", "build-std=core"]);
            }
        }
    }

    /// A `cargo clippy` for the eBPF crate with this toolchain.
    pub fn clippy(&self) -> Command {
        let mut cmd = match self {
            EbpfToolchain::Debian => {
                // Debian's cargo-clippy runs its clippy-driver, built with the
                // same rustc 1.96 that the prebuilt `core` needs.
                let mut c = Command::new("/usr/bin/cargo-clippy");
                c.arg("clippy");
                c
            }
            EbpfToolchain::Nightly => {
                let mut c = Command::new("cargo");
                c.arg("clippy");
                c
            }
        };
        self.configure(&mut cmd);
        cmd
    }
}
