//! The benchmark's report: reads what each step wrote into the output folder, prints the table
//! (messages/s, peak RSS) and the ratios, checks the targets, and writes it all to `results.json`.
//!
//! Rates: A, B, C and the RSS run are timed from process start until the queue was seen empty
//! (so the drain mode's final empty polls do not count, for any of them); D is the COPY
//! transactions alone; E is the engine's own pipeline time (start of reading to last commit).
//! DO and EO are D and E for specs/orders.yaml (two upsert outputs), on order messages.
//! BL and CL (optional) repeat B and C through a proxy that adds latency to every SQS call, and
//! AL is A through it with 32 loops (the yardstick for BL).
//! RL is the RSS run again on a queue of ~256 KiB bodies (the byte budget's memory check).
//! With `--only ROWS` (meta `only`, comma-separated keys) only those rows are reported.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;

fn read(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn num(v: &Option<Value>, key: &str) -> Option<f64> {
    v.as_ref()?.get(key)?.as_f64()
}

/// One measured line of the table.
struct Line {
    key: &'static str,
    what: &'static str,
    messages: f64,
    secs: Option<f64>,
    rss_kb: Option<f64>,
}

impl Line {
    fn rate(&self) -> Option<f64> {
        self.secs.filter(|s| *s > 0.0).map(|s| self.messages / s)
    }
}

/// Prints and writes the report; exit code 1 when a target that was measured is missed.
pub fn report(dir: &Path) -> Result<u8> {
    let meta = read(dir, "meta.json").context("meta.json missing: run scripts/bench.sh")?;
    let n = meta["messages"].as_f64().unwrap_or(0.0);
    let m = meta["rss_messages"].as_f64().unwrap_or(0.0);
    let c_n = meta["reference_messages"].as_f64().unwrap_or(n);

    let (a, am) = (read(dir, "a.json"), read(dir, "a-measure.json"));
    let bm = read(dir, "b-measure.json");
    let cm = read(dir, "c-measure.json");
    let d = read(dir, "d.json");
    let (em, es) = (read(dir, "e-measure.json"), read(dir, "e-summary.json"));
    let (d_o, eom, eos) = (
        read(dir, "do.json"),
        read(dir, "eo-measure.json"),
        read(dir, "eo-summary.json"),
    );
    let o_n = meta["order_messages"].as_f64().unwrap_or(0.0);
    let rm = read(dir, "r-measure.json");
    let (blm, clm) = (read(dir, "bl-measure.json"), read(dir, "cl-measure.json"));
    let (al, alm) = (read(dir, "al.json"), read(dir, "al-measure.json"));
    let lat_n = meta["latency_messages"].as_f64().unwrap_or(0.0);
    let rlm = read(dir, "rl-measure.json");
    let rl_n = meta["large_body_messages"].as_f64().unwrap_or(0.0);
    // `--only ROWS`: nothing but those rows was run.
    let only: Option<Vec<String>> = meta["only"]
        .as_str()
        .map(|o| o.split(',').map(str::to_string).collect());
    let wanted = |key: &str| only.as_ref().is_none_or(|o| o.iter().any(|k| k == key));

    let lines: Vec<Line> = [
        Line {
            key: "A",
            what: "SQS ceiling: receive(10) + DeleteMessageBatch, no processing (Rust, aws-sdk-sqs)",
            messages: num(&a, "messages").unwrap_or(n),
            secs: num(&am, "drained_secs").or(num(&a, "secs")),
            rss_kb: num(&am, "peak_rss_kb"),
        },
        Line {
            key: "B",
            what: "etl-engine run --drain: SQS -> hash + vault + casts -> Postgres",
            messages: n,
            secs: num(&bm, "drained_secs"),
            rss_kb: num(&bm, "peak_rss_kb"),
        },
        Line {
            key: "C",
            what: "Python reference: boto3 receive 10, hashlib, one INSERT + one delete per message",
            messages: c_n,
            secs: num(&cm, "drained_secs"),
            rss_kb: num(&cm, "peak_rss_kb"),
        },
        Line {
            key: "D",
            what: "Postgres ceiling: binary COPY of the final target, vault, ledger and reject rows",
            messages: num(&d, "messages").unwrap_or(n),
            secs: num(&d, "secs"),
            rss_kb: None,
        },
        Line {
            key: "E",
            what: "etl-engine run: JSON Lines file -> same transforms -> Postgres",
            messages: n,
            secs: num(&es, "elapsed_secs"),
            rss_kb: num(&em, "peak_rss_kb"),
        },
        Line {
            key: "DO",
            what: "D for orders: binary COPY of the final orders, order_items, vault, ledger rows",
            messages: num(&d_o, "messages").unwrap_or(o_n),
            secs: num(&d_o, "secs"),
            rss_kb: None,
        },
        Line {
            key: "EO",
            what: "E for orders: file -> orders + order_items (upsert, only_if_newer)",
            messages: o_n,
            secs: num(&eos, "elapsed_secs"),
            rss_kb: num(&eom, "peak_rss_kb"),
        },
        Line {
            key: "R",
            what: "etl-engine run --drain on a deep queue (memory check)",
            messages: m,
            secs: num(&rm, "drained_secs"),
            rss_kb: num(&rm, "peak_rss_kb"),
        },
        Line {
            key: "RL",
            what: "etl-engine run --drain on 255 KiB bodies (byte budget memory check)",
            messages: rl_n,
            secs: num(&rlm, "drained_secs"),
            rss_kb: num(&rlm, "peak_rss_kb"),
        },
        Line {
            key: "BL",
            what: "B through a proxy adding latency to every SQS call (see meta)",
            messages: lat_n,
            secs: num(&blm, "drained_secs"),
            rss_kb: num(&blm, "peak_rss_kb"),
        },
        Line {
            key: "AL",
            what: "A through the same proxy, 32 loops (what the endpoint serves at that latency)",
            messages: num(&al, "messages").unwrap_or(lat_n),
            secs: num(&alm, "drained_secs").or(num(&al, "secs")),
            rss_kb: None,
        },
        Line {
            key: "CL",
            what: "C through the same proxy",
            messages: lat_n,
            secs: num(&clm, "drained_secs"),
            rss_kb: num(&clm, "peak_rss_kb"),
        },
    ]
    .into_iter()
    .filter(|l| wanted(l.key))
    .collect();
    let rate = |k: &str| lines.iter().find(|l| l.key == k).and_then(Line::rate);
    let ratio = |x: &str, y: &str| Some(rate(x)? / rate(y)?);

    println!();
    println!(
        "{:<3} {:<84} {:>9} {:>8} {:>10} {:>10}",
        "", "measurement", "messages", "secs", "msgs/s", "peak RSS"
    );
    for l in lines.iter().filter(|l| l.messages > 0.0) {
        let secs = l
            .secs
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "-".into());
        let r = l
            .rate()
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "skipped".into());
        let rss = l
            .rss_kb
            .map(|k| format!("{:.1} MB", k / 1024.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<3} {:<84} {:>9} {:>8} {:>10} {:>10}",
            l.key, l.what, l.messages, secs, r, rss
        );
    }

    let r_rss_mb = num(&rm, "peak_rss_kb").map(|k| k / 1024.0);
    let rl_rss_mb = num(&rlm, "peak_rss_kb").map(|k| k / 1024.0);
    let checks = [
        (
            "B/A",
            ratio("B", "A"),
            0.9,
            true,
            "the engine keeps up with what the endpoint serves",
        ),
        (
            "BL/AL",
            ratio("BL", "AL"),
            0.8,
            true,
            "pollers: auto finds the concurrency a remote endpoint needs",
        ),
        (
            "B/C",
            ratio("B", "C"),
            5.0,
            true,
            "the engine against the usual Python script",
        ),
        (
            "E/D",
            ratio("E", "D"),
            0.8,
            true,
            "the engine's own overhead against Postgres's own work",
        ),
        (
            "EO/DO",
            ratio("EO", "DO"),
            0.7,
            true,
            "the same with two upsert outputs",
        ),
        (
            "peak RSS (MB) draining R",
            r_rss_mb,
            100.0,
            false,
            "memory stays flat under a deep backlog",
        ),
        (
            "peak RSS (MB) draining RL",
            rl_rss_mb,
            300.0,
            false,
            "the byte budget bounds memory with large bodies",
        ),
    ];
    println!();
    // The engine's CPU per message for E: what the file source and the sink cost the engine.
    let e_cpu_us = num(&em, "cpu_secs")
        .filter(|_| n > 0.0)
        .map(|c| c / n * 1e6);
    if let Some(us) = e_cpu_us {
        println!(
            "{:<26} {us:>8.1}  (informational: user+sys CPU of the engine in E per message)",
            "E CPU us/msg"
        );
    }
    if let Some(r) = ratio("BL", "CL") {
        let ms = meta["latency_ms_each_way"].as_f64().unwrap_or(0.0);
        println!(
            "{:<26} {r:>8.2}  (informational: B/C with {} ms added to every SQS round trip)",
            "BL/CL",
            2.0 * ms
        );
    }
    let mut missed = 0;
    let mut targets = Vec::new();
    for (name, value, target, at_least, why) in checks {
        // With --only, a target whose rows were not all run is not listed.
        if only.is_some() && value.is_none() {
            continue;
        }
        let (shown, verdict) = match value {
            Some(v) => {
                let ok = if at_least { v >= target } else { v <= target };
                if !ok {
                    missed += 1;
                }
                (format!("{v:.2}"), if ok { "ok" } else { "MISSED" })
            }
            None => ("-".into(), "not measured"),
        };
        let op = if at_least { ">=" } else { "<=" };
        println!("{name:<26} {shown:>8}  target {op} {target:<6} {verdict:<12} ({why})");
        targets.push(json!({"name": name, "value": value, "target": target, "at_least": at_least, "pass": value.map(|_| verdict == "ok")}));
    }

    let results = json!({
        "meta": meta,
        "measurements": lines.iter().map(|l| json!({
            "key": l.key, "what": l.what, "messages": l.messages, "secs": l.secs,
            "messages_per_sec": l.rate().map(f64::round), "peak_rss_mb": l.rss_kb.map(|k| (k / 1024.0 * 10.0).round() / 10.0),
        })).collect::<Vec<_>>(),
        "ratios": {"B/A": ratio("B", "A"), "B/C": ratio("B", "C"), "E/D": ratio("E", "D"), "EO/DO": ratio("EO", "DO"), "BL/CL": ratio("BL", "CL"), "BL/AL": ratio("BL", "AL")},
        "e_cpu_us_per_msg": e_cpu_us,
        "targets": targets,
        "details": {"a": a, "a_measure": am, "b_measure": bm, "b_summary": read(dir, "b-summary.json"), "b_check": read(dir, "b-check.json"),
                    "c_measure": cm, "c_check": read(dir, "c-check.json"), "d": d, "e_measure": em, "e_summary": es,
                    "e_check": read(dir, "e-check.json"), "do": d_o, "eo_measure": eom, "eo_summary": eos,
                    "eo_check": read(dir, "eo-check.json"), "r_measure": rm, "r_summary": read(dir, "r-summary.json"),
                    "r_check": read(dir, "r-check.json"), "bl_measure": blm, "bl_summary": read(dir, "bl-summary.json"),
                    "cl_measure": clm, "al": al, "al_measure": alm, "rl_measure": rlm, "rl_summary": read(dir, "rl-summary.json"),
                    "rl_check": read(dir, "rl-check.json")},
    });
    let out = dir.join("results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nWrote {}", out.display());
    Ok(if missed > 0 { 1 } else { 0 })
}
