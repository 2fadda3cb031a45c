//! The operations page's figures, read from the same Prometheus registry `/metrics` renders,
//! and the hexdump of a dead letter's raw bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Samples of the ingest counter, for the rate over the last [`RATE_WINDOW`].
static SAMPLES: Mutex<VecDeque<(Instant, f64)>> = Mutex::new(VecDeque::new());
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Sums of each metric family by name (labels summed over), from a Prometheus text rendering.
/// Histograms contribute `<name>_sum` and `<name>_count`.
fn families(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_default() += v;
        }
    }
    out
}

/// Throughput, consumer lag, dead letters, commits and serving freshness in this process.
pub fn pipeline() -> Value {
    let m = families(&crate::telemetry::render());
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let events = get("millstream_events_in_total");
    let now = Instant::now();
    let rate = {
        let mut samples = SAMPLES.lock().expect("poisoned");
        samples.push_back((now, events));
        while samples.len() > 2 && now - samples[0].0 > RATE_WINDOW {
            samples.pop_front();
        }
        let (t0, e0) = samples[0];
        let dt = (now - t0).as_secs_f64();
        (dt >= 0.5).then(|| ((events - e0) / dt).max(0.0))
    };
    let visible_count = get("millstream_catalog_visible_seconds_count");
    json!({
        "events_in": events,
        "events_per_second": rate,
        "consumer_lag": get("millstream_consumer_lag"),
        "dead_letters": get("millstream_dead_letters_total"),
        "commits": get("millstream_commits_total"),
        "commit_conflicts": get("millstream_commit_conflicts_total"),
        "duplicates_dropped": get("millstream_duplicates_dropped_total"),
        "alerts_published": get("millstream_alerts_published_total"),
        "visible_mean_ms": (visible_count > 0.0)
            .then(|| get("millstream_catalog_visible_seconds_sum") / visible_count * 1000.0),
        "task_restarts": get("millstream_task_restarts_total"),
    })
}

/// `encoded` (bytes as hex) as a classic hexdump: offset, 16 bytes, printable ASCII.
pub fn hexdump(encoded: &str) -> String {
    hex::decode(encoded)
        .unwrap_or_default()
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hexes: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = chunk
                .iter()
                .map(|&b| {
                    if (0x20..0x7f).contains(&b) {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{:08x}  {:<47}  |{ascii}|", i * 16, hexes.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hexdump_shows_offsets_bytes_and_printable_text() {
        let dump = hexdump(&"7b2278223a00ff".repeat(3));
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("00000000  7b 22 78 22 3a 00 ff 7b"));
        assert!(lines[0].ends_with("|{\"x\":..{\"x\":..{\"|"));
        assert!(lines[1].starts_with("00000010  78 22 3a 00 ff"));
    }

    #[test]
    fn metric_families_sum_over_labels() {
        let text = "# HELP x\nmillstream_events_in_total{topic=\"a\"} 3\nmillstream_events_in_total{topic=\"b\"} 4\nmillstream_consumer_lag 2\n";
        let m = families(text);
        assert_eq!(m["millstream_events_in_total"], 7.0);
        assert_eq!(m["millstream_consumer_lag"], 2.0);
    }
}
