/// mimalloc instead of glibc malloc: Arrow and DataFusion allocate and free many short-lived
/// buffers across threads, and under glibc a fifth of `bench mcp`'s CPU went to malloc/free
/// (`perf record` on `millstream bench mcp --clients 100`). The `system-alloc` feature keeps
/// glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    millstream::cli::main()
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its arenas
/// (`madvise(MADV_HUGEPAGE)`), and a 2 MiB page stays resident while any 4 KiB of it is in
/// use, so memory freed in small pieces is not given back: `bench mcp --clients 100` peaked
/// at 1.75 GB with them and 1.39 GB without (one run each); `bench ingest` ran as fast either
/// way. The flag
/// covers mappings made before this call too (the kernel checks it at each fault).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a process flag.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
