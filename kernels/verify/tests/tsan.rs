//! The emulated kernels under ThreadSanitizer: a clean run reports no race, and deleting any one
//! barrier of the SSD scan, the attention, the GEMM tile (through the bf16 and the NVFP4 GEMM, whose
//! shared tiles differ), the tcgen05 W4A4 GEMMs (through the CPU model of its instructions) or the
//! one inside `block_sum` is reported as a data race in the kernel source. This is what makes the
//! emulation a check on synchronisation, not only on arithmetic.
//!
//! Builds `src/emulated.cpp` + `src/tsan_driver.cpp` with `g++ -fsanitize=thread` (about 10 s),
//! then runs the driver once per case. Barriers are removed at run time by `SIMT_SKIP_SYNC`
//! (see simt_cpu.h), so the kernel under test is the shipped source.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use marc_kernels_verify::sources;

fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tsan_driver");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_owned());
        let status = Command::new(&cxx)
            .args(["-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", "-I"])
            .arg(sources::include_dir())
            .arg(src.join("emulated.cpp"))
            .arg(src.join("tsan_driver.cpp"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cxx} (needed for the ThreadSanitizer build): {e}"));
        assert!(status.success(), "{cxx} -fsanitize=thread failed: {status}");
        out
    })
}

fn run(case: &str, skip_sync: Option<&str>) -> Output {
    let mut cmd = Command::new(driver());
    cmd.arg(case).env("TSAN_OPTIONS", "halt_on_error=1");
    match skip_sync {
        Some(spec) => cmd.env("SIMT_SKIP_SYNC", spec),
        None => cmd.env_remove("SIMT_SKIP_SYNC"),
    };
    cmd.output().expect("the TSan driver runs")
}

/// The 1-based lines of `file` (under kernels/cuda) holding a `__syncthreads();`.
fn barrier_lines(file: &str) -> Vec<usize> {
    let text = std::fs::read_to_string(sources::cuda_dir().join(file)).expect("kernel source is readable");
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("__syncthreads();"))
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn clean_runs_report_no_race() {
    for case in [
        "rms_norm",
        "gated_group_rms_norm",
        "ssd_scan",
        "attention",
        "gemm",
        "gemm_nvfp4",
        "gemm_nvfp4_tcgen05",
        "grouped_gemm_nvfp4_tcgen05",
    ] {
        let out = run(case, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("ThreadSanitizer"),
            "{case}:\n{stderr}"
        );
    }
}

/// Tries to catch the race left by removing the barrier at `file:line`.
///
/// TSan is a dynamic detector with a bounded per-location history: on a loaded machine a run can
/// interleave so that the racing accesses' records are evicted before they meet. So a miss is
/// retried, up to three runs in all; a barrier that guards nothing is never reported at all.
fn assert_race_reported(case: &str, file: &str, line: usize) {
    let name = file.rsplit('/').next().unwrap();
    let spec = format!("{name}:{line}");
    let mut last = String::new();
    for _ in 0..3 {
        let out = run(case, Some(&spec));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && stderr.contains("WARNING: ThreadSanitizer: data race") {
            assert!(
                stderr.contains(name),
                "the race report does not point into {file}:\n{stderr}"
            );
            return;
        }
        last = format!("({}):\n{stderr}", out.status);
    }
    panic!("removing the barrier at {file}:{line} went unnoticed in three runs {last}");
}

#[test]
fn every_ssd_scan_barrier_is_needed_and_its_removal_is_caught() {
    let lines = barrier_lines("ssd_scan.cu");
    assert_eq!(lines.len(), 5, "ssd_scan.cu's barriers moved; update this test");
    for line in lines {
        assert_race_reported("ssd_scan", "ssd_scan.cu", line);
    }
}

#[test]
fn every_attention_and_gemm_barrier_is_needed() {
    for (case, file, count) in [
        ("attention", "attention.cu", 2),
        ("gemm", "include/gemm_tile.cuh", 2),
        ("gemm_nvfp4", "include/gemm_tile.cuh", 2),
    ] {
        let lines = barrier_lines(file);
        assert_eq!(lines.len(), count, "{file}'s barriers moved; update this test");
        for line in lines {
            assert_race_reported(case, file, line);
        }
    }
}

#[test]
fn every_tcgen05_gemm_barrier_is_needed() {
    // gemm_nvfp4.cu's only barriers: three in the tcgen05 GEMMs' helpers, then the grouped
    // kernel's own.
    let lines = barrier_lines("gemm_nvfp4.cu");
    assert_eq!(lines.len(), 4, "gemm_nvfp4.cu's barriers moved; update this test");
    // Between quantising the stage's rows (each thread its blocks' scales, in shared memory) and
    // every warp writing all of them to its lane quarter of tensor memory: a data race.
    assert_race_reported("grouped_gemm_nvfp4_tcgen05", "gemm_nvfp4.cu", lines[3]);
    // After the tensor-memory allocation (its address and the poisoned cells, read by every warp)
    // and before each stage's MMAs (the shared tiles and scales every thread wrote, read by the
    // issuing thread): data races.
    for &line in &lines[..2] {
        assert_race_reported("gemm_nvfp4_tcgen05", "gemm_nvfp4.cu", line);
    }
    // Before the deallocation: warp 0 may free the tensor memory while the other warps still read
    // the accumulator. Either the model sees a tcgen05.ld of freed columns and aborts, or the
    // reads come first and TSan reports them racing with the allocator's bookkeeping.
    let spec = format!("gemm_nvfp4.cu:{}", lines[2]);
    let mut last = String::new();
    for _ in 0..3 {
        let out = run("gemm_nvfp4_tcgen05", Some(&spec));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success()
            && (stderr.contains("WARNING: ThreadSanitizer: data race") || stderr.contains("which is not allocated"))
        {
            return;
        }
        last = format!("({}):\n{stderr}", out.status);
    }
    panic!("removing the barrier before tcgen05.dealloc went unnoticed in three runs {last}");
}

#[test]
fn block_sum_without_its_first_barrier_races() {
    // block_sum's second barrier only guards a second call reusing the scratch, which no kernel
    // makes yet; the first is needed by every caller.
    let first = barrier_lines("include/marc_cuda.cuh")[0];
    assert_race_reported("rms_norm", "include/marc_cuda.cuh", first);
}
