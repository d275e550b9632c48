//! The `posgate` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod commands;

/// jemalloc on Linux: glibc's malloc let the daemon's RSS grow with every consume under load (see the
/// comment on `tikv-jemallocator` in Cargo.toml); Windows keeps the system allocator.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Operations exit with the codes documented in `posgate --help` (see `posgate::client::exit`);
/// any other failure is 1.
fn main() -> ExitCode {
    let cli = posgate::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(posgate::client::exit::OTHER);
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::from(posgate::client::exit::OTHER)
        }
    }
}
