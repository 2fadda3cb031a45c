/// mimalloc instead of glibc malloc: Arrow and DataFusion allocate and free many short-lived
/// buffers across threads, and under glibc a fifth of `bench mcp`'s CPU went to malloc/free
/// (`perf record` on `millstream bench mcp --clients 100`). The `system-alloc` feature keeps
/// glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    millstream::cli::main()
}
