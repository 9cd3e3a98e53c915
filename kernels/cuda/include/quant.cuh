// The low-precision number formats of marc's quantised checkpoints, on the device: FP8 E4M3 and
// FP4 E2M1 decoding (for the GEMMs' operands) and encoding, and the NVFP4 block quantiser (for
// W4A4's activations).
// Device twins of kernels/src/quant/{e4m3,e2m1}.rs, operation for operation, so the quantiser's
// codes are bitwise the CPU's (tested in kernels/verify/tests/gemm_nvfp4.rs).
//
// Everything is exact integer and bit arithmetic or single IEEE f32 operations (no FMA can be
// contracted out of them), so neither the GPU's nor the host's float quirks change a result.
#pragma once

#include "marc_cuda.cuh"

namespace marc {

// The value of an E2M1 code (low 4 bits; bit 3 the sign): {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Twice the
// magnitudes are the integers {0, 1, 2, 3, 4, 6, 8, 12}, one nibble each of a constant, so the
// decode is a shift and a convert, with no table in memory and no subnormal trick that a
// flush-to-zero build would silently break.
__device__ __forceinline__ float e2m1_to_float(unsigned code) {
    const float twice = float((0xC8643210u >> (4u * (code & 7u))) & 15u);
    return (code & 8u) ? -0.5f * twice : 0.5f * twice;
}

// The value of an E4M3 (float8_e4m3fn) code: subnormals m * 2^-9, normals (1 + m / 8) 2^(e - 7),
// NaN for 0x7F / 0xFF. Exact in f32 and in bf16 (4 significant bits, exponents -9..8).
__device__ __forceinline__ float e4m3_to_float(unsigned code) {
    const unsigned exponent = (code >> 3) & 15u, mantissa = code & 7u;
    // Both candidates are computed and one selected: no branch in the GEMMs' inner loop.
    const float normal = __uint_as_float((exponent + 120u) << 23 | mantissa << 20);
    const float subnormal = float(mantissa) * (1.0f / 512.0f);
    float magnitude = exponent == 0u ? subnormal : normal;
    if ((code & 0x7fu) == 0x7fu) magnitude = __int_as_float(0x7fc00000);
    return (code & 0x80u) ? -magnitude : magnitude;
}

// f32 -> E4M3, round to nearest even, saturating at +-448, NaN -> 0x7F: f32_to_e4m3 in
// kernels/src/quant/e4m3.rs.
__device__ __forceinline__ unsigned float_to_e4m3(float x) {
    const unsigned sign = (__float_as_uint(x) >> 31) << 7;
    const float a = fabsf(x);
    if (a != a) return 0x7Fu;
    if (a >= 448.0f) return sign | 0x7Eu;
    // Subnormal range: multiples of 2^-9; rintf rounds half to even, and 8 carries into the
    // smallest normal code.
    if (a < 1.0f / 64.0f) return sign | unsigned(rintf(a * 512.0f));
    const unsigned bits = __float_as_uint(a);
    const unsigned exponent = (bits >> 23) - 127u + 7u;  // 1..15 here
    const unsigned mantissa = bits & 0x7fffffu, kept = mantissa >> 20, rest = mantissa & 0xfffffu;
    const unsigned round_up = rest > 0x80000u || (rest == 0x80000u && (kept & 1u));
    return sign | ((exponent << 3) + kept + round_up);
}

// f32 -> E2M1 as ModelOpt's _cast_fp4: nearest magnitude, ties to the even code, saturating at 6;
// the sign bit is set when x < 0 (NaN gives 0): f32_to_e2m1 in kernels/src/quant/e2m1.rs.
__device__ __forceinline__ unsigned float_to_e2m1(float x) {
    const float a = fabsf(x);
    unsigned code = unsigned(a > 0.25f) + unsigned(a > 0.75f) + unsigned(a > 1.25f) + unsigned(a > 1.75f) +
                    unsigned(a > 2.5f) + unsigned(a > 3.5f) + unsigned(a > 5.0f);
    code += unsigned(a == 0.75f || a == 1.75f || a == 3.5f);
    return (x < 0.0f ? 8u : 0u) | code;
}

// One 16-element block quantised to NVFP4: its E4M3 scale code and its 8 packed bytes as two
// little-endian words (element 2i in the low nibble of byte i).
struct Nvfp4Block {
    unsigned scale;
    unsigned packed[2];
};

// Quantises v[0..16) with a static tensor scale (the activations' input_scale) as ModelOpt does,
// operation for operation kernels/src/quant/nvfp4.rs's quantize_blocks and block_scale, so the
// bytes are the CPU's: amax (NaN propagates), s = amax / (6 * input_scale), 0 -> 1, clamped to
// [2^-9, 448], to E4M3; each element x / (f32(s) * input_scale) to E2M1.
__device__ __forceinline__ Nvfp4Block nvfp4_quantize_block(const float* v, float input_scale) {
    float amax = 0.0f;
    MARC_UNROLL
    for (int i = 0; i < 16; ++i) {
        const float a = fabsf(v[i]);
        if (a > amax || a != a) amax = a;
    }
    float s = amax / (6.0f * input_scale);
    if (s == 0.0f) s = 1.0f;
    // A NaN stays NaN through the clamp (and becomes the NaN code), as f32::clamp keeps it.
    s = s < 1.0f / 512.0f ? 1.0f / 512.0f : (s > 448.0f ? 448.0f : s);
    Nvfp4Block q;
    q.scale = float_to_e4m3(s);
    const float divisor = e4m3_to_float(q.scale) * input_scale;
    q.packed[0] = q.packed[1] = 0u;
    MARC_UNROLL
    for (int i = 0; i < 16; ++i) q.packed[i / 8] |= float_to_e2m1(v[i] / divisor) << (4 * (i % 8));
    return q;
}

// Two bf16 bit patterns in one 32-bit word, `lo` in the low half (an mma.sync fragment register).
// Only for values exactly representable in bf16, whose f32 bits end in 16 zeros: the decoded
// E2M1 x E4M3 and E4M3 values are (at most 8 significant bits, exponents far inside bf16's).
__device__ __forceinline__ unsigned pack_exact_bf16x2(float lo, float hi) {
    return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
}

}  // namespace marc
