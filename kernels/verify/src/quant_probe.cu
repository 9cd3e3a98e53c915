// Probes of the device codecs in kernels/cuda/include/quant.cuh (not shipped to the GPU), so
// tests/quant_codecs.rs can compare them bitwise with the CPU codecs (marc_kernels::quant) on
// every code and on every rounding boundary, not only through GEMM results at a tolerance.
// Kept out of kernels/cuda/ because they test helpers, not an op.

#include "quant.cuh"

// Thread c of 256: e4m3[c] = the value of E4M3 code c; words[16 c + e] = the fragment word
// pack_exact_bf16x2 makes of E2M1 code e times that value (both halves the same product).
extern "C" __global__ void quant_probe_decode(float* e4m3, unsigned* words) {
    const unsigned c = threadIdx.x;
    const float scale = marc::e4m3_to_float(c);
    e4m3[c] = scale;
    for (unsigned e = 0; e < 16; ++e) {
        const float v = marc::e2m1_to_float(e) * scale;
        words[16 * c + e] = marc::pack_exact_bf16x2(v, v);
    }
}

// x [count] -> its E4M3 and E2M1 codes. Grid-stride over count.
extern "C" __global__ void quant_probe_encode(const float* x, int count, unsigned* e4m3, unsigned* e2m1) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x) {
        e4m3[i] = marc::float_to_e4m3(x[i]);
        e2m1[i] = marc::float_to_e2m1(x[i]);
    }
}
