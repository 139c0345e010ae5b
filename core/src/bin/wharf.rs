//! `wharf`: the Wharf operator CLI. See `wharf --help` and the operator guide.

fn main() -> std::process::ExitCode {
    wharf_core::cli::main()
}
