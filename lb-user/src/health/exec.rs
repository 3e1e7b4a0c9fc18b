//! `kind = "exec"`: a command must exit with status 0 within the timeout.
//!
//! The command runs directly (no shell), with `{address}`, `{port}` and
//! `{vip}` replaced in every argument, stdin from `/dev/null`, a minimal
//! environment and `/` as working directory. It gets a process group of its
//! own, and the whole group is killed with SIGKILL when the check times out
//! (or is abandoned), so a shell script cannot leave its children behind.

use std::{net::Ipv4Addr, os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::{Child, Command},
    time::Instant,
};

use super::{tcp::timeout_detail, CheckOutcome};

/// Bytes of output kept for the failure detail.
pub const OUTPUT_KEPT: usize = 200;

/// `PATH` of the command's environment.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The values substituted for the placeholders (and set in the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placeholders<'a> {
    /// `{address}`, `LB_ADDRESS`: the backend's address.
    pub address: Ipv4Addr,
    /// `{port}`, `LB_PORT`: the port to check (the check's `port`, or the
    /// backend's service port).
    pub port: u16,
    /// `{vip}`, `LB_VIP`: the VIP's name.
    pub vip: &'a str,
}

impl Placeholders<'_> {
    /// `arg` with every placeholder replaced; other braces are left alone.
    pub fn expand(&self, arg: &str) -> String {
        arg.replace("{address}", &self.address.to_string())
            .replace("{port}", &self.port.to_string())
            .replace("{vip}", self.vip)
    }
}

/// A spawned check whose process group is killed if it is dropped before the
/// command was waited for.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        // `id()` is `Some` until the child has been reaped, and its pid (the
        // group id) cannot be reused before that.
        if let Some(pid) = self.child.id() {
            // SAFETY: killpg only sends a signal; no memory is involved.
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        // `kill_on_drop` kills the leader too, and tokio reaps it.
    }
}

/// Runs `command` (already validated: non-empty, absolute program path).
pub async fn check(
    command: &[String],
    values: &Placeholders<'_>,
    timeout: Duration,
) -> CheckOutcome {
    let start = Instant::now();
    let argv: Vec<String> = command.iter().map(|a| values.expand(a)).collect();
    let Some(program) = argv.first() else {
        return CheckOutcome::new(false, start, "empty command".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", PATH)
        .env("LB_VIP", values.vip)
        .env("LB_ADDRESS", values.address.to_string())
        .env("LB_PORT", values.port.to_string())
        .env("LB_TIMEOUT_MS", timeout.as_millis().to_string())
        .current_dir("/")
        .process_group(0)
        .kill_on_drop(true);
    let mut running = match cmd.spawn() {
        Ok(child) => Running { child },
        Err(e) => return CheckOutcome::new(false, start, format!("cannot run {program}: {e}")),
    };
    let stdout = running.child.stdout.take();
    let stderr = running.child.stderr.take();
    let child = &mut running.child;
    let finished = tokio::time::timeout(timeout, async move {
        tokio::join!(read_capped(stdout), read_capped(stderr), child.wait())
    })
    .await;
    let (stdout, stderr, status) = match finished {
        Ok(done) => done,
        // `running` is dropped on return: the group is killed.
        Err(_) => return CheckOutcome::new(false, start, timeout_detail(timeout)),
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => return CheckOutcome::new(false, start, format!("wait: {e}")),
    };
    if status.success() {
        return CheckOutcome::new(true, start, "exit 0".into());
    }
    let detail = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("{status}"),
    };
    let output = if stderr.iter().all(u8::is_ascii_whitespace) {
        stdout
    } else {
        stderr
    };
    let output = one_line(&output);
    let detail = if output.is_empty() {
        detail
    } else {
        format!("{detail}: {output}")
    };
    CheckOutcome::new(false, start, detail)
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_KEPT`] bytes.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_KEPT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Output as one trimmed line: runs of whitespace become one space.
fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: Placeholders<'static> = Placeholders {
        address: Ipv4Addr::new(127, 0, 0, 1),
        port: 8080,
        vip: "web",
    };

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    async fn run(args: &[&str], timeout_ms: u64) -> CheckOutcome {
        check(&argv(args), &VALUES, Duration::from_millis(timeout_ms)).await
    }

    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(
            VALUES.expand("http://{address}:{port}/{vip}/{address}"),
            "http://127.0.0.1:8080/web/127.0.0.1"
        );
        assert_eq!(VALUES.expand("${HOME} {other}"), "${HOME} {other}");
    }

    #[tokio::test]
    async fn true_is_ok() {
        let out = run(&["/bin/true"], 2000).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(out.detail, "exit 0");
    }

    #[tokio::test]
    async fn false_fails() {
        let out = run(&["/bin/false"], 2000).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "exit 1");
    }

    #[tokio::test]
    async fn stderr_then_stdout_give_the_reason() {
        let out = run(
            &[
                "/bin/sh",
                "-c",
                "echo out; echo 'no  such\nthing' >&2; exit 3",
            ],
            2000,
        )
        .await;
        assert!(!out.ok);
        assert_eq!(out.detail, "exit 3: no such thing");
        let out = run(&["/bin/sh", "-c", "echo only stdout; exit 2"], 2000).await;
        assert_eq!(out.detail, "exit 2: only stdout");
        // Long output is cut to OUTPUT_KEPT bytes.
        let out = run(
            &[
                "/bin/sh",
                "-c",
                "i=0; while [ $i -lt 100 ]; do printf xxxxxxxxxx >&2; i=$((i+1)); done; exit 1",
            ],
            2000,
        )
        .await;
        assert_eq!(out.detail, format!("exit 1: {}", "x".repeat(OUTPUT_KEPT)));
    }

    #[tokio::test]
    async fn arguments_and_environment() {
        let script = r#"test "$0" = 127.0.0.1 && test "$1" = 8080 && test "$2" = web \
            && test "$LB_ADDRESS" = 127.0.0.1 && test "$LB_PORT" = 8080 \
            && test "$LB_VIP" = web && test "$LB_TIMEOUT_MS" = 2000 \
            && test "$(pwd)" = / && test -z "$HOME" \
            && test "$PATH" = /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            && ! read -r line"#;
        let out = run(
            &["/bin/sh", "-c", script, "{address}", "{port}", "{vip}"],
            2000,
        )
        .await;
        assert!(out.ok, "{out:?}");
    }

    #[tokio::test]
    async fn slow_command_is_killed_at_the_timeout() {
        let started = std::time::Instant::now();
        let out = run(&["/bin/sh", "-c", "sleep 5"], 200).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "timeout after 200 ms");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_whole_group_is_killed() {
        // The shell leaves a background sleep holding a pid file; after the
        // timeout, that process must be gone too.
        let dir = std::env::temp_dir().join(format!("lb-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let out = run(&["/bin/sh", "-c", &script], 300).await;
        assert_eq!(out.detail, "timeout after 300 ms");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // Give the kernel a moment to deliver SIGKILL; the sleep was
        // reparented, so it disappears once its new parent reaps it.
        let gone = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z ") || s.contains(") X "))
                .unwrap_or(true)
        };
        for _ in 0..50 {
            if gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process {pid} survived the timeout");
    }

    #[tokio::test]
    async fn missing_program_fails() {
        let out = run(&["/nonexistent/check"], 2000).await;
        assert!(!out.ok);
        assert!(
            out.detail.starts_with("cannot run /nonexistent/check: "),
            "{}",
            out.detail
        );
    }
}
