// Checks of the SIMT emulation itself (not shipped to the GPU): one warp records what each warp
// collective returns, and tests/simt.rs compares that with the CUDA Programming Guide's
// definitions. Kept out of kernels/cuda/ because it tests the emulator, not an op.

#include "marc_cuda.cuh"

// out: 10 ints per lane: shfl (src 5, width 32), shfl (src 3, width 8), xor 1, xor 8 (width 8),
// down 3, down 3 (width 8), up 2, up 2 (width 8), ballot(lane % 3 == 0), any/all bits.
extern "C" __global__ void simt_selftest_warp(int* out) {
    const int lane = threadIdx.x;
    const int v = 100 + lane;
    int* mine = out + lane * 10;
    mine[0] = __shfl_sync(marc::FULL_MASK, v, 5);
    mine[1] = __shfl_sync(marc::FULL_MASK, v, 3, 8);
    mine[2] = __shfl_xor_sync(marc::FULL_MASK, v, 1);
    mine[3] = __shfl_xor_sync(marc::FULL_MASK, v, 8, 8);
    mine[4] = __shfl_down_sync(marc::FULL_MASK, v, 3);
    mine[5] = __shfl_down_sync(marc::FULL_MASK, v, 3, 8);
    mine[6] = __shfl_up_sync(marc::FULL_MASK, v, 2);
    mine[7] = __shfl_up_sync(marc::FULL_MASK, v, 2, 8);
    mine[8] = int(__ballot_sync(marc::FULL_MASK, lane % 3 == 0));
    mine[9] = __any_sync(marc::FULL_MASK, lane == 31) | __all_sync(marc::FULL_MASK, lane < 32) << 1 |
              __all_sync(marc::FULL_MASK, lane < 31) << 2;
}

// Block-wide: every thread adds its index to one counter atomically and to a shared array after a
// barrier; out[0] = atomic total, out[1] = the shared sum read by thread 0, out[2] = blocks seen.
extern "C" __global__ void simt_selftest_block(int* out) {
    __shared__ int seen[256];
    seen[threadIdx.x] = int(threadIdx.x);
    atomicAdd(&out[0], int(threadIdx.x));
    __syncthreads();
    if (threadIdx.x == 0) {
        int sum = 0;
        for (unsigned i = 0; i < blockDim.x; ++i) sum += seen[i];
        out[1] += sum;
        out[2] += 1;
    }
}
