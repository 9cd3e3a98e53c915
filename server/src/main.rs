//! The `marc` command line: `marc embed` (offline batch embedding) and `marc bench`.

mod cli;
mod commands;
mod input;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    cli::init_threads(cli.threads)?;
    match cli.command {
        cli::Command::Embed(args) => commands::embed::run(&args),
        cli::Command::Bench(args) => commands::bench::run(&args),
    }
}
