//! The kernels the backend launches, resolved by name once at start-up from the modules compiled
//! from `kernels/cuda/*.cu`, so a missing one is reported before any request, by name.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};

macro_rules! kernel_table {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Function handles of every kernel the backend launches, named as in the `.cu` sources.
        pub(super) struct Kernels {
            $($(#[$doc])* pub(super) $name: CudaFunction,)*
        }

        /// Every kernel name the backend needs.
        pub const NEEDED: &[&str] = &[$(stringify!($name)),*];

        impl Kernels {
            /// Finds every kernel in `modules`; on failure, the names of all that are missing.
            pub(super) fn resolve(modules: &[Arc<CudaModule>]) -> Result<Self, Vec<&'static str>> {
                let mut missing = Vec::new();
                let mut find = |name: &'static str| {
                    let found = modules.iter().find_map(|m| m.load_function(name).ok());
                    if found.is_none() {
                        missing.push(name);
                    }
                    found
                };
                $(let $name = find(stringify!($name));)*
                match ($($name,)*) {
                    ($(Some($name),)*) => Ok(Self { $($name,)* }),
                    _ => Err(missing),
                }
            }
        }
    };
}

kernel_table! {
    /// embedding.cu
    embedding_gather_bf16,
    /// embedding.cu
    embedding_gather_f32,
    /// norm.cu
    rms_norm_f32,
    /// norm.cu
    gated_group_rms_norm_f32,
    /// causal_conv1d.cu
    causal_conv1d_silu_f32,
    /// ssd_scan.cu
    ssd_scan_f32,
    /// attention.cu
    causal_attention_f32_d8,
    /// attention.cu
    causal_attention_f32_d16,
    /// attention.cu
    causal_attention_f32_d24,
    /// attention.cu
    causal_attention_f32_d32,
    /// attention.cu
    causal_attention_f32_d64,
    /// attention.cu
    causal_attention_f32_d128,
    /// moe_routing.cu
    moe_route_f32,
    /// moe_routing.cu
    moe_count_by_expert,
    /// moe_routing.cu
    moe_align_offsets,
    /// moe_routing.cu
    moe_scatter_by_expert,
    /// gemm_bf16.cu
    gemm_bf16_f32,
    /// gemm_bf16.cu
    grouped_gemm_bf16_f32,
    /// gemm_float.cu
    gemm_f32_f32,
    /// gemm_float.cu
    gemm_f16_f32,
    /// gemm_float.cu
    grouped_gemm_f32_f32,
    /// gemm_float.cu
    grouped_gemm_f16_f32,
    /// gemm_fp8.cu
    gemm_fp8_f32,
    /// gemm_fp8.cu
    grouped_gemm_fp8_f32,
    /// gemm_nvfp4.cu
    gemm_nvfp4_w4a16_f32,
    /// gemm_nvfp4.cu
    gemm_nvfp4_w4a4_f32,
    /// gemm_nvfp4.cu: W4A4 on tcgen05 (present in every module, launched only on 10.x; it
    /// traps elsewhere).
    gemm_nvfp4_w4a4_tcgen05_f32,
    /// gemm_nvfp4.cu
    nvfp4_quantize_f32,
    /// gemm_nvfp4.cu
    grouped_gemm_nvfp4_w4a16_f32,
    /// gemm_nvfp4.cu
    grouped_gemm_nvfp4_w4a4_f32,
    /// gemm_nvfp4.cu: grouped W4A4 on tcgen05 (as gemm_nvfp4_w4a4_tcgen05_f32: in every
    /// module, launched only on 10.x).
    grouped_gemm_nvfp4_w4a4_tcgen05_f32,
    /// elementwise.cu: each f32 split exactly into three bf16 parts, for exact GEMMs.
    split_bf16x3_f32,
    /// elementwise.cu: one bf16 part of each f32, as f32 (exact FP8 / NVFP4 W4A16 GEMMs).
    bf16_part_f32,
    /// elementwise.cu: f32 rounded to bf16 (nearest even), for `--precision bf16`.
    round_bf16_f32,
    /// elementwise.cu: `acc += x`.
    add_f32,
    /// moe_experts.cu
    relu2_f32,
    /// moe_experts.cu
    moe_unpermute_f32,
    /// elementwise.cu: Mamba's `dt = max(softplus(dt + bias), dt_min)`.
    softplus_dt_f32,
}
