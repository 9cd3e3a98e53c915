// FP8 per-tensor GEMM: y[M, N] = x[M, K] W[N, K]^T * weight_scale (+ bias), W E4M3 bytes as
// ModelOpt's FP8 per-tensor layers store them (weight F8_E4M3 [N, K], weight_scale F32). CPU twin:
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
