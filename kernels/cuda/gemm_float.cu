// GEMMs on f32 and f16 weights, y[M, N] = x[M, K] W[N, K]^T (+ bias), f32 activations and
// accumulation: the checkpoints that store Linears wider than bf16 (the f32 fixtures and test
// models, f16 exports). CPU twin: marc_kernels::matmul on PackedMatrix::from_bytes(F32 / F16),
// which multiplies in f32 at every precision.
//
// Why CUDA cores and not the tensor cores: neither f32 nor f16 values are exact in bf16, so the
// bf16 mma would need both operands split into three parts (nine products) to stay exact, and
// TF32 rounds both to 11 significant bits. An f32 FMA per product is exact-to-f32-rounding, as
// the CPU is, and these weights are the small test models' and rare; a model served for speed is
// bf16, FP8 or NVFP4. f16 weights are widened to f32 as they are staged (exact).
//
// Tiling: the 64 x 64 tile of gemm_tile.cuh with its accumulator layout (so the epilogues
// store_scaled and store_by_entry are shared), K 32 at a time through shared memory, each lane
// computing its 32 outputs by FMA. Any M, N, K. Launch: grid (ceil(N / 64), ceil(M / 64)) (the
// grouped ones: (ceil(N / 64), offsets[E] / 64)), 128 threads; static shared memory 17 KiB.

#include "gemm_tile.cuh"

namespace gemm = marc::gemm;

namespace {

// A 64-row slice of BK k-steps as f32, k-major: a lane's 4 rows (or 8 columns) for one k are
// read from one row of this array, 8 (or 4) distinct addresses per warp, each a broadcast.
struct F32Slice {
    float v[gemm::BK][64 + 4];
};

// The value of an IEEE binary16 bit pattern, exactly: normals and subnormals (m * 2^-24) are
// exact in f32; inf and NaN keep their class.
__device__ __forceinline__ float f16_bits_to_float(unsigned short bits) {
    const unsigned sign = unsigned(bits & 0x8000u) << 16, exponent = (bits >> 10) & 31u, mantissa = bits & 1023u;
    if (exponent == 31u) return __uint_as_float(sign | 0x7f800000u | mantissa << 13);
    if (exponent != 0u) return __uint_as_float(sign | (exponent + 112u) << 23 | mantissa << 13);
    const float subnormal = float(mantissa) * (1.0f / 16777216.0f);
    return sign != 0u ? -subnormal : subnormal;
}

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(unsigned short f16_bits) { return f16_bits_to_float(f16_bits); }

// Stages rows k0 .. k0 + BK of the 64 rows behind `row` (null past the edge), zero past K.
template <typename RowFn>
__device__ __forceinline__ void stage_f32(F32Slice& slice, const RowFn& row, int k0, int k) {
    for (int i = threadIdx.x; i < 64 * gemm::BK; i += blockDim.x) {
        const int r = i / gemm::BK, kk = i % gemm::BK;
        const auto* src = row(r);
        slice.v[kk][r] = src != nullptr && k0 + kk < k ? widen(src[k0 + kk]) : 0.0f;
    }
}

// The 64 x 64 tile of C = A B^T over all of K in gemm_tile.cuh's accumulator layout (see
// gemm::for_each_output): lane (g, t) of warp w owns rows (w / 2) * 32 + 16 i + g + 8 h and
// columns (w % 2) * 32 + 8 j + 2 t + c, and adds x * w one k at a time, k increasing.
template <typename ARows, typename BRows>
__device__ __forceinline__ void fma_tile(const ARows& a, const BRows& b, int k, float acc[2][4][4]) {
    __shared__ F32Slice a_slice, b_slice;
    const gemm::LanePosition p = gemm::lane_position();
    gemm::zero_accumulators(acc);
    for (int k0 = 0; k0 < k; k0 += gemm::BK) {
        // The previous step's reads are done before the slices are overwritten.
        __syncthreads();
        stage_f32(a_slice, a, k0, k);
        stage_f32(b_slice, b, k0, k);
        __syncthreads();
        // By 4: unrolled fully (or not at all) ptxas spills in the grouped kernels.
        MARC_UNROLL_4
        for (int kk = 0; kk < gemm::BK; ++kk) {
            float rows[2][2], cols[4][2];
            MARC_UNROLL
            for (int i = 0; i < 2; ++i) {
                MARC_UNROLL
                for (int h = 0; h < 2; ++h) rows[i][h] = a_slice.v[kk][p.warp_row + 16 * i + p.g + 8 * h];
            }
            MARC_UNROLL
            for (int j = 0; j < 4; ++j) {
                MARC_UNROLL
                for (int c = 0; c < 2; ++c) cols[j][c] = b_slice.v[kk][p.warp_col + 8 * j + 2 * p.t + c];
            }
            MARC_UNROLL
            for (int i = 0; i < 2; ++i) {
                MARC_UNROLL
                for (int j = 0; j < 4; ++j) {
                    MARC_UNROLL
                    for (int r = 0; r < 4; ++r) acc[i][j][r] = fmaf(rows[i][r / 2], cols[j][r % 2], acc[i][j][r]);
                }
            }
        }
    }
}

// x: f32 [M, K]; w: [N, K] of W (f32, or f16 bits); bias [N] or null; y [M, N].
template <typename W>
__device__ __forceinline__ void gemm_float(const float* x, const W* w, const float* bias, int m, int n, int k,
                                           float* y) {
    const int row0 = blockIdx.y * gemm::BM, col0 = blockIdx.x * gemm::BN;
    float acc[2][4][4];
    fma_tile(gemm::DenseRows<float>{x, row0, m, k}, gemm::DenseRows<W>{w, col0, n, k}, k, acc);
    gemm::store_scaled(acc, row0, col0, m, n, 1.0f, bias, y);
}

// The MoE experts' grouped GEMM on float weights (gemm_bf16.cu's grouped_gemm_bf16_f32): for
// every routing entry i = t * top_k + slot that picked expert e, out[i] = a[t] W_e^T.
// w: [E, N, K]; out [tokens * top_k, N].
template <typename W>
__device__ __forceinline__ void grouped_gemm_float(const float* a, const int* sorted, const int* offsets,
                                                   int num_experts, int top_k, const W* w, int n, int k, float* out) {
    const gemm::GroupedTile tile = gemm::grouped_tile(offsets, num_experts);
    const W* w_e = w + size_t(tile.expert) * n * k;
    float acc[2][4][4];
    fma_tile(gemm::GatheredRows<float>{a, sorted, tile.row0, top_k, k}, gemm::DenseRows<W>{w_e, tile.col0, n, k}, k,
             acc);
    gemm::store_by_entry(acc, tile, sorted, n, 1.0f, 0, out);
}

}  // namespace

// Times 1.0 in the epilogues is exact: y is the sum as accumulated (plus the bias).

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    gemm_f32_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, int m, int n,
                 int k, float* __restrict__ y) {
    gemm_float(x, w, bias, m, n, k, y);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    gemm_f16_f32(const float* __restrict__ x, const unsigned short* __restrict__ w, const float* __restrict__ bias,
                 int m, int n, int k, float* __restrict__ y) {
    gemm_float(x, w, bias, m, n, k, y);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    grouped_gemm_f32_f32(const float* __restrict__ a, const int* __restrict__ sorted, const int* __restrict__ offsets,
                         int num_experts, int top_k, const float* __restrict__ w, int n, int k,
                         float* __restrict__ out) {
    grouped_gemm_float(a, sorted, offsets, num_experts, top_k, w, n, k, out);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    grouped_gemm_f16_f32(const float* __restrict__ a, const int* __restrict__ sorted, const int* __restrict__ offsets,
                         int num_experts, int top_k, const unsigned short* __restrict__ w, int n, int k,
                         float* __restrict__ out) {
    grouped_gemm_float(a, sorted, offsets, num_experts, top_k, w, n, k, out);
}
