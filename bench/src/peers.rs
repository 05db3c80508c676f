//! The IRC comparison's results, read back for a figure: the JSON files that the peer lab's
//! `compare.sh` (`bench/peers/tools/peers/compare.sh`) leaves in its results directory, one
//! per server, mode and round, named `<server>-<mode>-r<round>.json` and written by the
//! `chatbench` generator (`bench/peers/tools/chatbench/rust/`). `mode` is `flood` (50 pairs
//! flooding) or `rate100` (50 pairs at 100 msgs/s each: 5,000 msgs/s).

use std::collections::BTreeMap;
use std::path::Path;

use securechat::{Error, Result};
use serde::Deserialize;

use crate::spread::Spread;

/// The part of one chatbench result file the comparison uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatbenchRun {
    /// Messages the receivers got.
    pub received: u64,
    /// Messages the senders were to send.
    pub expected: u64,
    /// First send to last delivery, seconds.
    pub duration_s: f64,
    /// `received / duration_s`.
    pub throughput_msgs_per_s: f64,
    /// Send-to-receive latency percentiles.
    pub latency_ms: ChatbenchLatency,
    /// CPU used while messages flowed, as cores busy on average.
    pub cpu_cores_used: ChatbenchCpu,
}

/// chatbench's latency percentiles, ms.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatbenchLatency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// chatbench's CPU readings.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatbenchCpu {
    /// The server's cores (`None` without `--server-pid`).
    pub server: Option<f64>,
}

impl ChatbenchRun {
    /// Server CPU per delivered message, µs (as `compare.sh` computes it).
    pub fn server_us_per_msg(&self) -> Option<f64> {
        let cores = self.cpu_cores_used.server?;
        (self.received > 0).then(|| cores * self.duration_s * 1e6 / self.received as f64)
    }
}

/// One server's results over the rounds.
#[derive(Debug, Clone)]
pub struct PeerSummary {
    /// The server, as `compare.sh` labels it (`securechat`, `ngircd`, `hybrid`, ...).
    pub server: String,
    /// Flood: delivered msgs/s.
    pub flood_msgs_per_s: Option<Spread>,
    /// Flood: server CPU per message, µs.
    pub flood_us_per_msg: Option<Spread>,
    /// 5,000 msgs/s: p99 latency, ms.
    pub rate100_p99_ms: Option<Spread>,
    /// Runs in which a message was lost.
    pub runs_with_loss: usize,
}

/// Reads every `<server>-<mode>-r<round>.json` in `dir` and summarises them per server.
pub fn read_compare_dir(dir: &Path) -> Result<Vec<PeerSummary>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", dir.display())))?;
    let mut runs: BTreeMap<String, Vec<(String, ChatbenchRun)>> = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let mut parts = stem.rsplitn(3, '-');
        let (Some(_round), Some(mode), Some(server)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        // chatbench prints NaN where /proc had no reading; JSON has no NaN.
        let run: ChatbenchRun =
            serde_json::from_str(&text.replace("NaN", "null")).map_err(|e| {
                Error::Config(format!("{}: not a chatbench result: {e}", path.display()))
            })?;
        runs.entry(server.to_owned())
            .or_default()
            .push((mode.to_owned(), run));
    }
    Ok(runs
        .into_iter()
        .map(|(server, runs)| {
            let of = |mode: &str, metric: fn(&ChatbenchRun) -> Option<f64>| {
                let values: Vec<f64> = runs
                    .iter()
                    .filter(|(m, _)| m == mode)
                    .filter_map(|(_, r)| metric(r))
                    .collect();
                Spread::of(&values)
            };
            PeerSummary {
                flood_msgs_per_s: of("flood", |r| Some(r.throughput_msgs_per_s)),
                flood_us_per_msg: of("flood", ChatbenchRun::server_us_per_msg),
                rate100_p99_ms: of("rate100", |r| Some(r.latency_ms.p99)),
                runs_with_loss: runs.iter().filter(|(_, r)| r.received < r.expected).count(),
                server,
            }
        })
        .collect())
}

/// The comparison as a Markdown table, for `figures/tables.md`.
pub fn markdown_table(servers: &[PeerSummary], source: &str) -> String {
    let cell = |s: Option<Spread>, decimals: usize| s.map_or("-".into(), |s| s.text(decimals));
    let mut out = format!(
        "**securechat beside the IRC servers, same generator (chatbench)** (`irc.svg`; {source})\n\n\
         | server | flood msgs/s | flood server CPU µs/msg | p99 ms at 5,000 msgs/s | runs with loss |\n\
         |---|---|---|---|---|\n"
    );
    for s in servers {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            s.server,
            cell(s.flood_msgs_per_s, 0),
            cell(s.flood_us_per_msg, 2),
            cell(s.rate100_p99_ms, 2),
            s.runs_with_loss
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chatbench result file as the generator prints it (NaN included).
    fn result(msgs_per_s: f64, p99: f64, received: u64) -> String {
        format!(
            r#"{{"generator": "rust", "pairs": 50, "sent": 100, "received": {received}, "expected": 100,
                "duration_s": 2.000, "throughput_msgs_per_s": {msgs_per_s:.1},
                "latency_ms": {{"p50": 0.5, "p90": 0.9, "p99": {p99}, "p999": 3.0, "max": 4.0}},
                "cpu_cores_used": {{"generator": 1.00, "server": 0.50, "whole_machine": NaN, "other": NaN}}}}"#
        )
    }

    #[test]
    fn compare_results_are_summarised_per_server_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("securechat-flood-r1.json", result(400.0, 9.0, 100));
        write("securechat-flood-r2.json", result(600.0, 9.0, 100));
        write("securechat-rate100-r1.json", result(50.0, 1.5, 100));
        write("ngircd-flood-r1.json", result(100.0, 9.0, 99));
        write("notes.txt", "not a result".into());
        let servers = read_compare_dir(dir.path()).unwrap();
        let names: Vec<&str> = servers.iter().map(|s| s.server.as_str()).collect();
        assert_eq!(names, ["ngircd", "securechat"]);
        let ours = &servers[1];
        assert_eq!(ours.flood_msgs_per_s.unwrap().median, 500.0);
        assert_eq!(ours.rate100_p99_ms.unwrap().median, 1.5);
        // 0.5 cores × 2 s / 100 messages = 10,000 µs per message.
        assert_eq!(ours.flood_us_per_msg.unwrap().median, 10_000.0);
        assert_eq!(ours.runs_with_loss, 0);
        assert_eq!(servers[0].runs_with_loss, 1);
        assert!(servers[0].rate100_p99_ms.is_none());
        let table = markdown_table(&servers, "test");
        assert!(
            table.contains(
                "| securechat | 500 (400–600) | 10000.00 (10000.00–10000.00) | 1.50 | 0 |"
            ),
            "{table}"
        );
    }
}
