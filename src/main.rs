//! The `scopegate` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    scopegate::cli::main()
}
