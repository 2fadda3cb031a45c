/// jemalloc instead of glibc malloc: Arrow and DataFusion allocate and free many short-lived
/// buffers across threads, and under glibc a fifth of `bench mcp`'s CPU went to malloc/free
/// (`perf record` on `millstream bench mcp --clients 100`). jemalloc rather than mimalloc,
/// the allocator before it: as fast on `bench ingest` and `bench mcp`, and it gives freed
/// memory back from a background thread. Under `bench mcp --clients 100 --rate 1` mimalloc
/// kept 1.59 GB resident at peak, jemalloc with [`MALLOC_CONF`] 0.82 GB (medians of 3). The
/// `system-alloc` feature keeps glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read on its first allocation (before `main`); `_RJEM_MALLOC_CONF` in
/// the environment overrides any of them.
/// - `background_thread:true`: a jemalloc thread returns freed pages to the system, so no
///   request or batch pays for the `madvise` calls.
/// - `dirty_decay_ms:250`: freed pages go back after about 250 ms instead of 10 s. The default
///   kept a burst's memory (a history batch, a wave of requests) resident for ten seconds
///   after it ended. 250 ms kept `bench ingest` as fast as 1 s and 10 s did; 0 (return at
///   once, on the freeing thread) cut `bench mcp` to 0.7 GB but raised its p95 by 60 %
///   (single runs).
/// - `muzzy_decay_ms:0`: pages are released with `MADV_DONTNEED` straight away rather than
///   lazily freed first, so RSS shows what the process really holds.
/// - `percpu_arena:percpu`: one arena per CPU, a thread allocating from the arena of the CPU it
///   runs on, instead of four arenas per CPU handed to threads round-robin. Each arena keeps its
///   own partly used pages; with the pipeline's, serve's and DataFusion's many threads spread
///   over eight arenas the heap held about 150 MB more than it had allocated under `up --rate
///   20000` (minutes 5 to 7), over two about 95–110 MB (a 7-minute run and a 30-minute one).
///   The whole process's RSS moves by more than that from run to run (the rest of it, mostly
///   librdkafka's, varied by 35 MB), so single runs do not show the gain in RSS alone.
///   `bench ingest --events 1000000` stayed at 250k vs 247k events/s (medians of 3,
///   interleaved).
#[cfg(not(feature = "system-alloc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 79] =
    b"background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0,percpu_arena:percpu\0";

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    #[cfg(not(feature = "system-alloc"))]
    millstream::telemetry::set_heap_stats(jemalloc_stats);
    millstream::cli::main()
}

/// jemalloc's bytes allocated and resident, refreshed (its counts are cached per epoch).
#[cfg(not(feature = "system-alloc"))]
fn jemalloc_stats() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some((
        stats::allocated::read().ok()? as u64,
        stats::resident::read().ok()? as u64,
    ))
}

/// Turns transparent huge pages off for this process: a 2 MiB huge page stays resident while
/// any 4 KiB of it is in use, so memory freed in small pieces is not given back. Under
/// mimalloc, which asked for them on its arenas, `bench mcp --clients 100` peaked at 1.75 GB
/// with them and 1.39 GB without (one run each), and `bench ingest` ran as fast either way.
/// jemalloc does not ask for them, but a host whose THP setting is `always` would give them
/// anyway. The flag covers mappings made before this call too (the kernel checks it at each
/// fault).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a process flag.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
