//! Where work runs when one process both answers and processes (`millstream up`,
//! `millstream bench mcp`).
//!
//! Answers to people and agents (HTTP, MCP tools, the catalog refresher, the knowledge index's
//! follower) run on the main tokio runtime. Stream processing (the pipeline, the deriver, maintenance, the simulator) runs on
//! [`background`], a second runtime whose threads run at a lower CPU priority. When both want
//! the cores, the kernel serves the answers first; the pipeline catches up within its batch
//! interval, since a burst of requests is short next to it. Kafka clients created on the
//! background runtime start their own threads there, and those inherit the priority too.
//!
//! On a deployment where serving and processing are separate processes this changes nothing:
//! `millstream pipeline` and `millstream serve` each run on their own main runtime.

use std::sync::OnceLock;
use std::time::Duration;

/// How long an idle blocking-pool thread waits for more work before it exits (tokio's default
/// is 10 s). Every file operation of a local lakehouse (`object_store`'s `LocalFileSystem`) is a
/// `spawn_blocking` call, and the Delta kernel builds snapshots on blocking threads that wait for
/// those calls, so bursts of reads start many threads: about 260 under `up --rate 20000`. Each
/// keeps its own allocator cache (jemalloc's thread caches) until it exits. With 4 s, about 200
/// threads and 770 MB RSS against 796 (5-minute runs, one each); 1 s went to 736 MB but made
/// `bench freshness --rate 50000` p99 about 40 ms worse from starting threads again, 4 s did not.
/// Over a 30-minute run the saving did not show in RSS (jemalloc held about 40 MB less, memory
/// outside it about 40 MB more), so this bounds threads, not the process's memory.
/// The pool is not capped instead: a snapshot build waits on blocking calls it starts itself, so
/// a cap that the builds alone can fill deadlocks the runtime (a cap of 16 did, at start).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(4);

/// A multi-thread runtime builder whose idle blocking threads exit soon, as above; every runtime
/// of the process starts from it.
pub(crate) fn builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.thread_keep_alive(BLOCKING_KEEP_ALIVE).enable_all();
    builder
}

/// The nice value of background threads: CFS then weighs a runnable serving thread about ten
/// times as heavily as a background one.
const BACKGROUND_NICE: libc::c_int = 10;

/// The nice value of table maintenance: the lowest, so compaction takes only what ingestion and
/// serving leave (CFS weighs a nice-10 thread about seven times as heavily as a nice-19 one).
const MAINTENANCE_NICE: libc::c_int = 19;

/// The background runtime, started on first use and kept for the life of the process.
pub fn background() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            builder()
                .thread_name("millstream-bg")
                .on_thread_start(|| lower_priority_to(BACKGROUND_NICE))
                .build()
                .expect("background tokio runtime")
        })
        .handle()
}

/// Threads that run callers' SQL ([`crate::governed`]).
const SQL_THREADS: usize = 2;
/// Their stacks: deep enough for the deepest expression `governed::check` lets through,
/// however DataFusion recurses over it (only the pages touched are ever committed).
const SQL_STACK: usize = 64 * 1024 * 1024;

/// The runtime for callers' SQL: its own threads at the background priority, so a heavy query
/// competes with other queries and stream processing, never with the HTTP runtime that answers
/// tools and `/healthz`. Started on first use.
pub fn sql() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            builder()
                .worker_threads(SQL_THREADS)
                .thread_name("millstream-sql")
                .thread_stack_size(SQL_STACK)
                .on_thread_start(|| lower_priority_to(BACKGROUND_NICE))
                .build()
                .expect("sql tokio runtime")
        })
        .handle()
}

/// A thread pool for CPU-bound batch work (embedding documents) of `threads` threads at the
/// background priority.
pub fn background_pool(name: &str, threads: usize) -> std::io::Result<rayon::ThreadPool> {
    let name = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(|_| lower_priority_to(BACKGROUND_NICE))
        .build()
        .map_err(std::io::Error::other)
}

/// The runtime of table maintenance (compaction, checkpoints, vacuum): one thread at the lowest
/// priority. Compacting the small files of streaming commits keeps every commit's cost flat, but
/// run beside the pipeline at the same priority its CPU bursts set the pipeline's tail latency.
/// Started on first use.
pub fn maintenance() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            builder()
                .worker_threads(1)
                .thread_name("millstream-maint")
                .on_thread_start(|| lower_priority_to(MAINTENANCE_NICE))
                .build()
                .expect("maintenance tokio runtime")
        })
        .handle()
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: nice values are per thread).
fn lower_priority_to(nice: libc::c_int) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority only read their integer arguments; setpriority on the
    // calling thread's own id cannot affect memory safety.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower a background thread's priority"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn background_threads_run_at_a_lower_priority() {
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let background = super::background()
            .spawn(async {
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
            })
            .await
            .unwrap();
        assert_eq!(background, (own + super::BACKGROUND_NICE).min(19));
    }

    /// Maintenance runs below the pipeline: at the lowest priority, on its runtime's threads and
    /// on the blocking threads it starts (DataFusion's and Parquet's work in a compaction).
    #[tokio::test]
    async fn maintenance_runs_at_the_lowest_priority() {
        let nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let (worker, blocking) = super::maintenance()
            .spawn(async move {
                let blocking = tokio::task::spawn_blocking(nice).await.unwrap();
                (nice(), blocking)
            })
            .await
            .unwrap();
        assert_eq!(worker, super::MAINTENANCE_NICE);
        assert_eq!(blocking, super::MAINTENANCE_NICE);
    }
}
