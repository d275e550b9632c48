//! The `posgate` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

mod commands;

fn main() -> anyhow::Result<()> {
    let cli = posgate::cli::Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(commands::run(cli))
}
