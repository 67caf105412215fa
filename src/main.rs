//! The `ghgate` binary: parses arguments and hands off to the library.

/// mimalloc instead of glibc's malloc: the hit path allocates and frees small buffers on
/// every request across worker threads, where glibc's arenas spend ~10% of CPU (measured with
/// perf under bench/vs_nginx.sh) and fragment.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ghgate::cli::main()
}
