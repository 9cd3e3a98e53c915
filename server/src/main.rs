//! The `marc` command line: `marc embed` (offline batch embedding), `marc head init` (fit a PCA
//! compression head), `marc bench` and `marc serve` (the gRPC server). Everything lives in the
//! `marc_server` library so the commands and the server share one request-planning module.

use std::process::ExitCode;

fn main() -> ExitCode {
    marc_server::main()
}
