//! The `marc` command line: `marc embed` (offline batch embedding), `marc head init` (fit a PCA
//! compression head), `marc bench` and `marc serve` (the gRPC server, in the `marc_server` library).

mod cli;
mod commands;
mod input;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = cli::init_threads(cli.threads).and_then(|()| match cli.command {
        cli::Command::Embed(args) => commands::embed::run(&args, cli.precision),
        cli::Command::Bench(args) => commands::bench::run(&args, cli.precision),
        cli::Command::Head(cli::HeadCommand::Init(args)) => commands::head::init(&args, cli.precision),
        cli::Command::Serve(args) => commands::serve::run(&args, cli.precision),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole context chain on one line, no backtrace: these are user-facing errors.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
