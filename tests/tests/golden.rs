//! The control protocol's answers, pinned: `lbctl --json` for every command
//! (answers and errors) against a real lbd, compared byte for byte with
//! `tests/golden/lbctl-json.txt` after the values that change from run to
//! run (pids, times, counters, this run's names and addresses) are
//! replaced by placeholders. Field names, their order, types and nesting,
//! states, codes and messages are what is pinned: a change to any of them
//! is a change of the protocol scripts rely on, and fails here.
//!
//! After an intended change, regenerate the file with
//! `LB_BLESS=1 cargo xtask test -- --test golden` and review the diff.

use std::{fmt::Write as _, fs, path::PathBuf, time::Duration};

use lb_tests::{
    harness::{assert_cleaned_up, Timing},
    topology::{Topology, BACKEND_PORT, VIP_NAME},
    wait_until,
};

/// Keys whose values change from run to run.
const VOLATILE: [&str; 18] = [
    "pid",
    "uptime_secs",
    "since_unix",
    "packets",
    "bytes",
    "flows",
    "nat_entries",
    "adverts_sent",
    "adverts_received",
    "attempts",
    "failures",
    "last_error",
    "last_problem",
    "done_unix",
    "took_ms",
    "transitions",
    "version",
    // Digests of rings over this run's backend addresses.
    "ring_digest",
];

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/lbctl-json.txt")
}

/// `text` with volatile values and this run's names replaced.
fn normalise(topo: &Topology, text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let key = trimmed
            .strip_prefix('"')
            .and_then(|r| r.split_once("\": "))
            .map(|(k, _)| k);
        let line = match key {
            // The protocol version stays pinned at the top level.
            Some("version") if indent.len() <= 2 => line.to_owned(),
            Some(k) if VOLATILE.contains(&k) => {
                let comma = if trimmed.ends_with(',') { "," } else { "" };
                format!("{indent}\"{k}\": <{k}>{comma}")
            }
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let net = topo.net();
    out.replace(topo.prefix(), "PREFIX")
        .replace(&topo.dir().display().to_string(), "DIR")
        .replace(&format!("10.{net}."), "10.N.")
}

#[test]
fn lbctl_json_answers_are_pinned() {
    let test = "lbctl_json_answers_are_pinned";
    let _t = Timing::start(test);
    let prefix = {
        let mut topo = Topology::for_test(test);
        let n = topo.net();
        let text = format!(
            "{}\n[vrrp]\ninterface = \"eth0\"\nrouter_id = 7\npriority = 150\n\
             advert_interval_ms = 100\npeers = [\"10.{n}.1.9\"]\n\
             addresses = [\"10.{n}.1.77\"]\n",
            topo.lbd_config([1, 2, 3])
        );
        topo.try_start_lbd_config(&text).unwrap();
        topo.wait_backends_up(Duration::from_secs(30)).unwrap();
        wait_until(Duration::from_secs(10), "master", || {
            topo.lbctl(&["--json", "status"]).contains("\"master\",")
        })
        .unwrap();
        let r = topo.client(&["--count", "30"]);
        assert_eq!(r.ok, 30, "{r:?}");

        let extra = format!("10.{n}.2.14:{BACKEND_PORT}");
        let b1 = format!("{}:{BACKEND_PORT}", topo.backend_addr(0));
        let commands: Vec<Vec<String>> = [
            vec!["backends"],
            vec!["backends", "list"],
            vec!["vips"],
            vec!["status"],
            vec!["stats"],
            vec!["backends", "add", VIP_NAME, &extra, "--weight", "2"],
            vec!["backends", "add", VIP_NAME, &extra],
            vec!["backends", "drain", VIP_NAME, &b1],
            vec!["backends", "enable", VIP_NAME, &b1],
            vec!["backends", "weight", VIP_NAME, &b1, "4"],
            vec!["backends", "weight", VIP_NAME, &b1, "0"],
            vec!["backends", "remove", VIP_NAME, &extra],
            vec!["backends", "remove", VIP_NAME, &extra],
            vec!["backends", "drain", "nosuchvip", &b1],
            vec![
                "backends",
                "add",
                VIP_NAME,
                &format!("127.0.0.1:{BACKEND_PORT}"),
            ],
            vec!["reload"],
        ]
        .into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect();
        let mut transcript = String::new();
        for c in &commands {
            let mut args = vec!["--json"];
            args.extend(c.iter().map(String::as_str));
            let out = topo.lbctl_output(&args).unwrap();
            let _ = writeln!(
                transcript,
                "$ lbctl {} (exit {})",
                normalise(&topo, &args.join(" ")).trim_end(),
                out.status.code().unwrap_or(-1)
            );
            transcript.push_str(&normalise(&topo, &String::from_utf8_lossy(&out.stdout)));
            transcript.push('\n');
        }
        // A file that no longer parses: refused, with the reason.
        fs::write(topo.config_path(), "[dataplane\n").unwrap();
        let out = topo.lbctl_output(&["--json", "reload"]).unwrap();
        let _ = writeln!(
            transcript,
            "$ lbctl --json reload (exit {})",
            out.status.code().unwrap_or(-1)
        );
        transcript.push_str(&normalise(&topo, &String::from_utf8_lossy(&out.stdout)));

        let path = golden_path();
        if std::env::var_os("LB_BLESS").is_some() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &transcript).unwrap();
            eprintln!("  wrote {}", path.display());
        } else {
            let golden = fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; generate it with LB_BLESS=1 (see this file's comment)",
                    path.display()
                )
            });
            if golden != transcript {
                let got = path.with_extension("txt.new");
                fs::write(&got, &transcript).unwrap();
                let first = golden
                    .lines()
                    .zip(transcript.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(golden.lines().count().min(transcript.lines().count()));
                panic!(
                    "lbctl's JSON differs from {} from line {} (this run's is in {}):\n  \
                     golden: {:?}\n  now:    {:?}",
                    path.display(),
                    first + 1,
                    got.display(),
                    golden.lines().nth(first),
                    transcript.lines().nth(first)
                );
            }
        }
        topo.stop_lbd().unwrap();
        topo.prefix().to_owned()
    };
    assert_cleaned_up(&prefix);
}
