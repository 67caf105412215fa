//! The `ghgate` binary: parses arguments and hands off to the library.

fn main() -> std::process::ExitCode {
    ghgate::cli::main()
}
