// The CUDA kernels compiled as C++ through simt_cpu.h, behind one C entry point shaped like
// cuLaunchKernel (`void** args`: one pointer per kernel parameter), so Rust drives the emulated
// kernels exactly as it would drive the real ones through the driver.

#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../../cuda/attention.cu"
#include "../../cuda/causal_conv1d.cu"
#include "../../cuda/elementwise.cu"
#include "../../cuda/embedding.cu"
#include "../../cuda/gemm_bf16.cu"
#include "../../cuda/gemm_float.cu"
#include "../../cuda/gemm_fp8.cu"
#include "../../cuda/gemm_nvfp4.cu"
#include "../../cuda/moe_experts.cu"
#include "../../cuda/moe_routing.cu"
#include "../../cuda/norm.cu"
#include "../../cuda/pooling.cu"
#include "../../cuda/ssd_scan.cu"
#include "quant_probe.cu"
#include "simt_selftest.cu"

namespace {

template <typename... A, std::size_t... I>
void call_unpacked(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A>
void call(void (*kernel)(A...), void** args) {
    call_unpacked(kernel, args, std::index_sequence_for<A...>{});
}

struct Entry {
    const char* name;
    void (*run)(void** args);
};

#define KERNEL(name) {#name, [](void** args) { call(&name, args); }}

// Every kernel of kernels/cuda/, by its extern "C" name.
const Entry KERNELS[] = {
    KERNEL(causal_attention_f32_d8),
    KERNEL(causal_attention_f32_d16),
    KERNEL(causal_attention_f32_d24),
    KERNEL(causal_attention_f32_d32),
    KERNEL(causal_attention_f32_d64),
    KERNEL(causal_attention_f32_d128),
    KERNEL(causal_conv1d_silu_f32),
    KERNEL(add_f32),
    KERNEL(embedding_gather_bf16),
    KERNEL(embedding_gather_f32),
    KERNEL(gemm_bf16_f32),
    KERNEL(gemm_f16_f32),
    KERNEL(gemm_f32_f32),
    KERNEL(gemm_fp8_f32),
    KERNEL(gemm_nvfp4_w4a16_f32),
    KERNEL(gemm_nvfp4_w4a4_f32),
    KERNEL(gemm_nvfp4_w4a4_tcgen05_f32),
    KERNEL(grouped_gemm_bf16_f32),
    KERNEL(grouped_gemm_f16_f32),
    KERNEL(grouped_gemm_f32_f32),
    KERNEL(grouped_gemm_fp8_f32),
    KERNEL(grouped_gemm_nvfp4_w4a4_f32),
    KERNEL(grouped_gemm_nvfp4_w4a4_tcgen05_f32),
    KERNEL(grouped_gemm_nvfp4_w4a16_f32),
    KERNEL(head_activation_normalize_f32),
    KERNEL(mma_m16n8k16_probe),
    KERNEL(moe_route_f32),
    KERNEL(moe_count_by_expert),
    KERNEL(moe_align_offsets),
    KERNEL(moe_scatter_by_expert),
    KERNEL(moe_unpermute_f32),
    KERNEL(nvfp4_quantize_f32),
    KERNEL(pool_f32),
    KERNEL(quant_probe_decode),
    KERNEL(quant_probe_encode),
    KERNEL(relu2_f32),
    KERNEL(round_bf16_f32),
    KERNEL(rms_norm_f32),
    KERNEL(simt_selftest_block),
    KERNEL(softplus_dt_f32),
    KERNEL(split_bf16x3_f32),
    KERNEL(bf16_part_f32),
    KERNEL(simt_selftest_warp),
    KERNEL(ssd_scan_f32),
    KERNEL(tcgen05_mxf4nvf4_probe),
    KERNEL(gated_group_rms_norm_f32),
};

}  // namespace

// Runs kernel `name` on the CPU. Returns 0, or 1 when no kernel has that name.
extern "C" int simt_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                           size_t shared_bytes, void** args) {
    for (const Entry& e : KERNELS) {
        if (std::strcmp(e.name, name) == 0) {
            simt::launch({grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, shared_bytes,
                         [&] { e.run(args); });
            return 0;
        }
    }
    return 1;
}
