// Dense bf16 GEMM on tensor cores: C[M, N] = A[M, K] W[N, K]^T (+ bias), f32 accumulation and
// output. W is a PyTorch Linear weight as stored ([out, in], row-major), which is exactly the
// "col" B operand of mma.sync, so weights need no transposition. CPU twin: marc_kernels::matmul.
//
// Tiling: include/gemm_tile.cuh (a 64 x 64 tile of C per block, 4 warps, K 32 at a time through
// shared memory), shared with the NVFP4 and FP8 GEMMs. Edges (M, N, K not multiples of the tile)
// are zero-filled on load and masked on store, so any shape works.
//
// This is the portable sm_80+ path (mma.sync), which both sm_90a and sm_100a run; the W4A16, W4A4
// and FP8 GEMMs (gemm_nvfp4.cu, gemm_fp8.cu) are the same tile with other operand policies. The
// Hopper/Blackwell-specific paths (wgmma / tcgen05 with TMA) are not written yet; dense projections
// can use cuBLASLt meanwhile.
//
// Launch: grid (ceil(N / 64), ceil(M / 64)), 128 threads (gemm::THREADS), static shared
// memory 2 * 64 * 40 * 2 = 10 KiB. grouped_gemm_bf16_f32 (below) is the MoE experts' GEMM on the same tile.

#include "gemm_tile.cuh"

namespace gemm = marc::gemm;

// a, w: bf16 bit patterns. bias: [N] or null.
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    gemm_bf16_f32(const unsigned short* __restrict__ a, const unsigned short* __restrict__ w,
                  const float* __restrict__ bias, int m, int n, int k, float* __restrict__ c) {
    const int row0 = blockIdx.y * gemm::BM, col0 = blockIdx.x * gemm::BN;
    float acc[2][4][4];
    gemm::mma_tile(gemm::operand<gemm::Bf16Rows>(gemm::DenseRows<unsigned short>{a, row0, m, k}),
                   gemm::operand<gemm::Bf16Rows>(gemm::DenseRows<unsigned short>{w, col0, n, k}), k, acc);
    gemm::for_each_output(acc, [&](int r, int col, float v) {
        const int row = row0 + r, column = col0 + col;
        if (row < m && column < n) c[size_t(row) * n + column] = v + (bias != nullptr ? bias[column] : 0.0f);
    });
}

// The grouped expert GEMM: for every routing entry i = t * top_k + slot that picked expert e,
// out[i] = a[t] W_e^T. `sorted` and `offsets` come from moe_routing.cu's permutation: each expert's
// entries in a segment padded to 64 rows (padding is -1), so a block's 64 rows all use one expert,
// found from `offsets` (the last e with offsets[e] <= the block's first row). Rows are gathered
// from `a` by token on load and scattered to `out` by entry on store; no permuted copy of the
// activations is ever written. w: [E, N, K] bf16 bits; out: [tokens * top_k, N].
//
// Launch: grid (ceil(N / 64), offsets[E] / 64), 128 threads.
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    grouped_gemm_bf16_f32(const unsigned short* __restrict__ a, const int* __restrict__ sorted,
                          const int* __restrict__ offsets, int num_experts, int top_k,
                          const unsigned short* __restrict__ w, int n, int k, float* __restrict__ out) {
    const gemm::GroupedTile tile = gemm::grouped_tile(offsets, num_experts);
    const unsigned short* w_e = w + size_t(tile.expert) * n * k;
    float acc[2][4][4];
    gemm::mma_tile(
        gemm::operand<gemm::Bf16Rows>(gemm::GatheredRows<unsigned short>{a, sorted, tile.row0, top_k, k}),
        gemm::operand<gemm::Bf16Rows>(gemm::DenseRows<unsigned short>{w_e, tile.col0, n, k}), k, acc);
    // Times 1.0, exact: the values as summed.
    gemm::store_by_entry(acc, tile, sorted, n, 1.0f, 0, out);
}

// One mma.m16n8k16 on fragments loaded from row-major A [16, 16] and B^T [8, 16] (bf16 bits) by
// the layout in mma.cuh, into row-major D [16, 8]. One warp. Exists so the tests can check the
// fragment layout (and, on a GPU, the instruction) against a plain matrix product.
extern "C" __global__ void __launch_bounds__(32)
    mma_m16n8k16_probe(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b_t,
                       float* __restrict__ d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    auto pair = [](const unsigned short* p) { return unsigned(p[0]) | unsigned(p[1]) << 16; };
    const unsigned a_frag[4] = {pair(a + g * 16 + 2 * t), pair(a + (g + 8) * 16 + 2 * t),
                                pair(a + g * 16 + 2 * t + 8), pair(a + (g + 8) * 16 + 2 * t + 8)};
    const unsigned b_frag[2] = {pair(b_t + g * 16 + 2 * t), pair(b_t + g * 16 + 2 * t + 8)};
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float out[4];
    marc::mma_m16n8k16_bf16(out, a_frag, b_frag, zero);
    d[g * 8 + 2 * t] = out[0];
    d[g * 8 + 2 * t + 1] = out[1];
    d[(g + 8) * 8 + 2 * t] = out[2];
    d[(g + 8) * 8 + 2 * t + 1] = out[3];
}
