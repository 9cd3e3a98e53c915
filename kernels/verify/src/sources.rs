//! Where the kernel sources and the CUDA tools are.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `kernels/cuda/`, the kernel sources.
pub fn cuda_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cuda");
    dir.canonicalize().unwrap_or(dir)
}

/// `kernels/cuda/include/`, the shared headers.
pub fn include_dir() -> PathBuf {
    cuda_dir().join("include")
}

/// Runs `scripts/cuda_tools.sh` (which installs the pinned NVRTC and header wheels on first use)
/// and returns the folder holding `lib/libnvrtc.so.13` and `include/`, or why it could not.
pub fn cuda_tools() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cuda_tools.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let folder = stdout.lines().last().unwrap_or_default().trim();
    if folder.is_empty() {
        return Err(format!("{} printed no folder", script.display()));
    }
    Ok(PathBuf::from(folder))
}
