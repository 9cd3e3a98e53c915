// The packed variable-length convention on the device: a batch is its sequences' tokens
// concatenated, `cu_seqlens` (int, num_seqs + 1 entries, from 0 to T) marks where each starts.
// Same convention as kernels/src/ops/varlen.rs, validated there before any launch.
#pragma once

#include "marc_cuda.cuh"

namespace marc {

// The start of the sequence holding token t: the last cu_seqlens entry <= t (binary search; the
// array is tiny and sits in L1 after the first warp touches it).
__device__ __forceinline__ int sequence_start(const int* cu_seqlens, int num_seqs, int t) {
    int lo = 0, hi = num_seqs;  // invariant: cu_seqlens[lo] <= t < cu_seqlens[hi] (hi = end)
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (cu_seqlens[mid] <= t) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return cu_seqlens[lo];
}

}  // namespace marc
