//! The binary runs on jemalloc with the options `src/main.rs` compiles in. They are read from
//! a symbol jemalloc looks up by name, so a renamed symbol or a dropped allocator would go
//! unnoticed (the process runs either way, on glibc's malloc or jemalloc's defaults, with
//! 10 s instead of 250 ms of freed memory kept resident).

use std::process::Command;

/// jemalloc prints its effective options at exit when asked through the environment; the
/// environment only adds `stats_print`, so the options shown are the compiled-in ones.
#[test]
fn the_binary_runs_on_jemalloc_with_the_compiled_in_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_millstream"))
        .arg("--version")
        .env(
            "_RJEM_MALLOC_CONF",
            "stats_print:true,stats_print_opts:mdablxe",
        )
        .output()
        .expect("run millstream --version");
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 250",
        "opt.muzzy_decay_ms: 0",
        "opt.percpu_arena: \"percpu\"",
    ] {
        assert!(
            stats.contains(option),
            "jemalloc's exit statistics lack {option:?}:\n{}",
            stats.lines().take(60).collect::<Vec<_>>().join("\n")
        );
    }
}

/// `/metrics` of the binary reports the whole process's resident memory and jemalloc's counts
/// of the Rust heap, so an operator can tell the heap from the rest (librdkafka's memory, the
/// embedded broker's log, stacks, code): 0 < allocated ≤ heap resident ≤ process resident.
#[tokio::test]
async fn metrics_tell_the_rust_heap_from_the_whole_process() {
    let _w = crate::support::watchdog("memory metrics", std::time::Duration::from_secs(60));
    let lake = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_millstream"))
        .arg("--lakehouse")
        .arg(lake.path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("MILLSTREAM__KNOWLEDGE__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = crate::support::serve_url(&mut child)
        .trim_end_matches("/mcp")
        .to_string();
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    };
    let allocated = gauge("millstream_heap_allocated_bytes");
    let heap = gauge("millstream_heap_resident_bytes");
    let process = gauge("millstream_process_resident_bytes");
    assert!(
        0.0 < allocated && allocated <= heap && heap <= process,
        "allocated {allocated}, heap resident {heap}, process resident {process}"
    );
}
