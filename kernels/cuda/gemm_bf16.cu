// Dense bf16 GEMM on tensor cores: C[M, N] = A[M, K] W[N, K]^T (+ bias), f32 accumulation and
// output. W is a PyTorch Linear weight as stored ([out, in], row-major), which is exactly the
// "col" B operand of mma.sync, so weights need no transposition. CPU twin: marc_kernels::matmul.
//
// Tiling: a block computes a 64 x 64 tile of C with 4 warps (2 x 2), each warp a 32 x 32 sub-tile
// as 2 x 4 mma.m16n8k16 fragments (32 f32 accumulators per lane). K advances 32 at a time through
// shared memory; rows are padded by 8 bf16 so the fragment loads (8 rows x 4 words per
// instruction) hit 32 distinct banks. Edges (M, N, K not multiples of the tile) are zero-filled on
// load and masked on store, so any shape works.
//
// This is the portable sm_80+ path (mma.sync), which both sm_90a and sm_100a run. It is the
// building block for the W4A16 variant (NVFP4 nibbles decoded to bf16 in registers before the same
// mma) and the grouped expert GEMM (one expert per M tile, see moe_routing.cu's padding). The
// Hopper/Blackwell-specific paths (wgmma / tcgen05 with TMA) are not written yet; dense projections
// can use cuBLASLt meanwhile.
//
// Launch: grid (ceil(N / 64), ceil(M / 64)), GEMM_THREADS threads, static shared memory
// 2 * 64 * 40 * 2 = 10 KiB. grouped_gemm_bf16_f32 (below) is the MoE experts' GEMM on the same tile.

#include "mma.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 32
#define GEMM_PAD 8
#define GEMM_THREADS 128

namespace {

// The 64 x 64 output tile of one block, accumulated over all of K. `a_row(r)` and `w_row(c)` give
// the K-long bf16 row behind tile row r of A and tile column c of C (a row of W), or nullptr for a
// row past the edge (read as zeros), so the dense and the grouped kernels share everything but
// where rows come from. On return, lane (g, t) of warp w holds C[tile row][tile col] in
// acc[i][j][r] at row (w / 2) * 32 + 16 i + g + 8 (r / 2), column (w % 2) * 32 + 8 j + 2 t + r % 2.
template <typename ARow, typename WRow>
__device__ __forceinline__ void mma_tile(ARow a_row, WRow w_row, int k, float acc[2][4][4]) {
    __shared__ __align__(16) unsigned short a_tile[GEMM_BM][GEMM_BK + GEMM_PAD];
    __shared__ __align__(16) unsigned short w_tile[GEMM_BN][GEMM_BK + GEMM_PAD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_row = (warp / 2) * 32, warp_col = (warp % 2) * 32;
    const int g = lane / 4, t = lane % 4;

    MARC_UNROLL
    for (int i = 0; i < 2; ++i) {
        MARC_UNROLL
        for (int j = 0; j < 4; ++j) {
            MARC_UNROLL
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
        }
    }

    for (int k0 = 0; k0 < k; k0 += GEMM_BK) {
        // The previous step's fragment loads are done before the tiles are overwritten.
        __syncthreads();
        for (int i = threadIdx.x; i < GEMM_BM * GEMM_BK; i += blockDim.x) {
            const int r = i / GEMM_BK, kk = i % GEMM_BK;
            const bool in_k = k0 + kk < k;
            const unsigned short* a_src = a_row(r);
            const unsigned short* w_src = w_row(r);
            a_tile[r][kk] = a_src != nullptr && in_k ? a_src[k0 + kk] : 0;
            w_tile[r][kk] = w_src != nullptr && in_k ? w_src[k0 + kk] : 0;
        }
        __syncthreads();

        MARC_UNROLL
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            // Two bf16 at even columns form one aligned 32-bit word.
            auto word = [](const unsigned short* p) { return *reinterpret_cast<const unsigned*>(p); };
            unsigned a_frag[2][4], b_frag[4][2];
            MARC_UNROLL
            for (int i = 0; i < 2; ++i) {
                const int r = warp_row + 16 * i + g;
                a_frag[i][0] = word(&a_tile[r][kk + 2 * t]);
                a_frag[i][1] = word(&a_tile[r + 8][kk + 2 * t]);
                a_frag[i][2] = word(&a_tile[r][kk + 2 * t + 8]);
                a_frag[i][3] = word(&a_tile[r + 8][kk + 2 * t + 8]);
            }
            MARC_UNROLL
            for (int j = 0; j < 4; ++j) {
                const int col = warp_col + 8 * j + g;
                b_frag[j][0] = word(&w_tile[col][kk + 2 * t]);
                b_frag[j][1] = word(&w_tile[col][kk + 2 * t + 8]);
            }
            MARC_UNROLL
            for (int i = 0; i < 2; ++i) {
                MARC_UNROLL
                for (int j = 0; j < 4; ++j) marc::mma_m16n8k16_bf16(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
            }
        }
    }
}

// Calls store(tile row, tile column, value) for every accumulator of this lane (layout above).
template <typename Store>
__device__ __forceinline__ void for_each_output(const float acc[2][4][4], Store store) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_row = (warp / 2) * 32, warp_col = (warp % 2) * 32;
    const int g = lane / 4, t = lane % 4;
    MARC_UNROLL
    for (int i = 0; i < 2; ++i) {
        MARC_UNROLL
        for (int j = 0; j < 4; ++j) {
            MARC_UNROLL
            for (int r = 0; r < 4; ++r) {
                store(warp_row + 16 * i + g + 8 * (r / 2), warp_col + 8 * j + 2 * t + r % 2, acc[i][j][r]);
            }
        }
    }
}

}  // namespace

// a, w: bf16 bit patterns. bias: [N] or null.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_f32(const unsigned short* __restrict__ a, const unsigned short* __restrict__ w,
                  const float* __restrict__ bias, int m, int n, int k, float* __restrict__ c) {
    const int row0 = blockIdx.y * GEMM_BM, col0 = blockIdx.x * GEMM_BN;
    float acc[2][4][4];
    mma_tile([&](int r) { return row0 + r < m ? a + size_t(row0 + r) * k : nullptr; },
             [&](int col) { return col0 + col < n ? w + size_t(col0 + col) * k : nullptr; }, k, acc);
    for_each_output(acc, [&](int r, int col, float v) {
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
// Launch: grid (ceil(N / 64), offsets[E] / 64), GEMM_THREADS threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    grouped_gemm_bf16_f32(const unsigned short* __restrict__ a, const int* __restrict__ sorted,
                          const int* __restrict__ offsets, int num_experts, int top_k,
                          const unsigned short* __restrict__ w, int n, int k, float* __restrict__ out) {
    const int row0 = blockIdx.y * GEMM_BM, col0 = blockIdx.x * GEMM_BN;
    int expert = 0;
    while (expert + 1 < num_experts && offsets[expert + 1] <= row0) ++expert;
    const unsigned short* w_e = w + size_t(expert) * n * k;
    float acc[2][4][4];
    mma_tile(
        [&](int r) {
            const int entry = sorted[row0 + r];
            return entry >= 0 ? a + size_t(entry / top_k) * k : nullptr;
        },
        [&](int col) { return col0 + col < n ? w_e + size_t(col0 + col) * k : nullptr; }, k, acc);
    for_each_output(acc, [&](int r, int col, float v) {
        const int entry = sorted[row0 + r], column = col0 + col;
        if (entry >= 0 && column < n) out[size_t(entry) * n + column] = v;
    });
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
