//! The kernel sources, embedded so a deployed binary needs no source tree to compile them.

/// One embedded file: its name under `kernels/cuda/` and its text.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// Path relative to `kernels/cuda/` (`norm.cu`, `include/marc_cuda.cuh`).
    pub name: &'static str,
    /// The file's text.
    pub text: &'static str,
}

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(Source { name: $name, text: include_str!(concat!("../../cuda/", $name)) }),*]
    };
}

/// The kernel files, one per op family, each compiled as one NVRTC program.
pub const KERNELS: &[Source] = embed!(
    "attention.cu",
    "causal_conv1d.cu",
    "elementwise.cu",
    "embedding.cu",
    "gemm_bf16.cu",
    "gemm_float.cu",
    "gemm_fp8.cu",
    "gemm_nvfp4.cu",
    "moe_experts.cu",
    "moe_routing.cu",
    "norm.cu",
    "pooling.cu",
    "ssd_scan.cu",
);

/// The headers the kernel files include (`simt_cpu.h` is the CPU emulation, unused by NVRTC but
/// kept so the set mirrors the folder).
pub const HEADERS: &[Source] = embed!(
    "include/bf16.cuh",
    "include/gemm_tile.cuh",
    "include/marc_cuda.cuh",
    "include/mma.cuh",
    "include/quant.cuh",
    "include/simt_cpu.h",
    "include/tcgen05.cuh",
    "include/varlen.cuh",
);
