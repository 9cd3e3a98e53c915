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
//   memory through matrix descriptors, scales and accumulators in tensor memory):
//   gemm_nvfp4_w4a4_tcgen05_f32 below, which the host launches on compute capability 10.x and
//   which has run only in the CPU emulation. gemm_nvfp4_w4a4_f32 is the portable path, compiled for
//   sm_90a and sm_100a alike: each operand decoded in registers to e2m1 x its block scale, exact
//   in bf16 (at most 6 significant bits), then the bf16 mma.sync. So it computes what the FP4
//   instruction computes (exact E2M1 x E2M1 products scaled per 16-block by both UE4M3 scales,
//   summed in f32), with the sum's association fixed by mma's k-steps rather than per block.
//
// Packed operands are read as 32-bit words, so their base pointers must be 4-byte aligned
// (cudaMalloc's are; a row is K / 2 bytes, a multiple of 8). The grouped expert GEMMs, W4A16 and
// W4A4, follow; the tcgen05 W4A4 GEMMs (dense and grouped) and the one-MMA probe are at the end
// of the file.
//
// Tiling: include/gemm_tile.cuh (64 x 64 tile of y per block, 4 warps, K 32 at a time through
// shared memory). Launch (GEMMs): grid (ceil(N / 64), ceil(M / 64)), 128 threads; static shared
// memory 5 KiB (bf16 x) or 1.1 KiB (NVFP4 x) + 1.1 KiB (NVFP4 W).
//
// Roofline (one W4A16 call, H100): weights 0.5625 N K bytes, x 4 M K, y 4 M N; 2 M N K FLOP on
// the bf16 tensor cores. At M = 1 a call is bound by reading the weights (3.6x fewer bytes than
// bf16); see docs/gpu.md.

#include "gemm_tile.cuh"
#include "tcgen05.cuh"

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
//   On compute capability 10.x the host runs grouped_gemm_nvfp4_w4a4_tcgen05_f32 instead (after
//   the dense tcgen05 kernel below), the same contract on the FP4 tensor cores.

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

// ---------------------------------------------------------------------------------------------
// W4A4 on Blackwell's FP4 tensor cores: gemm_nvfp4_w4a4_tcgen05_f32, the contract of
// gemm_nvfp4_w4a4_f32 (same parameters, same result to f32 rounding) computed with
// tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X (include/tcgen05.cuh says
// which PTX ISA facts each step relies on).
//
// One block of 128 threads (one warpgroup) owns a 128 x 64 tile of y, the instruction's
// M = 128 x N = 64, with the accumulator in tensor memory. K goes 256 at a time (a stage): every
// thread copies its share of the stage's packed x and W rows into shared memory in the canonical
// K-major layout without swizzling (8-row x 16-byte core matrices; the next 32 elements of K the
// adjacent core matrix, LBO = 128 bytes; the next 8 rows SBO = 1024 bytes on), and every warp
// writes the stage's E4M3 block scales into its own lane quarter of tensor memory with
// tcgen05.st, in the scale_vec::4X layout (each warp the same words: the ISA asks for the scales
// in all four quarters). Thread 0 then issues the stage's four K = 64 MMAs (fewer on the last,
// partial stage) and commits them to an mbarrier, which the whole block waits on before the next
// stage overwrites the operands. Past M, N and K everything is zero (E2M1 code 0, scale 0), which
// contributes exactly 0. The epilogue reads each warp's 32 rows of the accumulator with
// tcgen05.ld and writes y = acc * (input_scale * tensor_scale) + bias, as the portable kernel.
//
// One stage in flight at a time: the copies, the tensor core and the epilogue do not overlap
// (no TMA, no multi-stage pipeline, no warp specialisation), so this is a correct base rather
// than a fast kernel; the loads of one stage are coalesced (a warp reads 128 contiguous bytes of
// a row), the epilogue's stores are not (a thread owns a row).
//
// Launch: grid (ceil(N / 64), ceil(M / 128)), 128 threads, 24 KiB of dynamic shared memory
// (TC_SHARED_BYTES, under the 48 KiB default, so no attribute is needed); 128 columns of tensor
// memory per block (64 accumulator + 16 + 16 scale columns, rounded up to a power of 2).
// Compiled for every architecture; only sm_100a / sm_103a have the instructions,
// elsewhere the kernel traps and the host never launches it (ops.rs launches it only on compute
// capability 10.x). Packed operands are read as 32-bit words, as by the portable kernel.
#define TC_BM 128
#define TC_BN 64
#define TC_BK 256
#define TC_THREADS 128
#define TC_SHARED_BYTES ((TC_BM + TC_BN) * TC_BK / 2)
#define TC_TMEM_COLUMNS 128

// The helpers exist only where tcgen05 does (sm_10xa and the CPU model).
#if MARC_HAS_TCGEN05
namespace {

namespace tc = marc::tc;

// MMAs (K = 64 each) per stage.
constexpr unsigned TC_MMAS = TC_BK / 64;
// A core matrix: 8 rows x 16 bytes (32 E2M1 elements).
constexpr unsigned TC_CORE_BYTES = 128;
// Leading byte offset: the next 32 elements of K are the adjacent core matrix.
constexpr unsigned TC_LBO = TC_CORE_BYTES;
// Stride byte offset: the next 8 rows come after one row group's TC_BK / 32 core matrices.
constexpr unsigned TC_SBO = TC_BK / 32 * TC_CORE_BYTES;
// Tensor-memory columns: the f32 accumulator (TC_BN), then 4 scale columns per MMA for A and B.
constexpr unsigned TC_SFA_COLUMN = TC_BN, TC_SFB_COLUMN = TC_BN + 4 * TC_MMAS;
static_assert(TC_SFB_COLUMN + 4 * TC_MMAS <= TC_TMEM_COLUMNS, "the tensor-memory columns fit the allocation");

// Where 16-byte chunk `chunk` (K elements 32 chunk .. 32 chunk + 31 of the stage) of tile row
// `row` lives: the canonical K-major layout ((8,m),(32,2k)):((32,SBO),(1,LBO)) in elements.
__device__ __forceinline__ unsigned tc_chunk_offset(unsigned row, unsigned chunk) {
    return (row / 8) * TC_SBO + chunk * TC_LBO + (row % 8) * 16;
}

// Copies tile rows 0 .. ROWS and K k0 .. k0 + TC_BK of packed NVFP4 rows into `tile`: `row(r)`
// is the packed row (K / 2 bytes) behind tile row r, or null past the edge; zero there and past
// `k`. One 32-bit word (8 elements) per thread and step; the 32 words of a tile row are
// consecutive threads, so a warp reads one row's 128 bytes.
template <unsigned ROWS, typename RowFn>
__device__ __forceinline__ void tc_stage_operand(unsigned char* tile, const RowFn& row, int k, int k0) {
    constexpr unsigned WORDS = TC_BK / 8;
    for (unsigned i = threadIdx.x; i < ROWS * WORDS; i += TC_THREADS) {
        const unsigned r = i / WORDS, w = i % WORDS;
        const unsigned char* src = row(r);
        const int kk = k0 + int(w) * 8;
        unsigned v = 0u;
        if (src != nullptr && kk < k) v = *reinterpret_cast<const unsigned*>(src + kk / 2);
        *reinterpret_cast<unsigned*>(tile + tc_chunk_offset(r, w / 4) + (w % 4) * 4) = v;
    }
}

// The row function of a dense packed NVFP4 matrix [rows, K / 2] for the tile starting at row0.
struct TcPackedRows {
    const unsigned char* packed;
    int row0, rows, k;
    __device__ __forceinline__ const unsigned char* operator()(unsigned r) const {
        const int row = row0 + int(r);
        return row < rows ? packed + size_t(row) * (k / 2) : nullptr;
    }
};

// The scale function of a dense E4M3 scale matrix [rows, K / 16] for the tile starting at row0:
// the scale of tile row r's absolute K block `block`, 0 past the edges.
struct TcDenseScales {
    const unsigned char* scales;
    int row0, rows, k;
    __device__ __forceinline__ unsigned operator()(unsigned r, int block) const {
        const int row = row0 + int(r), blocks = k / 16;
        return row < rows && block < blocks ? scales[size_t(row) * blocks + block] : 0u;
    }
};

// Quantises tile rows 0 .. ROWS and K k0 .. k0 + TC_BK of f32 rows to NVFP4 with
// `input_scale` (nvfp4_quantize_block, bitwise the CPU's quantiser) into `tile` in the layout
// tc_stage_operand writes, and their E4M3 scales into `scales` (stage block b of row r at
// scales[r][b]) for tc_stage_scales to read through TcStagedScales, after a __syncthreads.
// `row(r)` is the K-long f32 row behind tile row r, or null (code 0, scale 0 there and past K).
// One 16-block per thread and step: a row's 16 blocks are 16 consecutive threads, so a warp reads
// two rows' 1 KiB of the stage contiguously.
template <unsigned ROWS, typename RowFn>
__device__ __forceinline__ void tc_stage_quantised(unsigned char* tile, unsigned char (*scales)[TC_BK / 16],
                                                   const RowFn& row, float input_scale, int k, int k0) {
    constexpr unsigned BLOCKS = TC_BK / 16;
    static_assert(ROWS * BLOCKS % TC_THREADS == 0, "every thread quantises the same number of blocks");
    // Unrolled: as a loop (rolled or partly unrolled) around the quantiser's f32 divisions,
    // ptxas spilled a register (4 bytes, an 8-byte stack frame) on sm_100a.
    MARC_UNROLL
    for (unsigned step = 0; step < ROWS * BLOCKS / TC_THREADS; ++step) {
        const unsigned i = step * TC_THREADS + threadIdx.x, r = i / BLOCKS, b = i % BLOCKS;
        const float* src = row(int(r));
        const int first = k0 + int(b) * 16;
        marc::Nvfp4Block q = {0u, {0u, 0u}};
        if (src != nullptr && first < k) q = marc::nvfp4_quantize_block(src + first, input_scale);
        // Block b is the second half (8 bytes) of 16-byte chunk b / 2 when b is odd.
        unsigned* dst = reinterpret_cast<unsigned*>(tile + tc_chunk_offset(r, b / 2) + (b % 2) * 8);
        dst[0] = q.packed[0];
        dst[1] = q.packed[1];
        scales[r][b] = static_cast<unsigned char>(q.scale);
    }
}

// The scale function (see tc_stage_scales) of scales staged by tc_stage_quantised for the stage
// whose first K block is block0.
struct TcStagedScales {
    const unsigned char (*scales)[TC_BK / 16];
    int block0;
    __device__ __forceinline__ unsigned operator()(unsigned r, int block) const { return scales[r][block - block0]; }
};

// Writes the stage's block scales of tile rows 0 .. tile_rows to tensor-memory columns
// column .. column + 15 in the scale_vec::4X layout (tcgen05.cuh, fact 8): MMA i's columns
// column + 4 i + j hold rows 32 j + lane, byte b the scale of the MMA's K block b. `scale(r,
// block)` is tile row r's scale of absolute K block `block` (0 past the edges). Every warp writes
// the same words into its own lane quarter.
template <typename ScaleFn>
__device__ __forceinline__ void tc_stage_scales(unsigned tmem, unsigned column, const ScaleFn& scale, int tile_rows,
                                                int k0) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int block0 = k0 / 16;
    unsigned words[16];
    MARC_UNROLL
    for (unsigned i = 0; i < TC_MMAS; ++i) {
        MARC_UNROLL
        for (unsigned j = 0; j < 4; ++j) {
            const unsigned r = 32 * j + lane;
            unsigned word = 0u;
            MARC_UNROLL
            for (unsigned b = 0; b < 4; ++b) {
                if (int(r) < tile_rows) word |= scale(r, block0 + int(4 * i + b)) << (8 * b);
            }
            words[4 * i + j] = word;
        }
    }
    tc::store_32x32b_x16(tc::tmem_address(tmem, 32 * (warp % 4), column), words);
}

// Allocates the block's tensor memory (warp 0) and initialises the MMA mbarrier (thread 0);
// returns the tensor-memory base address, visible to every thread.
__device__ __forceinline__ unsigned tc_setup(unsigned* tmem_slot, unsigned long long* mma_done) {
    if (threadIdx.x / 32 == 0) {
        tc::alloc(tmem_slot, TC_TMEM_COLUMNS);
        tc::relinquish_alloc_permit();
    }
    if (threadIdx.x == 0) tc::mbarrier_init(mma_done, 1);
    tc::fence_before_thread_sync();
    __syncthreads();
    tc::fence_after_thread_sync();
    return *tmem_slot;
}

// Makes this thread's operand and scale writes visible to the tensor core, then thread 0 issues
// `mmas` MMAs through `issue(i)` and commits them; every thread waits for their completion.
template <typename Issue>
__device__ __forceinline__ void tc_run_mmas(unsigned long long* mma_done, unsigned& phase, Issue issue) {
    tc::wait_st();
    tc::fence_proxy_async_shared();
    tc::fence_before_thread_sync();
    __syncthreads();
    if (threadIdx.x == 0) {
        tc::fence_after_thread_sync();
        issue();
        tc::commit(mma_done);
    }
    tc::mbarrier_wait(mma_done, phase);
    phase ^= 1u;
    tc::fence_after_thread_sync();
}

// Thread 0's MMAs of the stage at k0: MMA i covers the stage's core-matrix columns 2 i and
// 2 i + 1 (K = 64); none past K. The first of the first stage overwrites the accumulator.
__device__ __forceinline__ void tc_issue_stage(unsigned tmem, unsigned a_base, unsigned b_base, unsigned idesc, int k,
                                               int k0) {
    for (unsigned i = 0; i < TC_MMAS && k0 + 64 * int(i) < k; ++i) {
        tc::mma_mxf4nvf4(tmem, tc::smem_descriptor(a_base + 2 * i * TC_LBO, TC_LBO, TC_SBO),
                         tc::smem_descriptor(b_base + 2 * i * TC_LBO, TC_LBO, TC_SBO), idesc,
                         tmem + TC_SFA_COLUMN + 4 * i, tmem + TC_SFB_COLUMN + 4 * i, k0 > 0 || i > 0);
    }
}

// Frees the block's tensor memory once every warp's tcgen05.ld has completed.
__device__ __forceinline__ void tc_teardown(unsigned tmem) {
    tc::fence_before_thread_sync();
    __syncthreads();
    if (threadIdx.x / 32 == 0) {
        tc::fence_after_thread_sync();
        tc::dealloc(tmem, TC_TMEM_COLUMNS);
    }
}

}  // namespace
#endif

// Parameters as gemm_nvfp4_w4a4_f32's.
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    gemm_nvfp4_w4a4_tcgen05_f32(const unsigned char* __restrict__ x_packed, const unsigned char* __restrict__ x_scales,
                                float input_scale, const unsigned char* __restrict__ w_packed,
                                const unsigned char* __restrict__ w_scales, float tensor_scale,
                                const float* __restrict__ bias, int m, int n, int k, float* __restrict__ y) {
#if MARC_HAS_TCGEN05
    MARC_DYNAMIC_SHARED_FLOATS(shared);
    unsigned char* a_tile = reinterpret_cast<unsigned char*>(shared);
    unsigned char* b_tile = a_tile + TC_BM * TC_BK / 2;
    __shared__ unsigned long long mma_done;
    __shared__ unsigned tmem_slot;
    const int row0 = blockIdx.y * TC_BM, col0 = blockIdx.x * TC_BN;
    const unsigned tmem = tc_setup(&tmem_slot, &mma_done);
    const unsigned idesc = tc::instr_descriptor_mxf4nvf4(TC_BM, TC_BN);
    const unsigned a_base = tc::shared_address(a_tile), b_base = tc::shared_address(b_tile);
    unsigned phase = 0u;
    for (int k0 = 0; k0 < k; k0 += TC_BK) {
        tc_stage_operand<TC_BM>(a_tile, TcPackedRows{x_packed, row0, m, k}, k, k0);
        tc_stage_operand<TC_BN>(b_tile, TcPackedRows{w_packed, col0, n, k}, k, k0);
        tc_stage_scales(tmem, TC_SFA_COLUMN, TcDenseScales{x_scales, row0, m, k}, TC_BM, k0);
        tc_stage_scales(tmem, TC_SFB_COLUMN, TcDenseScales{w_scales, col0, n, k}, TC_BN, k0);
        tc_run_mmas(&mma_done, phase, [&] { tc_issue_stage(tmem, a_base, b_base, idesc, k, k0); });
    }
    // Warp w holds rows 32 w .. 32 w + 31 of the accumulator (its lane quarter).
    const unsigned warp = threadIdx.x / 32;
    const int row = row0 + int(32 * warp + threadIdx.x % 32);
    // One rounded product of the two scales, as the CPU's Tile::scale.
    const float scale = input_scale * tensor_scale;
    for (unsigned c0 = 0; c0 < TC_BN; c0 += 16) {
        unsigned acc[16];
        tc::load_32x32b_x16(tc::tmem_address(tmem, 32 * warp, c0), acc);
        MARC_UNROLL
        for (unsigned j = 0; j < 16; ++j) {
            const int column = col0 + int(c0 + j);
            if (row >= m || column >= n) continue;
            const float scaled = __uint_as_float(acc[j]) * scale;
            y[size_t(row) * n + column] = bias != nullptr ? scaled + bias[column] : scaled;
        }
    }
    tc_teardown(tmem);
#else
    __trap();
#endif
}

// grouped_gemm_nvfp4_w4a4_tcgen05_f32: the contract of grouped_gemm_nvfp4_w4a4_f32 (same
// parameters, same result to f32 rounding) on the FP4 tensor cores, with the dense kernel's
// stages, MMAs and tensor-memory handling. A block owns one 64-row tile of the routing's padded
// permutation (one expert, as gemm::grouped_tile finds it) and 64 output columns; each stage
// gathers its rows by token and quantises them with the expert's input scale into the A tile
// (tc_stage_quantised), the scales passing through shared memory into tensor memory; W is
// staged as by the dense kernel. The epilogue reads the accumulator one row per thread and
// scatters it by routing entry with the optional relu2, as gemm::store_by_entry does.
//
// The MMA's M is 128 but the routing pads each expert's segment to 64 rows (the portable
// kernel's tile), so rows 64 .. 127 of A are zero (code 0 from a single fill, scale 0): half of
// every MMA multiplies zeros, and warps 2 and 3 have no rows to store. That halves the tensor
// core's useful work per instruction and keeps the grid (ceil(N / 64), offsets[E] / 64) and
// the routing kernel shared with the portable path. Padding segments to 128 rows instead would
// fill the MMA (one block per 128 routed rows, half the blocks, each W stage staged once per
// 128 rows instead of 64) at the price of up to 127 padding rows per used expert instead of 63,
// of a routing shared by both kernels padded to the larger tile, and of a grid of
// offsets[E] / 128; at decode batch sizes most experts hold a few rows, so the zero rows are
// paid either way. Shared memory and tensor memory as the dense kernel (the same
// TC_SHARED_BYTES of dynamic shared memory, 128 columns) plus 1 KiB of static shared memory for
// the quantised scales.
#define TC_GROUPED_ROWS 64

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    grouped_gemm_nvfp4_w4a4_tcgen05_f32(const float* __restrict__ a, const int* __restrict__ sorted,
                                        const int* __restrict__ offsets, int num_experts, int top_k,
                                        const unsigned char* __restrict__ w_packed,
                                        const unsigned char* __restrict__ w_scales,
                                        const float* __restrict__ tensor_scales,
                                        const float* __restrict__ input_scales, int n, int k, int relu2,
                                        float* __restrict__ out) {
#if MARC_HAS_TCGEN05
    static_assert(TC_GROUPED_ROWS == gemm::BM && TC_BN == gemm::BN, "one routing tile and gemm::grouped_tile's columns");
    MARC_DYNAMIC_SHARED_FLOATS(shared);
    unsigned char* a_tile = reinterpret_cast<unsigned char*>(shared);
    unsigned char* b_tile = a_tile + TC_BM * TC_BK / 2;
    __shared__ unsigned long long mma_done;
    __shared__ unsigned tmem_slot;
    __shared__ unsigned char a_scales[TC_GROUPED_ROWS][TC_BK / 16];
    const ExpertTile tile = expert_tile(offsets, num_experts, w_packed, w_scales, n, k);
    const float input_scale = input_scales[tile.at.expert];
    const unsigned tmem = tc_setup(&tmem_slot, &mma_done);
    const unsigned idesc = tc::instr_descriptor_mxf4nvf4(TC_BM, TC_BN);
    const unsigned a_base = tc::shared_address(a_tile), b_base = tc::shared_address(b_tile);
    // Rows 64 .. 127 of A, row groups 8 .. 15: contiguous from 8 SBO, written once; the first
    // stage's fences and barrier (tc_run_mmas) publish them with the first operands.
    unsigned* a_zero = reinterpret_cast<unsigned*>(a_tile + TC_GROUPED_ROWS / 8 * TC_SBO);
    for (unsigned i = threadIdx.x; i < (TC_BM - TC_GROUPED_ROWS) * TC_BK / 8; i += TC_THREADS) a_zero[i] = 0u;
    const gemm::GatheredRows<float> tokens{a, sorted, tile.at.row0, top_k, k};
    const TcDenseScales weight_scales{tile.w.scales, tile.at.col0, n, k};
    unsigned phase = 0u;
    for (int k0 = 0; k0 < k; k0 += TC_BK) {
        tc_stage_quantised<TC_GROUPED_ROWS>(a_tile, a_scales, tokens, input_scale, k, k0);
        tc_stage_operand<TC_BN>(b_tile, TcPackedRows{tile.w.packed, tile.at.col0, n, k}, k, k0);
        tc_stage_scales(tmem, TC_SFB_COLUMN, weight_scales, TC_BN, k0);
        // Every warp writes all 64 rows' scales to its lane quarter, so it reads what the other
        // warps quantised. (The previous stage's reads of a_scales finished before tc_run_mmas'
        // barrier, so this stage's writes above did not race them.)
        __syncthreads();
        tc_stage_scales(tmem, TC_SFA_COLUMN, TcStagedScales{a_scales, k0 / 16}, TC_GROUPED_ROWS, k0);
        tc_run_mmas(&mma_done, phase, [&] { tc_issue_stage(tmem, a_base, b_base, idesc, k, k0); });
    }
    // Warp w holds rows 32 w .. 32 w + 31 of the accumulator (its lane quarter); warps 2 and 3
    // hold the zero rows (a warp-uniform branch: tcgen05.ld is .sync.aligned).
    const unsigned warp = threadIdx.x / 32;
    if (warp < TC_GROUPED_ROWS / 32) {
        const int entry = sorted[tile.at.row0 + int(threadIdx.x)];
        // One rounded product of the two scales, as the portable kernel and the CPU.
        const float scale = input_scale * tensor_scales[tile.at.expert];
        for (unsigned c0 = 0; c0 < TC_BN; c0 += 16) {
            unsigned acc[16];
            tc::load_32x32b_x16(tc::tmem_address(tmem, 32 * warp, c0), acc);
            MARC_UNROLL
            for (unsigned j = 0; j < 16; ++j) {
                const int column = tile.at.col0 + int(c0 + j);
                if (entry < 0 || column >= n) continue;
                const float y = __uint_as_float(acc[j]) * scale;
                out[size_t(entry) * n + column] = relu2 ? marc::relu2(y) : y;
            }
        }
    }
    tc_teardown(tmem);
#else
    __trap();
#endif
}

// One tcgen05 block-scaled MMA (M = 128, N = n, K = 64) for the emulated test of the descriptor,
// scale and tensor-memory layouts: a_packed [128, 32 bytes] and b_packed [n, 32 bytes] (E2M1,
// row-major, element 2i in the low nibble), a_scales [128, 4] and b_scales [n, 4] (E4M3),
// d [128, n] f32 = (A * scale_A) (B * scale_B)^T. n a multiple of 16, at most 64. Its shared
// layout differs from the GEMM's (a row group's two core matrices adjacent: LBO 128, SBO 256),
// so the model is exercised beyond one choice. flags bit 0 encodes the descriptors with LBO and
// SBO swapped, a deliberate bug the test expects to change the answer.
// Launch: 1 block of 128 threads, (128 + n) * 32 bytes of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    tcgen05_mxf4nvf4_probe(const unsigned char* __restrict__ a_packed, const unsigned char* __restrict__ a_scales,
                           const unsigned char* __restrict__ b_packed, const unsigned char* __restrict__ b_scales,
                           int n, int flags, float* __restrict__ d) {
#if MARC_HAS_TCGEN05
    constexpr unsigned LBO = 128, SBO = 256;
    MARC_DYNAMIC_SHARED_FLOATS(shared);
    unsigned char* a_tile = reinterpret_cast<unsigned char*>(shared);
    unsigned char* b_tile = a_tile + 128 * 32;
    __shared__ unsigned long long mma_done;
    __shared__ unsigned tmem_slot;
    const unsigned tmem = tc_setup(&tmem_slot, &mma_done);
    // 16-byte chunk c of row r at (r / 8) SBO + c LBO + (r % 8) 16, one 32-bit word per step.
    for (int i = threadIdx.x; i < (128 + n) * 8; i += TC_THREADS) {
        const int r = i / 8, w = i % 8;
        const bool is_a = r < 128;
        const int row = is_a ? r : r - 128;
        const unsigned v = *reinterpret_cast<const unsigned*>((is_a ? a_packed : b_packed) + row * 32 + w * 4);
        *reinterpret_cast<unsigned*>((is_a ? a_tile : b_tile) + (row / 8) * SBO + (w / 4) * LBO + (row % 8) * 16 +
                                     (w % 4) * 4) = v;
    }
    // Scales in the 4X layout: columns 64 .. 67 for A, 68 .. 71 for B, rows 32 j + lane.
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    auto scale_word = [](const unsigned char* s) {
        return unsigned(s[0]) | unsigned(s[1]) << 8 | unsigned(s[2]) << 16 | unsigned(s[3]) << 24;
    };
    unsigned words[16];
    MARC_UNROLL
    for (unsigned j = 0; j < 4; ++j) {
        const unsigned r = 32 * j + lane;
        words[j] = scale_word(a_scales + r * 4);
        words[4 + j] = int(r) < n ? scale_word(b_scales + r * 4) : 0u;
        words[8 + j] = words[12 + j] = 0u;
    }
    tc::store_32x32b_x16(tc::tmem_address(tmem, 32 * warp, 64), words);
    unsigned phase = 0u;
    const bool swap = (flags & 1) != 0;
    tc_run_mmas(&mma_done, phase, [&] {
        const unsigned lbo = swap ? SBO : LBO, sbo = swap ? LBO : SBO;
        tc::mma_mxf4nvf4(tmem, tc::smem_descriptor(tc::shared_address(a_tile), lbo, sbo),
                         tc::smem_descriptor(tc::shared_address(b_tile), lbo, sbo),
                         tc::instr_descriptor_mxf4nvf4(128, unsigned(n)), tmem + 64, tmem + 68, false);
    });
    const unsigned row = 32 * warp + lane;
    for (int c0 = 0; c0 < n; c0 += 16) {
        unsigned acc[16];
        tc::load_32x32b_x16(tc::tmem_address(tmem, 32 * warp, unsigned(c0)), acc);
        MARC_UNROLL
        for (int j = 0; j < 16; ++j) d[row * n + c0 + j] = __uint_as_float(acc[j]);
    }
    tc_teardown(tmem);
#else
    __trap();
#endif
}
