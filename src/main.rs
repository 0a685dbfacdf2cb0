//! The `scopegate` binary; everything lives in the library.

/// mimalloc: pingora allocates and frees many small buffers per request;
/// glibc's malloc showed up as ~8% of proxy CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
