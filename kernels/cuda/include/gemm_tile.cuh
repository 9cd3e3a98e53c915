// The tensor-core GEMM tile every marc GEMM is built on: a 64 x 64 block of C = A B^T with f32
// accumulation, on bf16 mma.sync m16n8k16 (mma.cuh), whatever the operands are stored as.
//
// Tiling: 4 warps (2 x 2), each a 32 x 32 sub-tile as 2 x 4 mma fragments (32 f32 accumulators
// per lane). K advances 32 at a time through shared memory. Both operands are "rows along K": A's
// rows are activations, B's are rows of a PyTorch Linear weight ([out, in]), which is exactly
// mma's "col" B operand, so nothing is transposed.
//
// An operand is a small policy (the structs below) that says how one 64 x 32 slice of its rows is
// staged in shared memory and how one fragment register (two consecutive k of one row, as bf16)
// is read back from there:
//   Bf16Rows   bf16 bits, staged as they are;
//   F32Rows    f32, rounded to bf16 (nearest even) when staged (activations for W4A16 / FP8);
//   Nvfp4Rows  packed E2M1 + E4M3 block scales (the checkpoint layout), staged packed and decoded
//              in registers: e2m1 x block scale is exact in bf16;
//   Fp8Rows    E4M3 bytes, staged as bytes and decoded in registers (exact in bf16);
//   QuantisingRows  f32, quantised to NVFP4 when staged (W4A4 with a per-expert input scale),
//              then read as Nvfp4Rows.
// Quantised operands thus cross global and shared memory at their stored width (4.5 or 8 bits)
// and are widened only in the fragment registers, Marlin-style. Every decoded value is exact, so
// a GEMM's only rounding is the f32 accumulation (and the bf16 rounding of F32Rows activations).
//
// Edges: rows past M or N (the row function returns null) and k past K are zero-filled on load,
// and outputs are masked by the caller's store, so any shape works; NVFP4 needs K % 16 == 0 (as
// its format does). Launch: THREADS threads per block.
#pragma once

#include "bf16.cuh"
#include "mma.cuh"
#include "quant.cuh"

namespace marc {
namespace gemm {

constexpr int BM = 64;  // rows of A (and of C) per block
constexpr int BN = 64;  // rows of B (columns of C) per block
constexpr int BK = 32;  // k per shared-memory step
constexpr int THREADS = 128;
static_assert(BM == 64 && BN == 64, "the operand policies stage 64-row slices, for A and B alike");

// Two bf16 at an even k of a bf16 row form one aligned 32-bit word.
__device__ __forceinline__ unsigned bf16_pair(const unsigned short* p) { return *reinterpret_cast<const unsigned*>(p); }

// A 64 x 32 bf16 slice, rows padded by 8 bf16 so the fragment loads (8 rows x 4 words per
// instruction) hit 32 distinct banks. 5 KiB.
struct Bf16Tile {
    __align__(16) unsigned short v[64][BK + 8];
};

// Stages a 64 x BK slice one element at a time: dst[r][kk] = convert(row(r)[k0 + kk]), zero for
// a null row (past the edge) or past K.
template <int COLUMNS, typename T, typename RowFn, typename Convert>
__device__ __forceinline__ void stage_elements(T (&dst)[64][COLUMNS], const RowFn& row, int k0, int k,
                                               Convert convert) {
    for (int i = threadIdx.x; i < 64 * BK; i += blockDim.x) {
        const int r = i / BK, kk = i % BK;
        const auto* src = row(r);
        dst[r][kk] = src != nullptr && k0 + kk < k ? convert(src[k0 + kk]) : T(0);
    }
}

// `row(r)`: the K-long bf16 row behind tile row r, or nullptr past the edge.
template <typename RowFn>
struct Bf16Rows {
    RowFn row;
    using Tile = Bf16Tile;
    __device__ __forceinline__ void stage(Tile& tile, int k0, int k) const {
        stage_elements(tile.v, row, k0, k, [](unsigned short bits) { return bits; });
    }
    __device__ __forceinline__ static unsigned word(const Tile& tile, int r, int kk) {
        return bf16_pair(&tile.v[r][kk]);
    }
};

// `row(r)`: the K-long f32 row behind tile row r, or nullptr. Staging rounds to bf16.
template <typename RowFn>
struct F32Rows {
    RowFn row;
    using Tile = Bf16Tile;
    __device__ __forceinline__ void stage(Tile& tile, int k0, int k) const {
        stage_elements(tile.v, row, k0, k, [](float v) { return __bfloat16_as_ushort(__float2bfloat16(v)); });
    }
    __device__ __forceinline__ static unsigned word(const Tile& tile, int r, int kk) {
        return bf16_pair(&tile.v[r][kk]);
    }
};

// One NVFP4 row: K / 2 bytes (element 2i in the low nibble of byte i) and K / 16 E4M3 scales.
struct Nvfp4Row {
    const unsigned char* packed;
    const unsigned char* scales;
};

// A 64 x 32 NVFP4 slice as stored: 4 words of nibbles and 2 scale bytes per row (1.1 KiB). A
// fragment register is one byte (k and k + 1 of a row), read by the 4 lanes of a group from one
// word (a broadcast); the 8 rows of a load are 4 words apart, so 8 distinct banks: no conflict.
struct Nvfp4Tile {
    __align__(16) unsigned packed[64][BK / 8];
    unsigned char scales[64][BK / 16];
};

// Elements kk and kk + 1 (kk even) of row r of an NVFP4 slice, each e2m1 x its block scale
// (exact in bf16), as one fragment register.
__device__ __forceinline__ unsigned nvfp4_word(const Nvfp4Tile& tile, int r, int kk) {
    const unsigned byte = tile.packed[r][kk / 8] >> (8 * ((kk / 2) % 4)) & 0xffu;
    const float scale = e4m3_to_float(tile.scales[r][kk / 16]);
    return pack_exact_bf16x2(e2m1_to_float(byte) * scale, e2m1_to_float(byte >> 4) * scale);
}

// `row(r)`: the Nvfp4Row behind tile row r, with packed == nullptr past the edge. K % 16 == 0,
// and rows start 8-byte aligned (K / 2 bytes apart), so the nibbles load as 32-bit words.
template <typename RowFn>
struct Nvfp4Rows {
    RowFn row;
    using Tile = Nvfp4Tile;
    __device__ __forceinline__ void stage(Tile& tile, int k0, int k) const {
        for (int i = threadIdx.x; i < 64 * (BK / 8); i += blockDim.x) {
            const int r = i / (BK / 8), w = i % (BK / 8);
            const Nvfp4Row src = row(r);
            const int first = k0 + 8 * w;  // the word's first element
            tile.packed[r][w] = src.packed != nullptr && first < k
                                    ? reinterpret_cast<const unsigned*>(src.packed)[first / 8]
                                    : 0u;
        }
        for (int i = threadIdx.x; i < 64 * (BK / 16); i += blockDim.x) {
            const int r = i / (BK / 16), b = i % (BK / 16);
            const Nvfp4Row src = row(r);
            const int first = k0 + 16 * b;
            tile.scales[r][b] = src.packed != nullptr && first < k ? src.scales[first / 16] : 0;
        }
    }
    __device__ __forceinline__ static unsigned word(const Tile& tile, int r, int kk) {
        return nvfp4_word(tile, r, kk);
    }
};

// `row(r)`: the K-long f32 row behind tile row r, or nullptr; K % 16 == 0. Staging quantises
// each 16-block to NVFP4 with `input_scale` (nvfp4_quantize_block, bitwise the CPU's quantiser),
// one block per thread, into the same slice Nvfp4Rows reads: W4A4 where the quantisation depends
// on the weights (each MoE expert has its own input_scale), so it cannot be done once up front.
template <typename RowFn>
struct QuantisingRows {
    RowFn row;
    float input_scale;
    using Tile = Nvfp4Tile;
    __device__ __forceinline__ void stage(Tile& tile, int k0, int k) const {
        for (int i = threadIdx.x; i < 64 * (BK / 16); i += blockDim.x) {
            const int r = i / (BK / 16), b = i % (BK / 16);
            const float* src = row(r);
            const int first = k0 + 16 * b;
            Nvfp4Block q = {0u, {0u, 0u}};
            if (src != nullptr && first < k) q = nvfp4_quantize_block(src + first, input_scale);
            tile.packed[r][2 * b] = q.packed[0];
            tile.packed[r][2 * b + 1] = q.packed[1];
            tile.scales[r][b] = static_cast<unsigned char>(q.scale);
        }
    }
    __device__ __forceinline__ static unsigned word(const Tile& tile, int r, int kk) {
        return nvfp4_word(tile, r, kk);
    }
};

// A 64 x 32 E4M3 slice as bytes, rows padded to 36 bytes (9 words) so a fragment load's 8 rows
// fall in distinct banks. 2.3 KiB.
struct Fp8Tile {
    __align__(16) unsigned char v[64][BK + 4];
};

// `row(r)`: the K-long E4M3 row behind tile row r, or nullptr. Any K (staged byte by byte).
template <typename RowFn>
struct Fp8Rows {
    RowFn row;
    using Tile = Fp8Tile;
    __device__ __forceinline__ void stage(Tile& tile, int k0, int k) const {
        stage_elements(tile.v, row, k0, k, [](unsigned char code) { return code; });
    }
    __device__ __forceinline__ static unsigned word(const Tile& tile, int r, int kk) {
        return pack_exact_bf16x2(e4m3_to_float(tile.v[r][kk]), e4m3_to_float(tile.v[r][kk + 1]));
    }
};

// An operand policy from its row function (and, for QuantisingRows, the input scale):
// operand<Bf16Rows>(rows). C++17 has no aggregate deduction, and NVRTC compiles C++17.
template <template <typename> class Policy, typename F, typename... Extra>
__device__ __forceinline__ Policy<F> operand(F row, Extra... extra) {
    return {row, extra...};
}

// The row function of a dense [rows, k] matrix for the tile starting at row0: null past `rows`.
template <typename T>
struct DenseRows {
    const T* base;
    int row0, rows, k;
    __device__ __forceinline__ const T* operator()(int r) const {
        return row0 + r < rows ? base + size_t(row0 + r) * k : nullptr;
    }
};

// The row function of a grouped GEMM's activations: tile row r is the token row (of a
// [tokens, k] matrix) of routing entry sorted[row0 + r] = t * top_k + slot, or null for the
// padding (-1) of moe_routing.cu's permutation.
template <typename T>
struct GatheredRows {
    const T* a;
    const int* sorted;
    int row0, top_k, k;
    __device__ __forceinline__ const T* operator()(int r) const {
        const int entry = sorted[row0 + r];
        return entry >= 0 ? a + size_t(entry / top_k) * k : nullptr;
    }
};

// Where this lane's fragments sit: its warp's 32 x 32 sub-tile (2 x 2 warps) and its mma
// group g = lane / 4 and index t = lane % 4 (mma.cuh's fragment layout).
struct LanePosition {
    int warp_row, warp_col, g, t;
};
__device__ __forceinline__ LanePosition lane_position() {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    return {(warp / 2) * 32, (warp % 2) * 32, lane / 4, lane % 4};
}

// A lane's 32 accumulators of the 64 x 64 tile (layout: mma_tile, for_each_output), zeroed.
__device__ __forceinline__ void zero_accumulators(float acc[2][4][4]) {
    MARC_UNROLL
    for (int i = 0; i < 2; ++i) {
        MARC_UNROLL
        for (int j = 0; j < 4; ++j) {
            MARC_UNROLL
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
        }
    }
}

// The 64 x 64 tile of C = A B^T over all of K. On return, lane (g, t) of warp w holds, in
// acc[i][j][r], C at tile row (w / 2) * 32 + 16 i + g + 8 (r / 2), tile column
// (w % 2) * 32 + 8 j + 2 t + r % 2 (see for_each_output).
template <typename A, typename B>
__device__ __forceinline__ void mma_tile(const A& a, const B& b, int k, float acc[2][4][4]) {
    __shared__ typename A::Tile a_tile;
    __shared__ typename B::Tile b_tile;
    const LanePosition p = lane_position();
    const int warp_row = p.warp_row, warp_col = p.warp_col, g = p.g, t = p.t;
    zero_accumulators(acc);

    for (int k0 = 0; k0 < k; k0 += BK) {
        // The previous step's fragment loads are done before the tiles are overwritten.
        __syncthreads();
        a.stage(a_tile, k0, k);
        b.stage(b_tile, k0, k);
        __syncthreads();

        MARC_UNROLL
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned a_frag[2][4], b_frag[4][2];
            MARC_UNROLL
            for (int i = 0; i < 2; ++i) {
                const int r = warp_row + 16 * i + g;
                a_frag[i][0] = A::word(a_tile, r, kk + 2 * t);
                a_frag[i][1] = A::word(a_tile, r + 8, kk + 2 * t);
                a_frag[i][2] = A::word(a_tile, r, kk + 2 * t + 8);
                a_frag[i][3] = A::word(a_tile, r + 8, kk + 2 * t + 8);
            }
            MARC_UNROLL
            for (int j = 0; j < 4; ++j) {
                const int col = warp_col + 8 * j + g;
                b_frag[j][0] = B::word(b_tile, col, kk + 2 * t);
                b_frag[j][1] = B::word(b_tile, col, kk + 2 * t + 8);
            }
            MARC_UNROLL
            for (int i = 0; i < 2; ++i) {
                MARC_UNROLL
                for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
            }
        }
    }
}

// Calls store(tile row, tile column, value) for every accumulator of this lane (layout above).
template <typename Store>
__device__ __forceinline__ void for_each_output(const float acc[2][4][4], Store store) {
    const LanePosition p = lane_position();
    const int warp_row = p.warp_row, warp_col = p.warp_col, g = p.g, t = p.t;
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

// The dense GEMMs' epilogue: y[row][column] = acc * scale (+ bias[column]) for the block's tile
// at (row0, col0) of a row-major [m, n] y, masked to its edges. The CPU's order: the scale
// multiplies the finished sum, then the bias is added.
__device__ __forceinline__ void store_scaled(const float acc[2][4][4], int row0, int col0, int m, int n, float scale,
                                             const float* bias, float* y) {
    for_each_output(acc, [&](int r, int col, float v) {
        const int row = row0 + r, column = col0 + col;
        if (row >= m || column >= n) return;
        const float scaled = v * scale;
        y[size_t(row) * n + column] = bias != nullptr ? scaled + bias[column] : scaled;
    });
}

// Where a grouped expert GEMM's block works: its 64 rows of moe_routing.cu's padded permutation
// (from row0), its 64 output columns (from col0), and the expert those rows belong to: the last e
// with offsets[e] <= row0 (every expert's segment is padded to the 64-row tile, so a tile has one
// expert). Grid (ceil(N / 64), offsets[E] / 64).
struct GroupedTile {
    int row0, col0, expert;
};
__device__ __forceinline__ GroupedTile grouped_tile(const int* offsets, int num_experts) {
    const int row0 = blockIdx.y * BM;
    int expert = 0;
    while (expert + 1 < num_experts && offsets[expert + 1] <= row0) ++expert;
    return {row0, int(blockIdx.x) * BN, expert};
}

// The grouped GEMMs' epilogue: out[entry][column] = act(acc * scale) for the tile's real rows
// (padding, entry -1, skipped), act = relu2 (the experts' activation, fused for the up
// projection) when `relu2` is non-zero, else none. out is [tokens * top_k, n], by routing entry.
__device__ __forceinline__ void store_by_entry(const float acc[2][4][4], const GroupedTile& tile, const int* sorted,
                                               int n, float scale, int relu2, float* out) {
    for_each_output(acc, [&](int r, int col, float v) {
        const int entry = sorted[tile.row0 + r], column = tile.col0 + col;
        if (entry < 0 || column >= n) return;
        const float y = v * scale;
        out[size_t(entry) * n + column] = relu2 ? marc::relu2(y) : y;
    });
}

}  // namespace gemm
}  // namespace marc
