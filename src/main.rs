use clap::Parser;

/// mimalloc rather than the C library's allocator: the server's requests allocate and
/// free many small objects across its worker threads, where glibc's consolidation of
/// freed chunks was about 8% of the CPU under load (`benches/load.sh 64 10`, alternating
/// builds: 14,400-15,500/s became 17,700-18,300/s). The library leaves the choice to the
/// program that links it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs before `main` and before the first allocation (a constructor in
/// `.init_array`), which is when mimalloc reserves its first arena: an option set
/// later does not apply to that arena.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

/// mimalloc's `mi_option_arena_eager_commit` (option 4 of the mimalloc 3 that
/// `libmimalloc-sys` 0.1.49, pinned, builds; the crate's constants predate it).
#[cfg(target_os = "linux")]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Arenas committed on demand, not whole: with eager commit, memory freed after the
/// first start's compilation of the guests stayed resident (an idle server held
/// 54 MiB instead of 33 MiB with the C library's allocator; 39 MiB with this).
#[cfg(target_os = "linux")]
extern "C" fn configure_allocator() {
    // SAFETY: sets one of mimalloc's global options; no other thread exists yet.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
}

fn main() -> std::process::ExitCode {
    sandgate::cli::run(sandgate::cli::Cli::parse())
}
