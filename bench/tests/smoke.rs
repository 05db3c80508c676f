//! Smoke tests of the `bench` binary: tiny runs that must finish quickly in a debug build
//! and produce sane JSON. They check correctness (nothing lost, nothing reordered, no
//! errors) and that every measurement is present, never how fast anything is.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `bench` with `args` plus `--json` into a temp dir; returns the parsed JSON.
fn run_bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("bcrypt cost 4"),
        "the output says how the server was set up:\n{stdout}"
    );
    read_json(&json)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("bench wrote its JSON file");
    serde_json::from_str(&text).expect("the JSON parses")
}

fn num(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} should be a number, got {at}"))
}

#[test]
fn flood_and_idle_report_sane_numbers() {
    let v = run_bench(&[
        "--flood",
        "--pairs",
        "2",
        "--messages",
        "200",
        "--idle",
        "20",
    ]);
    assert_eq!(v["tool"], "securechat-bench");
    assert_eq!(v["mode"], "flood+idle");
    assert_eq!(v["server"]["bcrypt_cost"], 4);

    let flood = &v["flood"];
    assert_eq!(num(flood, "sent"), 400.0, "2 pairs x 200 messages");
    assert_eq!(num(flood, "delivered"), num(flood, "sent"));
    assert_eq!(num(flood, "lost"), 0.0);
    assert_eq!(num(flood, "reordered"), 0.0);
    assert_eq!(num(flood, "errors"), 0.0, "{}", flood["error_samples"]);
    assert!(num(flood, "msgs_per_s") > 0.0);
    let p50 = num(flood, "latency_ms.p50");
    let p99 = num(flood, "latency_ms.p99");
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} <= p99 {p99}");
    assert!(p99 <= num(flood, "latency_ms.max"));
    assert!(num(flood, "cpu.server_us_per_msg") > 0.0);
    assert_eq!(num(flood, "setup.connections"), 4.0);

    let idle = &v["idle"];
    assert_eq!(num(idle, "connections"), 20.0);
    assert!(num(idle, "rss_per_conn_kib") > 0.0, "{idle}");
    assert_eq!(idle["samples"].as_array().map(Vec::len), Some(11));
}

#[test]
fn a_short_soak_loses_nothing() {
    let v = run_bench(&["--soak", "2", "--clients", "8", "--think-ms", "20"]);
    let soak = &v["soak"];
    assert_eq!(num(soak, "errors"), 0.0, "{}", soak["error_samples"]);
    assert_eq!(num(soak, "lost"), 0.0);
    assert_eq!(num(soak, "reordered"), 0.0);
    assert!(num(soak, "private_sent") > 0.0, "{soak}");
    assert_eq!(num(soak, "private_delivered"), num(soak, "private_sent"));
    assert!(!soak["rss_samples"].as_array().expect("samples").is_empty());
}

#[test]
fn figures_are_drawn_from_a_result_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("r.json");
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--sweep", "1,2", "--messages", "50", "--sweep-total", "100"])
        .args(["--rate", "200,400", "--pairs", "2", "--idle", "4"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("bench runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = dir.path().join("figs");
    let draw = Command::new(env!("CARGO_BIN_EXE_figures"))
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("figures runs");
    assert!(
        draw.status.success(),
        "{}",
        String::from_utf8_lossy(&draw.stderr)
    );
    for name in ["throughput.svg", "latency.svg", "memory.svg"] {
        let svg = std::fs::read_to_string(out.join(name)).expect(name);
        assert!(svg.starts_with("<svg"), "{name} is an SVG");
    }
}

#[test]
fn rates_run_with_and_without_idle_connections_held() {
    let v = run_bench(&[
        "--idle",
        "6",
        "--rate",
        "100",
        "--pairs",
        "2",
        "--messages",
        "50",
    ]);
    assert_eq!(v["mode"], "rate+idle");
    let rates = v["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 1, "the run without idle connections");
    let idle = &v["idle"];
    let with = idle["with_traffic"].as_array().expect("with_traffic");
    assert_eq!(with.len(), 1, "the run with idle connections held");
    for run in [&rates[0], &with[0]] {
        assert_eq!(num(run, "delivered"), 100.0, "{run}");
        assert_eq!(num(run, "errors"), 0.0, "{}", run["error_samples"]);
    }
    assert_eq!(with[0]["kind"], "idle+rate");
    assert!(
        num(idle, "server_threads") >= 12.0,
        "two threads per idle connection: {idle}"
    );
}

#[test]
fn storm_and_dh_report_their_numbers() {
    let v = run_bench(&[
        "--storm",
        "3",
        "--pairs",
        "2",
        "--storm-rate",
        "50",
        "--storm-quiet",
        "1",
        "--bcrypt-cost",
        "4",
        "--dh",
        "--dh-runs",
        "2",
        "--openssl-seconds",
        "0",
    ]);
    assert_eq!(v["mode"], "storm+dh");
    let storm = &v["storm"];
    assert_eq!(num(storm, "bcrypt_cost"), 4.0, "--bcrypt-cost wins over 12");
    assert_eq!(
        num(storm, "logged_in"),
        3.0,
        "{}",
        storm["login_error_samples"]
    );
    assert_eq!(num(storm, "login_errors"), 0.0);
    assert_eq!(num(storm, "run.lost"), 0.0);
    assert_eq!(
        num(storm, "run.errors"),
        0.0,
        "{}",
        storm["run"]["error_samples"]
    );
    assert!(num(storm, "quiet.messages") > 0.0, "{storm}");
    assert!(num(storm, "storm.to_s") > num(storm, "storm.from_s"));
    assert!(num(storm, "login_ms.max") >= num(storm, "login_ms.p50"));
    // At cost 4 the storm may be over before the next message is sent: then no ratio.
    if num(storm, "storm.messages") > 0.0 {
        assert!(num(storm, "p99_ratio") > 0.0, "{storm}");
    } else {
        assert!(storm["p99_ratio"].is_null(), "{storm}");
    }

    let groups = v["dh"]["groups"].as_array().expect("dh groups");
    assert_eq!(groups.len(), 2, "ffdhe2048 and ffdhe3072");
    for g in groups {
        assert!(num(g, "agreements_per_s") > 0.0, "{g}");
        assert!(num(g, "parts_ms.validate_ms") > 0.0, "{g}");
        assert!(g["openssl"].is_null(), "--openssl-seconds 0 skips openssl");
        for paths in ["keygen_paths", "secret_paths"] {
            let rounds = g[paths]["rounds"].as_array().expect(paths);
            assert!(!rounds.is_empty(), "{paths}: {g}");
            for round in rounds {
                assert!(num(round, "modpow_ms") > 0.0, "{g}");
                assert!(num(round, "library_ms") > 0.0, "{g}");
            }
        }
    }
}

#[test]
fn offline_mail_is_drained_complete_in_order_and_acknowledged() {
    let v = run_bench(&[
        "--offline",
        "--offline-users",
        "3",
        "--offline-messages",
        "5",
        "--offline-senders",
        "2",
    ]);
    assert_eq!(v["mode"], "offline");
    let o = &v["offline"];
    assert_eq!(num(o, "errors"), 0.0, "{}", o["error_samples"]);
    assert_eq!(num(o, "queued"), 15.0, "3 users x 5 messages: {o}");
    assert_eq!(num(o, "delivered"), 15.0, "{o}");
    assert_eq!(num(o, "drained_users"), 3.0, "{o}");
    assert_eq!(num(o, "lost"), 0.0);
    assert_eq!(num(o, "duplicated"), 0.0);
    assert_eq!(num(o, "reordered"), 0.0);
    assert_eq!(num(o, "delivered_statuses"), 15.0, "{o}");
    assert!(num(o, "enqueue_msgs_per_s") > 0.0, "{o}");
    assert!(num(o, "delivery_msgs_per_s") > 0.0, "{o}");
    assert!(num(o, "drain_ms.max") >= num(o, "drain_ms.p50"), "{o}");
    assert!(num(o, "login_ms.p50") > 0.0, "{o}");
    assert!(num(o, "enqueue_cpu.window_s") > 0.0, "{o}");
}
