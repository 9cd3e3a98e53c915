// NVFP4 GEMMs, y[M, N] = x[M, K] W[N, K]^T (+ bias), with W as ModelOpt's checkpoints store it:
// packed U8 [N, K / 2] (element 2i in the low nibble), E4M3 block scales [N, K / 16] and one f32
// tensor scale (weight_scale_2). CPU twin: marc_kernels::matmul on PackedMatrix::from_nvfp4, in
// its two precisions. K must be a multiple of 16 (the format's block; checked at load).
//
// * gemm_nvfp4_w4a16_f32 (W4A16, for sm_90, where no FP4 tensor core exists, as vLLM runs NVFP4
//   on Hopper): x is f32 in memory and rounded to bf16 when staged to shared memory; the weights
//   cross memory packed and are decoded in the fragment registers to e2m1 x block scale, which is
//   exact in bf16, so the bf16 mma.sync sees the weights exactly; f32 accumulation; the tensor
//   scale and the bias in the epilogue (y = acc * tensor_scale + bias, as the CPU's order).
//   Against the CPU's W4A16 (f32 activations) the only difference beyond f32 rounding is the bf16
//   rounding of x, relative 2^-9 per activation.
//
// * nvfp4_quantize_f32 + gemm_nvfp4_w4a4_f32 (W4A4, MatmulPrecision::Nvfp4Activations): x is
//   quantised to NVFP4 with the layer's static input_scale (ModelOpt's rule, bitwise the CPU's
//   quantize_blocks), then both NVFP4 operands meet in the block-scaled product: per element
//   e2m1 x e4m3 scale on both sides, every product exact, f32 accumulation, then
//   y = acc * (input_scale * tensor_scale) + bias. On sm_100a the hardware instruction for this is
//   tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X (operands in shared
//   memory through matrix descriptors, scales and accumulators in tensor memory); that version is
//   not written (docs/gpu.md says what it needs). This kernel is the portable path, compiled for
//   sm_90a and sm_100a alike: each operand decoded in registers to e2m1 x its block scale, exact
//   in bf16 (at most 6 significant bits), then the bf16 mma.sync. So it computes what the FP4
//   instruction computes (exact E2M1 x E2M1 products scaled per 16-block by both UE4M3 scales,
//   summed in f32), with the sum's association fixed by mma's k-steps rather than per block.
//
// Packed operands are read as 32-bit words, so their base pointers must be 4-byte aligned
// (cudaMalloc's are; a row is K / 2 bytes, a multiple of 8). The grouped expert GEMMs, W4A16 and
// W4A4, are at the end of the file.
//
// Tiling: include/gemm_tile.cuh (64 x 64 tile of y per block, 4 warps, K 32 at a time through
// shared memory). Launch (GEMMs): grid (ceil(N / 64), ceil(M / 64)), 128 threads; static shared
// memory 5 KiB (bf16 x) or 1.1 KiB (NVFP4 x) + 1.1 KiB (NVFP4 W).
//
// Roofline (one W4A16 call, H100): weights 0.5625 N K bytes, x 4 M K, y 4 M N; 2 M N K FLOP on
// the bf16 tensor cores. At M = 1 a call is bound by reading the weights (3.6x fewer bytes than
// bf16); see docs/gpu.md.

#include "gemm_tile.cuh"

namespace gemm = marc::gemm;

namespace {

// An NVFP4 [rows, K] matrix; row(r) is null past `rows`.
struct Nvfp4Matrix {
    const unsigned char* packed;
    const unsigned char* scales;
    int rows, k;
    __device__ __forceinline__ gemm::Nvfp4Row row(int r) const {
        if (r >= rows) return {nullptr, nullptr};
        return {packed + size_t(r) * (k / 2), scales + size_t(r) * (k / 16)};
    }
};

}  // namespace

// x: f32 [M, K]; w_packed [N, K / 2], w_scales [N, K / 16] (E4M3); bias [N] or null; y [M, N].
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    gemm_nvfp4_w4a16_f32(const float* __restrict__ x, const unsigned char* __restrict__ w_packed,
                         const unsigned char* __restrict__ w_scales, float tensor_scale,
                         const float* __restrict__ bias, int m, int n, int k, float* __restrict__ y) {
    const int row0 = blockIdx.y * gemm::BM, col0 = blockIdx.x * gemm::BN;
    const Nvfp4Matrix w{w_packed, w_scales, n, k};
    float acc[2][4][4];
    gemm::mma_tile(gemm::operand<gemm::F32Rows>(gemm::DenseRows<float>{x, row0, m, k}),
                   gemm::operand<gemm::Nvfp4Rows>([&](int col) { return w.row(col0 + col); }), k, acc);
    gemm::store_scaled(acc, row0, col0, m, n, tensor_scale, bias, y);
}

// Quantises x [rows, K] to NVFP4 with the static input_scale: packed [rows, K / 2] and E4M3
// scales [rows, K / 16], the weights' layout. One thread per 16-element block (a row's blocks
// are consecutive, so a warp reads 2 KiB contiguously); marc::nvfp4_quantize_block (quant.cuh)
// is the CPU's quantiser operation for operation, so the bytes are the CPU's.
// Launch: grid ceil(rows * K / 16 / 256), 256 threads. Memory-bound: 4 bytes read per 0.5625
// written.
#define QUANTIZE_THREADS 256
extern "C" __global__ void __launch_bounds__(QUANTIZE_THREADS)
    nvfp4_quantize_f32(const float* __restrict__ x, int rows, int k, float input_scale,
                       unsigned char* __restrict__ packed, unsigned char* __restrict__ scales) {
    const size_t block = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (block >= size_t(rows) * (k / 16)) return;
    const marc::Nvfp4Block q = marc::nvfp4_quantize_block(x + block * 16, input_scale);
    scales[block] = static_cast<unsigned char>(q.scale);
    MARC_UNROLL
    for (int i = 0; i < 8; ++i) packed[block * 8 + i] = static_cast<unsigned char>(q.packed[i / 4] >> (8 * (i % 4)));
}

// x_packed [M, K / 2], x_scales [M, K / 16]: x quantised by nvfp4_quantize_f32 with input_scale;
// w as for W4A16; bias [N] or null; y [M, N].
extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    gemm_nvfp4_w4a4_f32(const unsigned char* __restrict__ x_packed, const unsigned char* __restrict__ x_scales,
                        float input_scale, const unsigned char* __restrict__ w_packed,
                        const unsigned char* __restrict__ w_scales, float tensor_scale,
                        const float* __restrict__ bias, int m, int n, int k, float* __restrict__ y) {
    const int row0 = blockIdx.y * gemm::BM, col0 = blockIdx.x * gemm::BN;
    const Nvfp4Matrix x{x_packed, x_scales, m, k}, w{w_packed, w_scales, n, k};
    float acc[2][4][4];
    gemm::mma_tile(gemm::operand<gemm::Nvfp4Rows>([&](int r) { return x.row(row0 + r); }),
                   gemm::operand<gemm::Nvfp4Rows>([&](int col) { return w.row(col0 + col); }), k, acc);
    // One rounded product of the two scales, as the CPU's Tile::scale.
    gemm::store_scaled(acc, row0, col0, m, n, input_scale * tensor_scale, bias, y);
}

// The MoE experts' grouped GEMMs with NVFP4 experts, gemm_bf16.cu's grouped_gemm_bf16_f32 on
// NVFP4 weights: for every routing entry i = t * top_k + slot that picked expert e,
// out[i] = act(a[t] W_e^T * scale_e), act = relu2 (relu(v)^2, the experts' activation, fused for
// the up projection) when `relu2` is non-zero, else none (the down projection). Rows are gathered
// by token and scattered by entry through moe_routing.cu's padded permutation (`sorted`,
// `offsets`), one expert per 64-row tile. a: f32 [tokens, K]; w_packed [E, N, K / 2], w_scales
// [E, N, K / 16], tensor_scales [E]; out [tokens * top_k, N]. Experts without bias (Nemotron's).
// Launch: grid (ceil(N / 64), offsets[E] / 64), 128 threads.
//
// * grouped_gemm_nvfp4_w4a16_f32: a rounded to bf16 when staged; scale_e = tensor_scales[e].
// * grouped_gemm_nvfp4_w4a4_f32: each expert quantises its rows of a with its own input_scale
//   (input_scales [E]) while staging them (QuantisingRows), then the block-scaled product as in
//   gemm_nvfp4_w4a4_f32; scale_e = input_scales[e] * tensor_scales[e]. Every column block of a
//   row tile quantises the same rows again (ceil(N / 64) times): 16 divisions per 16 x 64 x 2
//   FLOP of the tile, against a pass that would write and re-read a per-entry quantised copy.

namespace {

// A grouped tile (gemm_tile.cuh) and its expert's NVFP4 weights.
struct ExpertTile {
    gemm::GroupedTile at;
    Nvfp4Matrix w;
};

__device__ __forceinline__ ExpertTile expert_tile(const int* offsets, int num_experts, const unsigned char* w_packed,
                                                  const unsigned char* w_scales, int n, int k) {
    const gemm::GroupedTile at = gemm::grouped_tile(offsets, num_experts);
    const size_t e = at.expert;
    return {at, {w_packed + e * n * (k / 2), w_scales + e * n * (k / 16), n, k}};
}

}  // namespace

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    grouped_gemm_nvfp4_w4a16_f32(const float* __restrict__ a, const int* __restrict__ sorted,
                                 const int* __restrict__ offsets, int num_experts, int top_k,
                                 const unsigned char* __restrict__ w_packed, const unsigned char* __restrict__ w_scales,
                                 const float* __restrict__ tensor_scales, int n, int k, int relu2,
                                 float* __restrict__ out) {
    const ExpertTile tile = expert_tile(offsets, num_experts, w_packed, w_scales, n, k);
    float acc[2][4][4];
    const gemm::GatheredRows<float> tokens{a, sorted, tile.at.row0, top_k, k};
    gemm::mma_tile(gemm::operand<gemm::F32Rows>(tokens),
                   gemm::operand<gemm::Nvfp4Rows>([&](int col) { return tile.w.row(tile.at.col0 + col); }), k, acc);
    gemm::store_by_entry(acc, tile.at, sorted, n, tensor_scales[tile.at.expert], relu2, out);
}

extern "C" __global__ void __launch_bounds__(gemm::THREADS)
    grouped_gemm_nvfp4_w4a4_f32(const float* __restrict__ a, const int* __restrict__ sorted,
                                const int* __restrict__ offsets, int num_experts, int top_k,
                                const unsigned char* __restrict__ w_packed, const unsigned char* __restrict__ w_scales,
                                const float* __restrict__ tensor_scales, const float* __restrict__ input_scales, int n,
                                int k, int relu2, float* __restrict__ out) {
    const ExpertTile tile = expert_tile(offsets, num_experts, w_packed, w_scales, n, k);
    const float input_scale = input_scales[tile.at.expert];
    float acc[2][4][4];
    const gemm::GatheredRows<float> tokens{a, sorted, tile.at.row0, top_k, k};
    gemm::mma_tile(gemm::operand<gemm::QuantisingRows>(tokens, input_scale),
                   gemm::operand<gemm::Nvfp4Rows>([&](int col) { return tile.w.row(tile.at.col0 + col); }), k, acc);
    gemm::store_by_entry(acc, tile.at, sorted, n, input_scale * tensor_scales[tile.at.expert], relu2, out);
}
