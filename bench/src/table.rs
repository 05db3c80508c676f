//! The bench's human-readable output: one table of every pairs run, then a summary per
//! phase (idle memory, soak, login storm, offline mail, key agreement). The JSON file carries the same
//! numbers in full.

use crate::results::{self, PairsResult, Report};

/// Formats an optional number, `-` when absent.
pub fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// The human-readable summary.
pub fn print(report: &Report) {
    let runs: Vec<&PairsResult> = report.pairs_runs().collect();
    if !runs.is_empty() {
        println!(
            "\n{:<9} {:>5} {:>8} {:>9} {:>10} {:>5} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>8}",
            "run", "pairs", "msgs/snd", "offered/s", "deliv/s", "lost", "reord", "err",
            "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
            "srv", "srv", "gen", "machine", "login"
        );
        println!(
            "{:<9} {:>5} {:>8} {:>9} {:>10} {:>5} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>7} {:>8}",
            "", "", "", "", "", "", "", "", "", "", "", "", "",
            "cores", "us/msg", "cores", "cores", "p50 ms"
        );
        for r in &runs {
            println!(
                "{:<9} {:>5} {:>8} {:>9} {:>10.0} {:>5} {:>5} {:>4} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>7} {:>6.2} {:>7} {:>8.2}",
                r.kind,
                r.pairs,
                r.messages_per_sender,
                opt(r.offered_msgs_per_s, 0),
                r.msgs_per_s,
                r.lost,
                r.reordered,
                r.errors,
                r.latency_ms.p50,
                r.latency_ms.p90,
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.latency_ms.max,
                opt(r.cpu.server_cores, 2),
                opt(r.cpu.server_us_per_msg, 1),
                r.cpu.generator_cores,
                opt(r.cpu.machine_busy_cores, 2),
                r.setup.connect_login_ms.p50,
            );
        }
        println!(
            "(payload {} bytes, up to {} messages per TLS write, window {}; latency = send to \
             receive, one clock; srv/gen cores = CPU seconds / measured window; login = connect \
             + TLS + LOGIN)",
            runs[0].payload_bytes,
            runs[0].batch,
            runs[0]
                .window
                .map_or_else(|| "none".into(), |w| w.to_string()),
        );
    }
    if let Some(i) = &report.idle {
        println!(
            "\nidle: {} logged-in connections: server RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per \
             connection ((after - before) / N), {:.1} KiB marginal (slope over {} samples)",
            i.connections,
            i.rss_before_kib as f64 / 1024.0,
            i.rss_after_kib as f64 / 1024.0,
            i.rss_per_conn_kib,
            i.slope_kib_per_conn,
            i.samples.len()
        );
        println!(
            "      opening them ({} at a time) took {:.1} s; connect + login p50 {:.2} ms, p99 {:.2} ms; \
             register p50 {:.2} ms, p99 {:.2} ms; server threads {}",
            i.setup.concurrency,
            i.setup.seconds,
            i.setup.connect_login_ms.p50,
            i.setup.connect_login_ms.p99,
            i.setup.register_ms.p50,
            i.setup.register_ms.p99,
            i.server_threads
                .map_or_else(|| "-".into(), |t| t.to_string())
        );
        for with in &i.with_traffic {
            let without = report
                .rates
                .iter()
                .find(|r| r.rate_per_sender == with.rate_per_sender && r.pairs == with.pairs);
            println!(
                "      {} pairs at {} msgs/s: p50 {:.3} ms, p99 {:.3} ms with the {} idle connections \
                 held (without: p50 {}, p99 {}); server RSS {}",
                with.pairs,
                opt(with.offered_msgs_per_s, 0),
                with.latency_ms.p50,
                with.latency_ms.p99,
                i.connections,
                opt(without.map(|r| r.latency_ms.p50), 3),
                opt(without.map(|r| r.latency_ms.p99), 3),
                with.server_rss_kib
                    .map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            );
        }
    }
    if let Some(s) = &report.storm {
        print_storm(s);
    }
    if let Some(o) = &report.offline {
        print_offline(o);
    }
    if let Some(d) = &report.dh {
        print_dh(d);
    }
    if let Some(s) = &report.soak {
        let first = s.rss_samples.first().map_or(0, |r| r.rss_kib);
        let max = s.rss_samples.iter().map(|r| r.rss_kib).max().unwrap_or(0);
        let last = s.rss_samples.last().map_or(0, |r| r.rss_kib);
        println!(
            "\nsoak: {} clients ({} reconnecting) for {:.0} s, think {:.0} ms: {} private, {} room, \
             {} list, {} ping, {} reconnects",
            s.clients,
            s.churning_clients,
            s.seconds,
            s.think_ms,
            s.actions.private,
            s.actions.room,
            s.actions.list,
            s.actions.ping,
            s.actions.reconnect
        );
        println!(
            "      private sent {} delivered {} lost {} reordered {}; room deliveries {}; errors {} {:?}",
            s.private_sent,
            s.private_delivered,
            s.lost,
            s.reordered,
            s.room_delivered,
            s.errors,
            s.error_samples
        );
        println!(
            "      server RSS first {:.1} MiB, max {:.1} MiB, last {:.1} MiB, growth after warm-up {} KiB; server {} cores",
            first as f64 / 1024.0,
            max as f64 / 1024.0,
            last as f64 / 1024.0,
            s.rss_growth_kib.map_or_else(|| "-".into(), |g| g.to_string()),
            opt(s.server_cores, 2)
        );
    }
}

/// The `--offline` summary.
fn print_offline(o: &results::OfflineResult) {
    println!(
        "\noffline: {} senders queue {} users x {} messages ({} bytes each), then the {} users \
         log in at once",
        o.senders, o.users, o.messages_per_user, o.payload_bytes, o.users
    );
    println!(
        "      {:<8} {:>9} {:>9} {:>10} {:>12} {:>12}",
        "phase", "messages", "seconds", "msgs/s", "server cores", "server us/msg"
    );
    for (name, messages, seconds, rate, cpu) in [
        (
            "enqueue",
            o.queued,
            o.enqueue_seconds,
            o.enqueue_msgs_per_s,
            &o.enqueue_cpu,
        ),
        (
            "drain",
            o.delivered,
            o.drain_seconds,
            o.delivery_msgs_per_s,
            &o.drain_cpu,
        ),
    ] {
        println!(
            "      {name:<8} {messages:>9} {seconds:>9.2} {rate:>10.0} {:>12} {:>12}",
            opt(cpu.server_cores, 2),
            opt(cpu.server_us_per_msg, 0)
        );
    }
    println!(
        "      per user: login p50 {:.0} ms p99 {:.0} ms; drained p50 {:.0} ms p99 {:.0} ms max {:.0} ms",
        o.login_ms.p50, o.login_ms.p99, o.drain_ms.p50, o.drain_ms.p99, o.drain_ms.max
    );
    println!(
        "      drained users {}/{}; delivered {} lost {} duplicated {} reordered {}; senders told \
         delivered {}; errors {} {:?}",
        o.drained_users,
        o.users,
        o.delivered,
        o.lost,
        o.duplicated,
        o.reordered,
        o.delivered_statuses,
        o.errors,
        o.error_samples
    );
}

/// The `--storm` summary.
fn print_storm(s: &results::StormResult) {
    let known = |v: Option<u32>| v.map_or_else(|| "as configured".into(), |v| v.to_string());
    println!(
        "\nstorm: {} clients log in at once (bcrypt cost {}, bcrypt workers {}) while {} pairs \
         send {:.0} msgs/s in all",
        s.clients,
        known(s.bcrypt_cost),
        known(s.bcrypt_workers.map(|w| w as u32)),
        s.pairs,
        s.offered_msgs_per_s
    );
    println!(
        "{:<7} {:>15} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>7}",
        "window",
        "seconds",
        "messages",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "srv",
        "machine",
        "srv us"
    );
    for (name, w) in [("quiet", &s.quiet), ("storm", &s.storm)] {
        println!(
            "{:<7} {:>15} {:>9} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>7} {:>7}",
            name,
            format!("{:.2}-{:.2}", w.from_s, w.to_s),
            w.messages,
            w.latency_ms.p50,
            w.latency_ms.p90,
            w.latency_ms.p99,
            w.latency_ms.max,
            opt(w.cpu.server_cores, 2),
            opt(w.cpu.machine_busy_cores, 2),
            opt(w.cpu.server_us_per_msg, 1),
        );
    }
    println!(
        "      p99 storm / quiet = {}, p50 storm / quiet = {}; logged in {}/{} (errors {}): \
         connect + login from the common start p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms \
         (connect + TLS alone p50 {:.0} ms, max {:.0} ms); registering them beforehand took {:.1} s",
        opt(s.p99_ratio, 2),
        opt(s.p50_ratio, 2),
        s.logged_in,
        s.clients,
        s.login_errors,
        s.login_ms.p50,
        s.login_ms.p99,
        s.login_ms.max,
        s.connect_ms.p50,
        s.connect_ms.max,
        s.register_seconds
    );
    println!(
        "      (srv/machine = cores busy; srv us = server CPU per pairs message, the logins' \
         work included)"
    );
}

/// The `--dh` summary.
fn print_dh(d: &results::DhReport) {
    println!(
        "\ndh: one complete agreement (both sides: keygen, validation with subgroup check, \
         shared secret, sign, verify, HKDF), {} runs per group, one thread",
        d.runs
    );
    println!(
        "{:<10} {:>5} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>10} {:>8} {:>8} {:>8}",
        "group",
        "x bits",
        "p50 ms",
        "p90 ms",
        "agree/s",
        "keygen",
        "validate",
        "secret",
        "sign",
        "verify",
        "openssl/s",
        "x/agree",
        "x/modexp",
        "x/same"
    );
    for g in &d.groups {
        let o = g.openssl.as_ref();
        println!(
            "{:<10} {:>5} {:>8.2} {:>8.2} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>6.3} {:>6.3} {:>10} {:>8} {:>8} {:>8}",
            g.group,
            g.exponent_bits,
            g.agreement_ms.p50,
            g.agreement_ms.p90,
            g.agreements_per_s,
            g.parts_ms.keygen_ms,
            g.parts_ms.validate_ms,
            g.parts_ms.shared_secret_ms,
            g.parts_ms.sign_ms,
            g.parts_ms.verify_ms,
            opt(o.map(|o| o.op_per_s), 1),
            opt(o.map(|o| o.ratio_per_agreement), 1),
            opt(o.map(|o| o.ratio_per_modexp), 1),
            opt(o.map(|o| o.ratio_same_operation), 1),
        );
    }
    if let Some(o) = d.groups.iter().find_map(|g| g.openssl.as_ref()) {
        println!(
            "      (parts in ms, medians. openssl/s: `{}` op/s ({}); one OpenSSL op is ONE \
             party's derive, Z = Y^x mod p with its ~225/275-bit exponent: no key generation, \
             no subgroup check, no signatures. x/agree = openssl op/s / our agreements/s; \
             x/modexp = the same per exponentiation (we do {} per agreement: per side g^x and \
             Y^x; the subgroup check is a Jacobi symbol); x/same = OpenSSL's derive vs our own Y^x step, the same \
             operation)",
            o.command
                .replace("ffdh2048", "ffdhNNNN")
                .replace("ffdh3072", "ffdhNNNN"),
            o.version,
            d.groups.first().map_or(0, |g| g.modexps_per_agreement)
        );
    } else {
        println!("      (no openssl figure: openssl not installed, or --openssl-seconds 0)");
    }
    print_power_paths(d);
}

/// Which of a group's [`results::PowerPaths`] a table shows.
type PathsOf = fn(&results::DhGroupResult) -> &results::PowerPaths;

/// The `--dh` exponentiation comparisons: per group, the range over rounds of each path's
/// median, of their ratio, and OpenSSL's op beside the library's path (its key generation
/// is the same constant-time exponentiation as its derive).
fn print_power_paths(d: &results::DhReport) {
    let Some(first) = d.groups.first() else {
        return;
    };
    let tables: [(&str, &str, PathsOf); 2] = [
        (
            "dh keygen g^x: num-bigint modpow vs the g = 2 path (Group::generator_power)",
            "g=2",
            |g| &g.keygen_paths,
        ),
        (
            "dh secret Y^x: num-bigint modpow vs the masked-window path (Group::power)",
            "lib",
            |g| &g.secret_paths,
        ),
    ];
    for (title, name, paths) in tables {
        if paths(first).rounds.is_empty() {
            continue;
        }
        println!(
            "\n{title}, montgomery/src/lib.rs, {} rounds x {} fresh exponents, per-round medians as \
             min-max",
            paths(first).rounds.len(),
            paths(first).exponents_per_round
        );
        println!(
            "{:<10} {:>5} {:>15} {:>15} {:>13} {:>12} {:>13}",
            "group",
            "x bits",
            "modpow ms",
            format!("{name} ms"),
            format!("modpow/{name}"),
            "openssl ms",
            format!("{name}/openssl")
        );
        for g in &d.groups {
            let rounds = &paths(g).rounds;
            let modpow: Vec<f64> = rounds.iter().map(|r| r.modpow_ms).collect();
            let library: Vec<f64> = rounds.iter().map(|r| r.library_ms).collect();
            let speedup: Vec<f64> = rounds.iter().map(|r| r.modpow_ms / r.library_ms).collect();
            let openssl_ms = g.openssl.as_ref().map(|o| 1e3 / o.op_per_s);
            let vs_openssl: Vec<f64> = openssl_ms
                .map(|ms| library.iter().map(|p| p / ms).collect())
                .unwrap_or_default();
            println!(
                "{:<10} {:>5} {:>15} {:>15} {:>13} {:>12} {:>13}",
                g.group,
                g.exponent_bits,
                min_max(&modpow, 3),
                min_max(&library, 3),
                min_max(&speedup, 2),
                opt(openssl_ms, 3),
                min_max(&vs_openssl, 2),
            );
        }
    }
}

/// `min-max` of `values` with `decimals`, or `-` when there are none.
fn min_max(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.decimals$}-{max:.decimals$}")
}
