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
    ] {
        assert!(
            stats.contains(option),
            "jemalloc's exit statistics lack {option:?}:\n{}",
            stats.lines().take(60).collect::<Vec<_>>().join("\n")
        );
    }
}
