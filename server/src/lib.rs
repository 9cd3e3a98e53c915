//! The library side of the `marc` binary: the command line ([`main`]), the offline commands, and the gRPC
//! embedding server behind `marc serve` ([`serve::run`]), a library so integration tests can start it in
//! process on an ephemeral port.
//!
//! - `cli.rs`: flags; `commands/`: one module per subcommand; `input.rs`: `marc embed`'s JSONL input.
//! - `quantization.rs`: `--quant` resolved against what the checkpoint declares.
//! - `output.rs`: what a request asks for (head, layer, pooling, dimensions, normalisation) and how it is
//!   computed from hidden states, shared by `marc embed` and the server.
//! - [`serve`]: the server.

mod cli;
mod commands;
mod input;
mod model;
mod output;
mod quantization;
pub mod serve;

use std::process::ExitCode;

use clap::Parser;

/// Runs the `marc` command line with the process's arguments; errors print their context chain on one line.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = cli::init_threads(cli.threads)
        .and_then(|()| match cli.command.runs_a_model() {
            true => Ok(marc_kernels::device::open(cli.device)?),
            false => Ok(()),
        })
        .and_then(|()| match cli.command {
            cli::Command::Bench(args) => commands::bench::run(&args, cli.precision, cli.device),
            cli::Command::Embed(args) => commands::embed::run(&args, cli.precision, cli.device),
            cli::Command::Serve(args) => commands::serve::run(&args, cli.precision, cli.device),
            cli::Command::Head(cli::HeadCommand::Init(args)) => commands::head::init(&args, cli.precision, cli.device),
            // Calibration observes the activations of the CPU forward pass, and the rest of quantising
            // is file work: no use for a GPU.
            cli::Command::Quantize(_) if cli.device != marc_kernels::Device::Cpu => Err(anyhow::anyhow!(
                "--device {}: `marc quantize` runs on the CPU; run it with --device cpu",
                cli.device
            )),
            cli::Command::Health(args) => commands::health::run(&args),
            cli::Command::Quantize(args) => commands::quantize::run(&args),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // No backtrace: these are user-facing errors.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
