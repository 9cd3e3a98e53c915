//! `--device`: CPU by default; `cuda` on a machine without a CUDA driver fails at once with a clear
//! message (and never reaches the model, nor panics inside cudarc).

use std::process::Command;

mod common;

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
    // The benchmark pattern, small.
    let config_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tests/fixtures/bench_shape_small/config.json"
    );
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
        .arg(config_path)
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

/// `marc embed --device cuda` writes the CPU's vectors, within the fixtures' tolerance (relative L2
/// 1e-5), for items of 1, 17 and 40 tokens batched together. Needs a CUDA driver; elsewhere it says
/// why it is skipped.
#[test]
fn embed_on_cuda_matches_the_cpu() {
    if !marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: no CUDA driver on this machine; marc embed --device cuda is checked where one is");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    common::write_bf16_bench_shape_model(&model, 5);
    let input = dir.path().join("items.jsonl");
    let lines: Vec<String> = [1usize, 17, 40]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let ids: Vec<String> = (0..len)
                .map(|t| ((i * 7919 + t * 104_729 + 3) % 512).to_string())
                .collect();
            format!("{{\"id\": {i}, \"token_ids\": [{}]}}", ids.join(", "))
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let embed = |device: &str| -> Vec<Vec<f64>> {
        let output = dir.path().join(format!("{device}.jsonl"));
        let (ok, stderr) = marc(
            &[
                "--device",
                device,
                "embed",
                "--model",
                model.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
                "--no-head",
                "--layer",
                "3",
            ],
            &[],
        );
        assert!(ok, "--device {device}: {stderr}");
        std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (cpu, cuda) = (embed("cpu"), embed("cuda"));
    assert_eq!(cpu.len(), 3);
    for (item, (g, w)) in cuda.iter().zip(&cpu).enumerate() {
        let diff: f64 = g.iter().zip(w).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f64 = w.iter().map(|b| b * b).sum();
        let error = (diff / norm).sqrt();
        assert!(error <= 1e-5, "item {item}: relative L2 {error:.2e}");
    }
}

/// Quantising observes the CPU forward pass: on a GPU machine, `--device cuda` is refused by name.
#[test]
fn quantize_is_cpu_only() {
    if !marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: no CUDA driver on this machine, so --device cuda stops at the driver check");
        return;
    }
    let (ok, stderr) = marc(
        &[
            "--device",
            "cuda",
            "quantize",
            "--model",
            "/nonexistent",
            "--output",
            "/nonexistent",
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("`marc quantize` runs on the CPU"), "{stderr}");
}
