//! lbd under hostile local conditions and bad input, end to end: a second
//! lbd on a running data plane, planted state files, control sockets in
//! shared directories, oversized and malformed requests and configuration
//! files, nonsense backend addresses, and what a clean stop leaves behind
//! (docs/security.md). Needs root and the binaries built by `cargo xtask
//! build`; a missing binary fails the test, it never skips.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    harness::{assert_cleaned_up, assert_data_plane_removed, Timing},
    topology::{Topology, VIP_PORT},
    Child,
};
use lb_user::state::{dir_name, STATE_ROOT};

/// lbd's state directory for the topology's data plane.
fn state_dir(topo: &Topology) -> PathBuf {
    Path::new(STATE_ROOT).join(dir_name(&topo.pin_path()))
}

/// Waits for an lbd that must fail to start, and returns its exit code and
/// output.
fn failed_start(mut lbd: Child) -> (i32, String) {
    let status = lbd
        .wait_timeout(Duration::from_secs(30))
        .expect("wait for lbd")
        .unwrap_or_else(|| panic!("lbd did not exit: {}", lbd.output_so_far()));
    let out = lbd.output_so_far();
    eprintln!("  lbd exited ({status}): {}", out.trim());
    (status.code().expect("exited, not killed"), out)
}

/// `lbd --check --config PATH`: exit code, output, and how long it took.
fn check(topo: &Topology, config: &Path) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = Command::new(&topo.binaries().lbd)
        .args(["--check", "--config"])
        .arg(config)
        .output()
        .expect("run lbd --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("  lbd --check {}: {}", config.display(), text.trim());
    (out.status.code().unwrap_or(-1), text, started.elapsed())
}

/// One request line over the control socket and the answer, as JSON.
fn ask(stream: &mut UnixStream, line: &[u8]) -> Option<serde_json::Value> {
    stream.write_all(line).ok()?;
    let mut answer = String::new();
    BufReader::new(stream.try_clone().ok()?)
        .read_line(&mut answer)
        .ok()?;
    serde_json::from_str(&answer).ok()
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_second_lbd_on_the_same_data_plane_changes_nothing() {
    let test = "a_second_lbd_on_the_same_data_plane_changes_nothing";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let pid = topo.lbd().pid();
        let pin_path = topo.pin_path();
        let pins = || {
            let mut p: Vec<String> = fs::read_dir(&pin_path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            p.sort();
            p
        };
        let before = pins();
        // The same data plane, another control socket.
        let socket = topo.socket_path().display().to_string();
        let other = topo.dir().join("second.sock");
        let text = topo
            .lbd_config([1, 1, 1])
            .replace(&socket, &other.display().to_string());
        let path = topo.write_file("second.toml", &text).unwrap();
        let (code, out) = failed_start(topo.spawn_lbd(&path).unwrap());
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("another lbd (pid {pid}, control socket {socket})")),
            "the running lbd is named: {out}"
        );
        assert!(!other.exists(), "the second lbd made its socket: {out}");
        assert_eq!(pins(), before, "the pins are untouched");
        // The first one carries on, unaware.
        let r = topo.client(&["--count", "100", "--concurrency", "4"]);
        assert_eq!(r.ok, 100, "{r:?}");
        assert!(topo.lbctl(&["status"]).contains(&format!("pid {pid}")));
        topo.stop_lbd().unwrap();
        assert_data_plane_removed(&topo);
        assert!(!state_dir(&topo).exists(), "state directory left");
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn planted_state_and_shared_socket_directories_are_refused() {
    let test = "planted_state_and_shared_socket_directories_are_refused";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let good = topo.lbd_config([1, 1, 1]);

        // A control socket in /tmp: refused by --check, exit 2.
        let socket = topo.socket_path().display().to_string();
        let shared = good.replace(&socket, &format!("/tmp/lb-{}.sock", topo.prefix()));
        let path = topo.write_file("shared.toml", &shared).unwrap();
        let (code, out, _) = check(&topo, &path);
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("control.socket") && out.contains("writable by everybody"),
            "{out}"
        );

        // A state directory someone else could write: not used.
        let state = state_dir(&topo);
        fs::create_dir_all(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let path = topo.write_file("lb.toml", &good).unwrap();
        let (code, out) = failed_start(topo.spawn_lbd(&path).unwrap());
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("writable by everybody"), "{out}");
        assert!(!topo.pin_path().exists(), "nothing loaded: {out}");
        assert!(!topo.socket_path().exists());
        fs::remove_dir_all(&state).unwrap();

        // A symlink planted in place of the record an adopting lbd reads:
        // refused, and the data plane left running as it was found.
        topo.start_lbd([1, 1, 1]);
        let mut lbd = topo.take_lbd().unwrap();
        lbd.signal(libc::SIGQUIT);
        assert!(lbd
            .wait_timeout(Duration::from_secs(20))
            .unwrap()
            .is_some_and(|s| s.success()));
        let record = state.join("state.json");
        assert!(record.exists(), "the record stays for the next lbd");
        let target = topo.dir().join("victim");
        fs::write(&target, "precious\n").unwrap();
        fs::remove_file(&record).unwrap();
        std::os::unix::fs::symlink(&target, &record).unwrap();
        let (code, out) = failed_start(topo.spawn_lbd(&path).unwrap());
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("symbolic link"), "{out}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        let r = topo.client(&["--count", "50"]);
        assert_eq!(r.ok, 50, "still forwarding: {r:?}");

        // Without the record, the next lbd adopts (and says what it cannot
        // restore); its clean stop removes everything.
        fs::remove_file(&record).unwrap();
        topo.try_start_lbd_config(&good).unwrap();
        assert!(topo
            .lbd_output()
            .contains("without the previous lbd's record"));
        topo.stop_lbd().unwrap();
        assert_data_plane_removed(&topo);
        assert!(!state.exists());
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn oversized_and_malformed_requests_get_answers() {
    let test = "oversized_and_malformed_requests_get_answers";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        topo.start_lbd([1, 1, 1]);
        let pid = topo.lbd().pid();
        let mut s = UnixStream::connect(topo.socket_path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Not UTF-8: an error, and the connection goes on.
        let v = ask(&mut s, b"{\"version\":1,\"cmd\":\"st\xffatus\"}\n").expect("an answer");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        let v = ask(&mut s, b"{\"version\":1,\"cmd\":\"status\"}\n").expect("an answer");
        assert_eq!(v["ok"], true, "{v}");
        // A huge name is quoted cut.
        let name = "n".repeat(60_000);
        let line = format!(
            "{{\"version\":1,\"cmd\":\"backends_drain\",\"vip\":\"{name}\",\"address\":\"10.0.0.1\",\"port\":80}}\n"
        );
        let v = ask(&mut s, line.as_bytes()).expect("an answer");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
        assert!(v.to_string().len() < 1000, "{}", v.to_string().len());

        // 300 MB without a newline: refused after 64 KiB, connection closed,
        // and lbd did not grow by the size of it.
        let rss = rss_kib(pid);
        let mut s = UnixStream::connect(topo.socket_path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut written = 0usize;
        while written < 300 << 20 {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break, // closed by lbd
            }
        }
        eprintln!("  wrote {} MiB before lbd closed", written >> 20);
        assert!(written < 300 << 20, "lbd kept reading");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let v: serde_json::Value = serde_json::from_str(answer.trim()).expect("an answer");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 65536 bytes"));
        let grown = rss_kib(pid).saturating_sub(rss);
        eprintln!("  lbd's RSS grew by {grown} KiB");
        assert!(grown < 32 * 1024, "grew by {grown} KiB");
        assert!(topo.lbctl(&["status"]).contains("lbd"));
        topo.stop_lbd().unwrap();
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn configurations_must_be_small_regular_files_and_backends_other_hosts() {
    let test = "configurations_must_be_small_regular_files_and_backends_other_hosts";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let good = topo.lbd_config([1, 1, 1]);
        // Devices, FIFOs and big files are refused at once with exit 2.
        let fifo = topo.dir().join("fifo.toml");
        let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let big = topo
            .write_file("big.toml", &format!("{good}\n{}", "#\n".repeat(600_000)))
            .unwrap();
        let huge_value = topo
            .write_file(
                "value.toml",
                &good.replacen(
                    "[nat]",
                    &format!("[nat]\nx = \"{}\"", "v".repeat(900_000)),
                    1,
                ),
            )
            .unwrap();
        for (path, says) in [
            (Path::new("/dev/zero"), "character device"),
            (fifo.as_path(), "FIFO"),
            (big.as_path(), "at most 1048576 bytes"),
            (huge_value.as_path(), "unknown field"),
        ] {
            let (code, out, took) = check(&topo, path);
            assert_eq!(code, 2, "{out}");
            assert!(out.contains(says), "{out}");
            assert!(out.len() < 2000, "{} bytes of error", out.len());
            assert!(took < Duration::from_secs(5), "took {took:?}");
        }
        let open = topo.write_file("open.toml", &good).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
        let (code, out, _) = check(&topo, &open);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("writable by everybody"), "{out}");

        // Backends that are no other host: refused by lbctl, naming why.
        topo.start_lbd([1, 1, 1]);
        let vip = topo.vip().to_string();
        let nat = topo.nat_source().to_string();
        for (address, why) in [
            (vip.as_str(), "is a VIP address"),
            (nat.as_str(), "NAT source"),
            ("127.0.0.1", "loopback"),
            ("224.0.0.9", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
        ] {
            let target = format!("{address}:{VIP_PORT}");
            let out = topo
                .lbctl_output(&["backends", "add", "web", &target])
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("  lbctl backends add web {target}: {}", err.trim());
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(why) && err.contains("(invalid)"), "{err}");
        }
        // ... and by a reload, which changes nothing.
        let backend = topo.backend_addr(0).to_string();
        fs::write(topo.config_path(), good.replacen(&backend, &vip, 1)).unwrap();
        let out = topo.lbctl_output(&["reload"]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("backend[0].address") && err.contains("VIP address"),
            "{err}"
        );
        let backends = topo.lbctl_backends();
        assert_eq!(backends[0].backends.len(), 3, "{backends:?}");
        topo.stop_lbd().unwrap();
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}

#[test]
fn a_clean_stop_removes_the_directories_lbd_made() {
    let test = "a_clean_stop_removes_the_directories_lbd_made";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let top = PathBuf::from(format!("/sys/fs/bpf/lb-{}-deep", topo.prefix()));
        let pins = top.join("a/b");
        let run = topo.dir().join("run");
        let socket = run.join("x/lbd.sock");
        let text = topo
            .lbd_config([1, 1, 1])
            .replace(
                &topo.pin_path().display().to_string(),
                &pins.display().to_string(),
            )
            .replace(
                &topo.socket_path().display().to_string(),
                &socket.display().to_string(),
            );
        let lbctl_bin = topo.binaries().lbctl.clone();
        let lbctl = |args: &[&str]| {
            Command::new(&lbctl_bin)
                .arg("--socket")
                .arg(&socket)
                .args(args)
                .output()
                .unwrap()
        };
        topo.try_start_lbd_config(&text).unwrap();
        assert!(pins.exists() && socket.exists());
        // Through a restart: the lbd that adopts knows what the first made.
        let mut lbd = topo.take_lbd().unwrap();
        lbd.signal(libc::SIGQUIT);
        assert!(lbd
            .wait_timeout(Duration::from_secs(20))
            .unwrap()
            .is_some_and(|s| s.success()));
        topo.try_start_lbd_config(&text).unwrap();
        assert!(lbctl(&["status"]).status.success());
        topo.stop_lbd().unwrap();
        for gone in [&top, &run, &Path::new(STATE_ROOT).join(dir_name(&pins))] {
            assert!(!gone.exists(), "{} left behind", gone.display());
        }
        assert!(Path::new("/sys/fs/bpf").exists());
        assert!(topo.dir().exists(), "not lbd's to remove");
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}
