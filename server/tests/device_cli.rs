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
