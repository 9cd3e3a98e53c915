// The bf16 tensor-core instruction mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (sm_80 and
// later, so both sm_90a and sm_100a), as a device function with a C++ fallback for the CPU build.
//
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16), per lane with
// g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group); each 32-bit register holds two bf16,
// the lower-indexed element in the low half:
//   A (16 x 16, row-major): a[0] = A[g][2t..2t+1],   a[1] = A[g+8][2t..2t+1],
//                           a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
//   B (16 x 8, "col"):      b[0] = B[2t..2t+1][g],   b[1] = B[2t+8..2t+9][g]
//   C, D (16 x 8, f32):     c[0] = C[g][2t], c[1] = C[g][2t+1], c[2] = C[g+8][2t], c[3] = C[g+8][2t+1]
// The fallback gathers each operand element from the lane that holds it with warp shuffles, so it
// only gives the right answer if the callers load fragments in exactly this layout: the emulated
// tests check the layout, not just the arithmetic.
#pragma once

#include "marc_cuda.cuh"

namespace marc {

__device__ __forceinline__ float bf16_bits_to_float(unsigned bits) { return __uint_as_float(bits << 16); }

// d = A * B + c for one warp's fragments.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                                  const float c[4]) {
#if defined(__CUDACC__)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    // Gather the two A rows (g, g + 8) and the two B columns (2t, 2t + 1) this lane's outputs need,
    // eight words (16 bf16 along k) each, from the lanes that hold them.
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    unsigned a_rows[2][8], b_cols[2][8];
    for (int w = 0; w < 8; ++w) {
        // Word w covers k = 2w, 2w + 1: lane (row % 8) * 4 + w % 4 holds it, in register
        // row_half + 2 * (w >= 4) for A and (w >= 4) for B.
        for (int half = 0; half < 2; ++half) {
            a_rows[half][w] = __shfl_sync(FULL_MASK, a[half + 2 * (w / 4)], g * 4 + w % 4);
            b_cols[half][w] = __shfl_sync(FULL_MASK, b[w / 4], (2 * t + half) * 4 + w % 4);
        }
    }
    for (int i = 0; i < 4; ++i) {
        float acc = c[i];
        for (int k = 0; k < 16; ++k) {
            const unsigned shift = 16 * (k % 2);
            const float x = bf16_bits_to_float((a_rows[i / 2][k / 2] >> shift) & 0xffffu);
            const float y = bf16_bits_to_float((b_cols[i % 2][k / 2] >> shift) & 0xffffu);
            acc = fmaf(x, y, acc);
        }
        d[i] = acc;
    }
#endif
}

}  // namespace marc
