#!/usr/bin/env bash
# The project's checks, as CI runs them: formatting, lints, docs, then every test in release mode
# (the SIMD paths and the batch-invariance promise are checked as they ship).
# Needs a Rust toolchain (cargo, rustfmt, clippy), a C++20 compiler with ThreadSanitizer (g++ >= 11:
# the CUDA kernels run on the CPU through kernels/cuda/include/simt_cpu.h), and Python 3 with pip:
# scripts/cuda_tools.sh installs NVRTC from PyPI for the kernel compile checks into target/cuda-tools/
# (under CI=true a failed install fails the tests), and deploy/check.sh installs Debian's prometheus
# (as root) and two PyPI tools when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --release -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --release --quiet

step "cargo test --release"
cargo test --workspace --release

step "deploy/check.sh (Dockerfiles, Kubernetes manifests, Prometheus rules, a real Prometheus scraping marc serve)"
# The scrape test runs the release binaries that the tests above built.
cargo build --workspace --release --bins --quiet
bash deploy/check.sh
