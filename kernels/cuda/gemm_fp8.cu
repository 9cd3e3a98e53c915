// FP8 per-tensor GEMMs: gemm_fp8_f32, y[M, N] = x[M, K] W[N, K]^T * weight_scale (+ bias), W E4M3
// bytes as ModelOpt's FP8 per-tensor layers store them (weight F8_E4M3 [N, K], weight_scale F32),
// and grouped_gemm_fp8_f32, the MoE experts' version (at the end). CPU twin:
// marc_kernels::matmul on PackedMatrix::from_fp8_e4m3.
//
// Why bf16 activations and weights decoded to bf16, not sm_89+'s FP8 mma with quantised
// activations: marc's CPU FP8 path keeps activations exact and multiplies them by the exactly
// decoded weights; E4M3 values are exact in bf16 (4 significant bits, exponents -9..8), so this
// kernel's only departures from the CPU are the bf16 rounding of x (relative 2^-9 per activation)
// and the f32 summation order. FP8 activations (sm_89+ e4m3 mma) would add a per-tensor
// quantisation of x to 4 significant bits that the CPU path, and so every fixture marc is held to,
// does not do: the closest twin is this one. The weights still cross memory at one byte each and
// are widened only in the fragment registers, which is what a bandwidth-bound GEMM at small M
// needs; FP8 tensor cores would matter only at large M (compute-bound), where it can come later
// as another operand policy.
//
// Tiling: include/gemm_tile.cuh. Any K (bytes are staged one by one). Launch: grid
// (ceil(N / 64), ceil(M / 64)), 128 threads; static shared memory 5 KiB (x) + 2.3 KiB (W).

#include "gemm_tile.cuh"

namespace gemm = marc::gemm;

// x: f32 [M, K]; w: E4M3 [N, K]; bias [N] or null; y [M, N].
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    gemm_fp8_f32(const float* __restrict__ x, const unsigned char* __restrict__ w, float weight_scale,
                 const float* __restrict__ bias, int m, int n, int k, float* __restrict__ y) {
    const int row0 = blockIdx.y * gemm::BM, col0 = blockIdx.x * gemm::BN;
    float acc[2][4][4];
    gemm::mma_tile(gemm::operand<gemm::F32Rows>(gemm::DenseRows<float>{x, row0, m, k}),
                   gemm::operand<gemm::Fp8Rows>(gemm::DenseRows<unsigned char>{w, col0, n, k}), k, acc);
    gemm::store_scaled(acc, row0, col0, m, n, weight_scale, bias, y);
}

// The MoE experts' grouped GEMM with FP8 experts, as gemm_nvfp4.cu's grouped NVFP4 GEMMs on E4M3
// weights: for every routing entry i = t * top_k + slot that picked expert e,
// out[i] = act(a[t] W_e^T * weight_scales[e]), act = relu2 when `relu2` is non-zero (the up
// projection), else none. Rows gathered by token and scattered by entry through moe_routing.cu's
// padded permutation (`sorted`, `offsets`). a: f32 [tokens, K], rounded to bf16 when staged;
// w: E4M3 [E, N, K]; weight_scales [E]; out [tokens * top_k, N].
// Launch: grid (ceil(N / 64), offsets[E] / 64), 128 threads.
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    grouped_gemm_fp8_f32(const float* __restrict__ a, const int* __restrict__ sorted, const int* __restrict__ offsets,
                         int num_experts, int top_k, const unsigned char* __restrict__ w,
                         const float* __restrict__ weight_scales, int n, int k, int relu2, float* __restrict__ out) {
    const gemm::GroupedTile tile = gemm::grouped_tile(offsets, num_experts);
    const unsigned char* w_e = w + size_t(tile.expert) * n * k;
    float acc[2][4][4];
    gemm::mma_tile(gemm::operand<gemm::F32Rows>(gemm::GatheredRows<float>{a, sorted, tile.row0, top_k, k}),
                   gemm::operand<gemm::Fp8Rows>(gemm::DenseRows<unsigned char>{w_e, tile.col0, n, k}), k, acc);
    gemm::store_by_entry(acc, tile, sorted, n, weight_scales[tile.expert], relu2, out);
}
