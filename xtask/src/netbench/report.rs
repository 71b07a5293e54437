//! The results of one `cargo xtask bench` run: the metric catalogue, raw samples, medians
//! and ratios, and their rendering as a terminal table, Markdown and JSON. Pure: no I/O
//! except [`write_files`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// Which direction of a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Better {
    /// More is better (throughput, rates).
    Higher,
    /// Less is better (latency, CPU, memory).
    Lower,
    /// Context only (load, loss of an overdriven test).
    Info,
}

impl Better {
    fn mark(self) -> &'static str {
        match self {
            Self::Higher => " (+)",
            Self::Lower => " (-)",
            Self::Info => "",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Higher => "higher",
            Self::Lower => "lower",
            Self::Info => "info",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
pub(crate) struct MetricDef {
    /// Key in the JSON samples.
    pub(crate) key: String,
    /// Row title (unit included).
    pub(crate) title: String,
    pub(crate) better: Better,
    /// Decimals shown.
    pub(crate) decimals: usize,
    /// Whether a ratio to the reference means something (not for counts that are often
    /// near zero, such as retransmits, nor for context rows).
    pub(crate) ratio: bool,
}

fn def(key: &str, title: &str, better: Better, decimals: usize) -> MetricDef {
    MetricDef {
        key: key.to_owned(),
        title: title.to_owned(),
        better,
        decimals,
        ratio: better != Better::Info,
    }
}

/// A row shown without ratios.
fn no_ratio(mut d: MetricDef) -> MetricDef {
    d.ratio = false;
    d
}

/// JSON key of the daemon CPU (both trees) per UDP packet the iperf3 server received, µs.
pub(crate) const UDP_CPU_KEY: &str = "cpu_us_per_pkt_udp";

/// JSON key of the idle-RSS metric with `n` configured peers.
pub(crate) fn rss_key(n: u32) -> String {
    format!("rss_idle_{n}_peers_mib")
}

/// JSON key of the idle-PSS metric with `n` configured peers.
pub(crate) fn pss_key(n: u32) -> String {
    format!("pss_idle_{n}_peers_mib")
}

/// `10000` → `10,000`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every metric, in table order; the idle-RSS rows follow `rss_peers`.
pub(crate) fn metric_defs(rss_peers: &[u32]) -> Vec<MetricDef> {
    use Better::{Higher, Info, Lower};
    let mut v = vec![
        def("tcp1_mbps", "TCP 1 stream, Mbit/s", Higher, 1),
        no_ratio(def(
            "tcp1_retransmits",
            "TCP 1 stream, retransmits",
            Lower,
            0,
        )),
        def("tcp4_mbps", "TCP 4 streams, Mbit/s", Higher, 1),
        no_ratio(def(
            "tcp4_retransmits",
            "TCP 4 streams, retransmits",
            Lower,
            0,
        )),
        def("udp_rx_kpps", "UDP 64 B, received kpackets/s", Higher, 1),
        def("udp_loss_pct", "UDP 64 B, loss %", Info, 1),
        def("ping_idle_ms", "ping idle, avg ms", Lower, 3),
        def("ping_load_ms", "ping during TCP 1 stream, avg ms", Lower, 2),
        def(
            "ping_paced_ms",
            "ping during TCP 1 stream at --paced-rate, avg ms",
            Lower,
            3,
        ),
        def(
            "tcp1paced_mbps",
            "TCP 1 stream at --paced-rate, Mbit/s",
            Higher,
            1,
        ),
        no_ratio(def(
            "tcp1paced_retransmits",
            "TCP 1 stream at --paced-rate, retransmits",
            Lower,
            0,
        )),
        def("first_ping_ms", "first ping incl. handshake, ms", Lower, 2),
        def(
            "hs_per_s",
            "handshakes completed by responder, /s",
            Higher,
            0,
        ),
        def("hs_cpu_ms", "responder CPU per handshake, ms", Lower, 3),
        def(
            "hs_lost",
            "handshake initiations unanswered within 1 s",
            Lower,
            0,
        ),
        def(
            "cpu_s_per_gb_tcp1",
            "daemon CPU s per GB, TCP 1 stream",
            Lower,
            2,
        ),
        def(
            "cpu_s_per_gb_tcp4",
            "daemon CPU s per GB, TCP 4 streams",
            Lower,
            2,
        ),
        def(
            UDP_CPU_KEY,
            "daemon CPU per UDP 64 B packet received, us",
            Lower,
            2,
        ),
    ];
    for &n in rss_peers {
        v.push(MetricDef {
            key: rss_key(n),
            title: format!("RSS idle, {} peers, MiB", thousands(u64::from(n))),
            better: Lower,
            decimals: 1,
            ratio: true,
        });
        v.push(MetricDef {
            key: pss_key(n),
            title: format!(
                "PSS idle, {} peers, MiB (shared pages split)",
                thousands(u64::from(n))
            ),
            better: Lower,
            decimals: 1,
            ratio: true,
        });
    }
    if let Some(&max) = rss_peers.iter().max()
        && max > 0
    {
        v.push(MetricDef {
            key: "setconf_max_s".to_owned(),
            title: format!("wg setconf of {} peers, s", thousands(u64::from(max))),
            better: Lower,
            decimals: 2,
            ratio: true,
        });
    }
    v.extend([
        def(
            "peak_rss_proc_mib",
            "peak RSS under load, largest process, MiB",
            Lower,
            1,
        ),
        def(
            "peak_rss_daemon_mib",
            "peak RSS under load, one daemon (all processes), MiB",
            Lower,
            1,
        ),
        def("startup_ms", "start -> UAPI socket answers, ms", Lower, 1),
        def(
            "busy_tcp1_cores",
            "machine busy during TCP 1 stream, cores",
            Info,
            2,
        ),
        def(
            "cpu_s_per_gb_tcp1paced",
            "daemon CPU s per GB, TCP 1 stream at --paced-rate",
            Lower,
            2,
        ),
        def(
            "busy_tcp1paced_cores",
            "machine busy during TCP 1 stream at --paced-rate, cores",
            Info,
            2,
        ),
    ]);
    v
}

/// Peak RSS of one process of a daemon's tree.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ProcPeak {
    /// Tunnel side (`a` or `b`).
    pub(crate) side: String,
    /// `comm@depth` (depth 0 is the process we started).
    pub(crate) name: String,
    pub(crate) vm_hwm_kib: u64,
}

/// One implementation in one round.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) round: u32,
    pub(crate) label: String,
    pub(crate) values: BTreeMap<String, f64>,
    /// VmHWM of every daemon process at the end of the loaded tests.
    pub(crate) procs: Vec<ProcPeak>,
    /// Raw details (iperf3 figures, handshake-flood counters, …) for the JSON.
    pub(crate) details: serde_json::Map<String, Value>,
    /// Why (part of) this trial failed, with `--keep-going`.
    pub(crate) errors: Vec<String>,
}

/// Median of the finite values; `None` if there are none.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    })
}

/// `value / reference`, if both exist and the reference is not zero.
pub(crate) fn ratio(value: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (value, reference) {
        (Some(v), Some(r)) if r != 0.0 && v.is_finite() && r.is_finite() => Some(v / r),
        _ => None,
    }
}

/// Everything a run produced, in memory.
#[derive(Debug)]
pub(crate) struct Results {
    /// Implementation labels in column order.
    pub(crate) labels: Vec<String>,
    /// The label ratios are computed against.
    pub(crate) reference: String,
    pub(crate) metrics: Vec<MetricDef>,
    pub(crate) samples: Vec<Sample>,
}

impl Results {
    /// All samples of `label` for `key`.
    pub(crate) fn values(&self, label: &str, key: &str) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.label == label)
            .filter_map(|s| s.values.get(key).copied())
            .collect()
    }

    /// Median of `label`'s samples for `key`.
    pub(crate) fn median(&self, label: &str, key: &str) -> Option<f64> {
        median(&self.values(label, key))
    }

    /// The metrics with at least one value (others are left out of the tables).
    fn shown_metrics(&self) -> Vec<&MetricDef> {
        self.metrics
            .iter()
            .filter(|m| self.labels.iter().any(|l| self.median(l, &m.key).is_some()))
            .collect()
    }

    /// Table cells: for each shown metric, its title and one cell per label.
    fn cells(&self) -> Vec<(String, Vec<String>)> {
        self.shown_metrics()
            .into_iter()
            .map(|m| {
                let reference = self.median(&self.reference, &m.key);
                let cells = self
                    .labels
                    .iter()
                    .map(|l| {
                        let v = self.median(l, &m.key);
                        let Some(value) = v else {
                            return "-".to_owned();
                        };
                        let mut s = format!("{value:.prec$}", prec = m.decimals);
                        if m.ratio
                            && *l != self.reference
                            && let Some(r) = ratio(v, reference)
                        {
                            let _ = write!(s, " (x{r:.2})");
                        }
                        s
                    })
                    .collect();
                (format!("{}{}", m.title, m.better.mark()), cells)
            })
            .collect()
    }

    /// The table for the terminal: one row per metric, one column per implementation,
    /// `median (xRATIO)` with the ratio to the reference implementation.
    pub(crate) fn render_text(&self) -> String {
        let rows = self.cells();
        let width = |s: &str| s.chars().count();
        let first = rows
            .iter()
            .map(|(t, _)| width(t))
            .chain([width("metric")])
            .max()
            .unwrap_or(0);
        let cols: Vec<usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                rows.iter()
                    .map(|(_, c)| c.get(i).map_or(0, |s| width(s)))
                    .chain([width(l)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(width(s))));
        let lpad = |s: &str, w: usize| format!("{}{s}", " ".repeat(w.saturating_sub(width(s))));
        let _ = write!(out, "{}", pad("metric", first));
        for (l, w) in self.labels.iter().zip(&cols) {
            let _ = write!(out, "  {}", lpad(l, *w));
        }
        out.push('\n');
        for (title, cells) in &rows {
            let _ = write!(out, "{}", pad(title, first));
            for (c, w) in cells.iter().zip(&cols) {
                let _ = write!(out, "  {}", lpad(c, *w));
            }
            out.push('\n');
        }
        out
    }

    /// The same table in Markdown.
    pub(crate) fn render_markdown_table(&self) -> String {
        let mut out = String::from("| metric |");
        for l in &self.labels {
            let _ = write!(out, " {l} |");
        }
        out.push_str("\n|---|");
        for _ in &self.labels {
            out.push_str("---:|");
        }
        out.push('\n');
        for (title, cells) in self.cells() {
            let _ = write!(out, "| {title} |");
            for c in cells {
                let _ = write!(out, " {c} |");
            }
            out.push('\n');
        }
        out
    }

    /// Peak RSS (VmHWM) of each process under load: for every label and process name,
    /// the largest value over rounds and both tunnel ends, in MiB.
    pub(crate) fn process_peaks(&self) -> Vec<(String, Vec<(String, f64)>)> {
        self.labels
            .iter()
            .filter_map(|l| {
                let mut peaks: BTreeMap<String, u64> = BTreeMap::new();
                for s in self.samples.iter().filter(|s| &s.label == l) {
                    for p in &s.procs {
                        let e = peaks.entry(p.name.clone()).or_default();
                        *e = (*e).max(p.vm_hwm_kib);
                    }
                }
                if peaks.is_empty() {
                    return None;
                }
                #[allow(clippy::cast_precision_loss)] // KiB counts are far below 2^52
                let list = peaks
                    .into_iter()
                    .map(|(n, kib)| (n, kib as f64 / 1024.0))
                    .collect();
                Some((l.clone(), list))
            })
            .collect()
    }

    /// `label: name 3.2 MiB, name 12.0 MiB` lines, flagging processes over `limit_mib`.
    pub(crate) fn render_process_peaks(&self, limit_mib: f64) -> String {
        let mut out = String::new();
        for (label, list) in self.process_peaks() {
            let items: Vec<String> = list
                .iter()
                .map(|(n, mib)| {
                    let flag = if *mib >= limit_mib { " OVER" } else { "" };
                    format!("{n} {mib:.1} MiB{flag}")
                })
                .collect();
            let _ = writeln!(out, "  {label}: {}", items.join(", "));
        }
        out
    }

    /// All samples, medians and ratios as JSON; `meta` is merged in at the top level.
    pub(crate) fn to_json(&self, meta: &serde_json::Map<String, Value>) -> Value {
        let samples: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                json!({
                    "round": s.round,
                    "implementation": s.label,
                    "values": s.values,
                    "peak_rss_processes": s.procs.iter().map(|p| json!({
                        "side": p.side, "process": p.name, "vm_hwm_kib": p.vm_hwm_kib,
                    })).collect::<Vec<_>>(),
                    "details": s.details,
                    "errors": s.errors,
                })
            })
            .collect();
        let mut medians = serde_json::Map::new();
        let mut ratios = serde_json::Map::new();
        for l in &self.labels {
            let mut m = serde_json::Map::new();
            let mut r = serde_json::Map::new();
            for d in &self.metrics {
                let v = self.median(l, &d.key);
                if let Some(v) = v {
                    m.insert(d.key.clone(), json!(v));
                }
                if let Some(x) = ratio(v, self.median(&self.reference, &d.key))
                    && d.ratio
                {
                    r.insert(d.key.clone(), json!(x));
                }
            }
            medians.insert(l.clone(), Value::Object(m));
            ratios.insert(l.clone(), Value::Object(r));
        }
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|d| json!({"key": d.key, "title": d.title, "better": d.better.name()}))
            .collect();
        let mut top = meta.clone();
        top.insert("implementations".into(), json!(self.labels));
        top.insert("ratio_reference".into(), json!(self.reference));
        top.insert("metrics".into(), Value::Array(metrics));
        top.insert("medians".into(), Value::Object(medians));
        top.insert("ratios".into(), Value::Object(ratios));
        top.insert("samples".into(), Value::Array(samples));
        Value::Object(top)
    }
}

/// Writes `results.json` and `results.md` into `dir`; returns their paths.
pub(crate) fn write_files(
    dir: &Path,
    results: &Results,
    meta: &serde_json::Map<String, Value>,
    markdown_header: &str,
) -> Result<(PathBuf, PathBuf)> {
    let json_path = dir.join("results.json");
    let md_path = dir.join("results.md");
    let json = serde_json::to_string_pretty(&results.to_json(meta))
        .context("could not serialize the results")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    let mut md = markdown_header.to_owned();
    md.push('\n');
    md.push_str(&results.render_markdown_table());
    let peaks = results.process_peaks();
    if !peaks.is_empty() {
        md.push_str(
            "\nPeak RSS (VmHWM) per process under load, largest over rounds and both ends:\n\n",
        );
        for (label, list) in peaks {
            let items: Vec<String> = list
                .iter()
                .map(|(n, mib)| format!("`{n}` {mib:.1} MiB"))
                .collect();
            let _ = writeln!(md, "- {label}: {}", items.join(", "));
        }
    }
    let failures: Vec<String> = results
        .samples
        .iter()
        .flat_map(|s| {
            s.errors.iter().map(move |e| {
                format!(
                    "- round {} {}: {}",
                    s.round,
                    s.label,
                    e.lines().next().unwrap_or_default()
                )
            })
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\nFailures:\n\n");
        md.push_str(&failures.join("\n"));
        md.push('\n');
    }
    std::fs::write(&md_path, md)
        .with_context(|| format!("could not write {}", md_path.display()))?;
    Ok((json_path, md_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: u32, label: &str, kv: &[(&str, f64)]) -> Sample {
        Sample {
            round,
            label: label.to_owned(),
            values: kv.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..Sample::default()
        }
    }

    fn results() -> Results {
        Results {
            labels: vec!["wireguard-rs".into(), "wireguard-go".into()],
            reference: "wireguard-rs".into(),
            metrics: metric_defs(&[0, 10_000]),
            samples: vec![
                sample(
                    1,
                    "wireguard-rs",
                    &[("tcp1_mbps", 800.0), ("ping_idle_ms", 0.2)],
                ),
                sample(1, "wireguard-go", &[("tcp1_mbps", 400.0)]),
                sample(2, "wireguard-rs", &[("tcp1_mbps", 1000.0)]),
                sample(2, "wireguard-go", &[("tcp1_mbps", 500.0)]),
                sample(3, "wireguard-rs", &[("tcp1_mbps", 900.0)]),
            ],
        }
    }

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_needs_both_and_nonzero_reference() {
        assert_eq!(ratio(Some(2.0), Some(4.0)), Some(0.5));
        assert_eq!(ratio(None, Some(4.0)), None);
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
    }

    #[test]
    fn medians_per_label() {
        let r = results();
        assert_eq!(r.median("wireguard-rs", "tcp1_mbps"), Some(900.0));
        assert_eq!(r.median("wireguard-go", "tcp1_mbps"), Some(450.0));
        assert_eq!(r.median("wireguard-go", "ping_idle_ms"), None);
    }

    #[test]
    fn text_table_has_ratios_and_skips_empty_rows() {
        let text = results().render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("metric"));
        assert!(lines[0].ends_with("wireguard-go"));
        assert!(lines[1].starts_with("TCP 1 stream, Mbit/s (+)"));
        assert!(lines[1].contains("900.0"));
        assert!(lines[1].ends_with("450.0 (x0.50)"), "{}", lines[1]);
        assert!(lines[2].contains("0.200") && lines[2].ends_with('-'));
        // Columns line up.
        let w: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(w.iter().all(|x| *x == w[0]), "{text}");
    }

    #[test]
    fn counts_get_no_ratio() {
        let mut r = results();
        r.samples[0].values.insert("tcp1_retransmits".into(), 1.0);
        r.samples[1]
            .values
            .insert("tcp1_retransmits".into(), 5000.0);
        let text = r.render_text();
        let line = text
            .lines()
            .find(|l| l.starts_with("TCP 1 stream, retransmits"))
            .unwrap();
        assert!(line.ends_with("5000") && !line.contains("(x"), "{line}");
        let v = r.to_json(&serde_json::Map::new());
        assert!(
            v["ratios"]["wireguard-go"]
                .get("tcp1_retransmits")
                .is_none()
        );
    }

    #[test]
    fn udp_cpu_per_packet_row_has_ratios_everywhere() {
        let mut r = results();
        r.samples[0].values.insert(UDP_CPU_KEY.into(), 4.0);
        r.samples[2].values.insert(UDP_CPU_KEY.into(), 6.0);
        r.samples[1].values.insert(UDP_CPU_KEY.into(), 10.0);
        let m = r.metrics.iter().find(|m| m.key == UDP_CPU_KEY).unwrap();
        assert!(m.ratio && m.better == Better::Lower);
        let text = r.render_text();
        let line = text
            .lines()
            .find(|l| l.starts_with("daemon CPU per UDP 64 B packet received, us (-)"))
            .unwrap();
        assert!(
            line.contains("5.00") && line.ends_with("10.00 (x2.00)"),
            "{line}"
        );
        assert!(r.render_markdown_table().contains(
            "| daemon CPU per UDP 64 B packet received, us (-) | 5.00 | 10.00 (x2.00) |"
        ));
        let v = r.to_json(&serde_json::Map::new());
        assert_eq!(v["medians"]["wireguard-rs"][UDP_CPU_KEY], json!(5.0));
        assert_eq!(v["ratios"]["wireguard-go"][UDP_CPU_KEY], json!(2.0));
    }

    #[test]
    fn markdown_table_shape() {
        let md = results().render_markdown_table();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| metric | wireguard-rs | wireguard-go |");
        assert_eq!(lines[1], "|---|---:|---:|");
        assert_eq!(
            lines[2],
            "| TCP 1 stream, Mbit/s (+) | 900.0 | 450.0 (x0.50) |"
        );
    }

    #[test]
    fn json_has_samples_medians_and_ratios() {
        let v = results().to_json(&serde_json::Map::new());
        assert_eq!(v["medians"]["wireguard-go"]["tcp1_mbps"], json!(450.0));
        assert_eq!(v["ratios"]["wireguard-go"]["tcp1_mbps"], json!(0.5));
        assert_eq!(v["samples"].as_array().map(Vec::len), Some(5));
        assert_eq!(v["ratio_reference"], json!("wireguard-rs"));
    }

    #[test]
    fn metric_rows_follow_peer_counts() {
        let keys: Vec<String> = metric_defs(&[0, 1000]).into_iter().map(|m| m.key).collect();
        assert!(keys.contains(&"rss_idle_0_peers_mib".to_owned()));
        assert!(keys.contains(&"rss_idle_1000_peers_mib".to_owned()));
        assert!(keys.contains(&"setconf_max_s".to_owned()));
        // The paced TCP test's figures (the keys `tcp_run`'s caller inserts).
        for key in [
            "tcp1paced_mbps",
            "tcp1paced_retransmits",
            "ping_paced_ms",
            "cpu_s_per_gb_tcp1paced",
            "busy_tcp1paced_cores",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key}");
        }
        assert!(!metric_defs(&[0]).iter().any(|m| m.key == "setconf_max_s"));
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn process_peaks_take_the_maximum() {
        let mut r = results();
        r.samples[0].procs = vec![
            ProcPeak {
                side: "a".into(),
                name: "datad@2".into(),
                vm_hwm_kib: 2048,
            },
            ProcPeak {
                side: "b".into(),
                name: "datad@2".into(),
                vm_hwm_kib: 40 * 1024,
            },
        ];
        let peaks = r.process_peaks();
        assert_eq!(peaks.len(), 1);
        assert_eq!(peaks[0].1, vec![("datad@2".to_owned(), 40.0)]);
        assert!(r.render_process_peaks(32.0).contains("40.0 MiB OVER"));
    }
}
