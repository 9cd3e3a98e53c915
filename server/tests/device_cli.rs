//! `--device`: CPU by default; `cuda` on a machine without a CUDA driver fails at once with a clear
//! message (and never reaches the model, nor panics inside cudarc).

use std::process::Command;

fn marc(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_marc"))
        .args(args)
        .env_remove("MARC_DEVICE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cuda_without_a_driver_fails_clearly() {
    if marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: this machine has a CUDA driver, so the no-driver message cannot be observed");
        return;
    }
    for (args, env) in [
        (&["serve", "--device", "cuda"][..], &[][..]),
        (&["--device", "cuda:1", "bench"][..], &[][..]),
        (
            &["embed", "--input", "/nonexistent", "--output", "/nonexistent"][..],
            &[("MARC_DEVICE", "cuda")][..],
        ),
    ] {
        let (ok, stderr) = marc(args, env);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains("no CUDA driver") && stderr.contains("--device cpu") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn unknown_devices_are_refused_by_name() {
    let (ok, stderr) = marc(&["serve", "--device", "gpu"], &[]);
    assert!(!ok);
    assert!(stderr.contains("unknown device \"gpu\""), "{stderr}");
}

/// `marc bench --device cuda` times the forward pass on the GPU (the kernel micro-benchmarks of
/// docs/gpu.md's table run inside it). It needs a CUDA driver; elsewhere it says why it is skipped.
#[test]
fn bench_runs_on_cuda_where_a_gpu_is() {
    if !marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: no CUDA driver on this machine; marc bench --device cuda is checked where one is");
        return;
    }
    // The benchmark pattern, small, with attention heads the CUDA kernels handle (64 wide).
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tests/fixtures/bench_shape_small/config.json"
    );
    let config = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("\"head_dim\": 8,", "\"head_dim\": 64,");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_marc"))
        .args([
            "--device",
            "cuda",
            "bench",
            "--shapes",
            "1x32,4x16",
            "--iterations",
            "3",
            "--config",
        ])
        .arg(&config_path)
        .env_remove("MARC_DEVICE")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("device: cuda:0") && stdout.contains("4 x 16"),
        "{stdout}"
    );
}

#[test]
fn only_bench_runs_on_cuda_so_far() {
    if !marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: no CUDA driver on this machine, so --device cuda stops at the driver check");
        return;
    }
    let (ok, stderr) = marc(&["serve", "--device", "cuda"], &[]);
    assert!(!ok);
    assert!(stderr.contains("only `marc bench` runs on CUDA"), "{stderr}");
}
