// The 5th-generation tensor-core instructions (tcgen05, sm_100a) that the Blackwell W4A4 NVFP4
// GEMM uses, each a device function with three bodies:
//
// * sm_100a / sm_103a (MARC_TCGEN05_PTX): the inline PTX.
// * other GPU architectures (sm_90a): __trap(). Nothing may call them there; the host launches the
//   kernels that do only on compute capability 10.x, and the kernels trap before any call.
// * the CPU build (simt_cpu.h): a C++ model of the instruction written from the PTX ISA's
//   definition, not from what the kernel happens to do. Tensor memory is per-block storage of
//   128 lanes x 512 32-bit columns with an allocator; descriptors are decoded field by field and
//   every field the model does not implement (swizzling, sparsity, base offsets, ...) aborts with
//   a message rather than being guessed. So a kernel that encodes a wrong descriptor, puts a scale
//   factor in the wrong lane or column, or reads tensor memory from the wrong warp computes a wrong
//   answer (or aborts) in the emulated tests.
//
// Where each fact comes from. "ISA" is the PTX ISA (PTX 8.7 - 9.x; section numbers move between
// versions, 9.7.16.x in 8.7/9.0 and 9.7.17.x / 9.7.18.x later, so sections are named by title
// and anchor on docs.nvidia.com/cuda/parallel-thread-execution). Read through the `search` tool
// (stored copies of the ISA text and of CUTLASS); nothing here ran on a Blackwell GPU.
//
// 1. Tensor memory (ISA "Tensor Memory", #tensor-memory; "Tensor Memory Addressing",
//    #tensor-memory-addressing): 128 lanes x 512 columns of 32-bit cells per CTA on sm_100a; an
//    address is lane << 16 | column.
// 2. Allocation (ISA "tcgen05.alloc / dealloc / relinquish_alloc_permit"): one warp allocates
//    (.sync.aligned) and the address is written to shared memory; nCols a power of 2 in [32, 512];
//    everything allocated must be deallocated before the kernel exits; no alloc after the CTA
//    relinquished its permit.
// 3. Access restriction (ISA "Tensor Memory access restrictions", #tcgen05-tensor-memory-ld-st):
//    warp w of a warpgroup reaches only lanes 32 (w % 4) .. 32 (w % 4) + 31 with tcgen05.ld/st.
// 4. tcgen05.ld/st shape .32x32b (ISA "Matrix fragments for .32x32b", tcgen05-matrix-fragments):
//    thread t of the warp holds lane (taddr.lane + t); register i of .x{N} is column taddr.col + i.
// 5. Shared memory descriptor (ISA "Shared memory descriptor", #tcgen05-shared-memory-desc-layout;
//    cross-checked with CUTLASS cute/arch/mma_sm100_desc.hpp UMMA::SmemDescriptor and Modular's
//    MMASmemDescriptor docs): bits 0-13 start address >> 4, 16-29 leading-dimension byte offset
//    >> 4, 32-45 stride-dimension byte offset >> 4, 46-48 fixed 0b001, 49-51 matrix base offset,
//    52 leading-dimension stride mode, 53-60 fixed 0, 61-63 swizzle (0 none, 1 128B with 32B
//    atoms, 2 128B, 4 64B, 6 32B). Disagreement: an older copy of Modular's docs lists bits
//    46-48 as "unused, 0", and CUTLASS names them `version_` (bits 46-47 of its 2-bit field) and
//    leaves setting them to the caller; the current ISA text says fixed 0b001 for sm_100, and the
//    model requires it.
// 6. Canonical layout, K-major without swizzling (ISA "Shared Memory Layout and Swizzling" /
//    "Canonical layouts", #tcgen05-canonical-layouts; the same table as wgmma's): in units of
//    elements, ((8,m),(T,2k)):((1T,SBO),(1,LBO)) with T = 128 bits / element bits (32 for E2M1):
//    a core matrix is 8 rows of 16 contiguous bytes, row r at 16 (r % 8) bytes, the next 8 rows
//    SBO bytes on, the next 16 bytes of K LBO bytes on. E2M1 in shared memory: "two 4-bit
//    elements in an 8-bit container, with no padding" (ISA "Packing format used for matrix A and
//    B by .kind::mxf4 and .kind::mxf4nvf4 in Shared Memory", #tcgen05-packing-formats-mxf4-smem).
//    Which nibble comes first that text does not say; the model takes the lower-indexed element
//    in the low nibble, CUTLASS's sub-byte array convention and ModelOpt's checkpoint packing,
//    which vLLM and TensorRT-LLM hand to CUTLASS's FP4 GEMMs unchanged. (Note that PTX's
//    cvt...e2m1x2 puts its *first* operand in the high nibble: a register-level convention, not
//    this one.)
// 7. Instruction descriptor, .kind::mxf4nvf4 (ISA "Instruction descriptor", Table "Instruction
//    descriptor format for .kind::mxf4 and .kind::mxf4nvf4"): 0-1 reserved, 2 sparsity, 3
//    reserved, 4-5 scale-factor B id, 6 reserved, 7-9 atype (E2M1 = 1), 10-11 btype (E2M1 = 1),
//    12 reserved, 13/14 negate A/B, 15/16 transpose A/B (must be 0, i.e. K-major), 17-22 N >> 3,
//    23 scale type (UE4M3 = 0, UE8M0 = 1), 24-26 reserved, 27-28 M >> 7, 29-30 scale-factor A id,
//    31 K (0: dense K = 64). Disagreement: CUTLASS's InstrDescriptorBlockScaled has btype 3 bits
//    wide (10-12) and M as a 5-bit M >> 4 at bits 24-28; for M = 128 and 256 both encodings set
//    the same bits (M >> 4 = 8 is bit 27, M >> 7 = 1 is bit 27), so they agree on every M the
//    instruction takes. The model decodes the ISA's fields and requires the reserved bits zero.
// 8. Block scaling, scale_vec::4X (ISA "Block Scaling", #tcgen05-block-scaling; "Layout of the
//    Scale Factor A/B Matrix for scale_vec::4X/block16", #tcgen05-mma-scale-factor-a-layout-4x
//    and -b-layout-4x): D = (A * scale_A) (B * scale_B) + D with scale_A [M, 4] and scale_B
//    [4, N], one scale per 16 elements of K; four scales per row in one 4-byte sub-column
//    (scale-factor id must be 0); scales "need to be duplicated to all 32 lane partitions of
//    tensor memory". The ISA draws the lane/column arrangement only in figures, which the stored
//    copies do not carry; it is taken from CUTLASS (sm100_blockscaled_layout.hpp SfKMajorAtom
//    ((32,4),(16,4)):((16,4),(0,1)), copied by SM100_UTCCP_4x32dp128bit = tcgen05.cp
//    .32x128b.warpx4) and agrees with DeepGEMM-style and ThunderKittens kernels: row r of A (or of
//    B's N dimension) has its four scales in lane r % 32, column sf + r / 32, byte j = scale of K
//    block j, and the same word in each of the four 32-lane quarters. THIS IS THE LEAST CERTAIN
//    FACT HERE. The model reads all four copies and aborts if they differ. (CUTLASS also fills
//    the descriptor's scale-factor ids from bits 30-31 of the scale addresses, "the byte address";
//    with lane-0 addresses, as here, both are 0, what scale_vec::4X requires.)
// 9. Data path layout of D for M = 128, cta_group::1 (ISA "Data path layout", Layout D): row i of
//    D in lane i, column n at column d + n, f32.
// 10. tcgen05.commit (ISA "tcgen05.commit"): makes an mbarrier track the completion of all prior
//    asynchronous tcgen05 operations of the executing thread; .mbarrier::arrive::one arrives once.
//    mbarrier parity wait (ISA "mbarrier.test_wait / try_wait"): waiting on parity p returns once
//    the phase with parity p has completed.
// 11. Ordering (ISA "tcgen05 memory consistency"): tcgen05.fence::before_thread_sync before and
//    ::after_thread_sync after a thread synchronisation order tcgen05 operations across threads;
//    shared memory written with ordinary stores must be made visible to the async proxy that
//    tcgen05.mma reads through with fence.proxy.async.shared::cta.
//
// What the model does not do: swizzled layouts, MN-major operands, sparsity, M != 128, cta_group::2,
// tcgen05.cp, and the asynchrony itself (an emulated MMA completes when issued, so a kernel that
// waits on its mbarrier too late is not caught; one that reads D before the MMA is issued is).
// The emulated MMA computes each 16-element block's products exactly and accumulates in f32; the
// hardware's accumulation order inside one MMA is unspecified, so results agree to f32 rounding.
#pragma once

#include "marc_cuda.cuh"
#include "quant.cuh"

// NVRTC 13.4 defines __CUDA_ARCH_FEAT_SM100_ALL for compute_100a / sm_100a and ..._SM103_ALL for
// compute_103a (checked by compiling a probe); the host compiles for compute_{major}{minor}a, so
// these are the compute-capability-10.x devices it launches the tcgen05 kernels on.
#if defined(__CUDACC__) && (defined(__CUDA_ARCH_FEAT_SM100_ALL) || defined(__CUDA_ARCH_FEAT_SM103_ALL))
#define MARC_TCGEN05_PTX 1
#endif

// Whether this compilation can run tcgen05 code: on sm_10xa, and in the CPU emulation.
#if defined(MARC_TCGEN05_PTX) || !defined(__CUDACC__)
#define MARC_HAS_TCGEN05 1
#else
#define MARC_HAS_TCGEN05 0
#endif

namespace marc::tc {

constexpr unsigned TMEM_LANES = 128;
constexpr unsigned TMEM_COLUMNS = 512;

// Tensor-memory address of (lane, column) relative to `base` (fact 1).
__device__ __forceinline__ unsigned tmem_address(unsigned base, unsigned lane, unsigned column) {
    return base + (lane << 16) + column;
}

// 64-bit shared memory descriptor for a K-major operand without swizzling (facts 5 and 6).
// `address` is a shared-state-space address (shared_address()), 16-byte aligned; the byte
// offsets are multiples of 16.
__device__ __forceinline__ unsigned long long smem_descriptor(unsigned address, unsigned leading_byte_offset,
                                                              unsigned stride_byte_offset) {
    return (unsigned long long)((address & 0x3FFFFu) >> 4) |
           (unsigned long long)((leading_byte_offset >> 4) & 0x3FFFu) << 16 |
           (unsigned long long)((stride_byte_offset >> 4) & 0x3FFFu) << 32 | 1ull << 46;  // swizzle 0
}

// 32-bit instruction descriptor for .kind::mxf4nvf4: E2M1 x E2M1, UE4M3 scales, K-major A and B,
// dense K = 64, scale-factor ids 0 (fact 7).
__device__ __forceinline__ unsigned instr_descriptor_mxf4nvf4(unsigned m, unsigned n) {
    return 1u << 7 | 1u << 10 | (n >> 3) << 17 | (m >> 7) << 27;
}

}  // namespace marc::tc

#if !defined(__CUDACC__)
// ---------------------------------------------------------------------------------------------
// The CPU model.
#include <chrono>

namespace marc::tc::emu {

[[noreturn]] inline void fail(const std::string& what) { ::simt::fail(("tcgen05 model: " + what).c_str()); }

// One CTA's tensor memory and allocator. Blocks run one at a time in the emulation, so one static
// instance serves them all; `owner` notices a new block (or launch) and checks that the previous
// one deallocated everything (fact 2).
struct TensorMemory {
    uint32_t cell[TMEM_LANES][TMEM_COLUMNS];
    // Per column: the first column of the allocation holding it, or -1.
    int allocation[TMEM_COLUMNS];
    bool relinquished = false;
    uint64_t launch = 0;
    unsigned block = ~0u;
    std::mutex mutex;

    TensorMemory() { std::fill(std::begin(allocation), std::end(allocation), -1); }

    // Called under `mutex` by every allocator operation.
    void enter_block() {
        const ::simt::Lane& me = ::simt::this_lane;
        const unsigned linear = me.block_idx.x + me.launch->grid.x * (me.block_idx.y + me.launch->grid.y * me.block_idx.z);
        if (launch == me.launch->serial && block == linear) return;
        for (int c : allocation) {
            if (c >= 0) fail("a CTA exited without tcgen05.dealloc of all its tensor memory");
        }
        launch = me.launch->serial;
        block = linear;
        relinquished = false;
    }

    void check_allocated(unsigned column, const char* what) const {
        if (column >= TMEM_COLUMNS || allocation[column] < 0) {
            fail(std::string(what) + " touches tensor-memory column " + std::to_string(column) +
                 ", which is not allocated");
        }
    }
};

inline TensorMemory& tmem() {
    static TensorMemory t;
    return t;
}

// A warp-wide `.sync.aligned` allocator instruction: `f` runs once for the warp (lane 0) on the
// block's tensor memory, under its lock and after the per-block reset, between two warp barriers.
template <typename F>
void once_per_warp(F f) {
    __syncwarp();
    if (::simt::this_lane.lane == 0) {
        TensorMemory& t = tmem();
        std::lock_guard<std::mutex> lock(t.mutex);
        t.enter_block();
        f(t);
    }
    __syncwarp();
}

inline unsigned lane_of(unsigned taddr) { return taddr >> 16; }
inline unsigned column_of(unsigned taddr) { return taddr & 0xFFFFu; }

// The warp's quarter of tensor memory (fact 3); `taddr` must start it for a 32-lane access.
inline void check_quarter(unsigned taddr, const char* what) {
    const unsigned warp = ::simt::this_lane.linear / 32, quarter = 32 * (warp % 4);
    if (lane_of(taddr) != quarter) {
        fail(std::string(what) + " by warp " + std::to_string(warp) + " at lane " + std::to_string(lane_of(taddr)) +
             ": a warp reaches only lanes " + std::to_string(quarter) + ".." + std::to_string(quarter + 31));
    }
}

// Bytes of the emulated shared state space: the launch's dynamic shared memory, starting at
// shared address 0. Operands that tcgen05.mma reads must live there (see shared_address).
inline unsigned char* shared_window(unsigned address, unsigned bytes) {
    auto& dynamic = ::simt::this_lane.launch->dynamic_shared;
    if (size_t(address) + bytes > dynamic.size()) {
        fail("a descriptor addresses shared bytes " + std::to_string(address) + ".." +
             std::to_string(address + bytes) + ", past the " + std::to_string(dynamic.size()) +
             " bytes of dynamic shared memory");
    }
    return dynamic.data() + address;
}

// A decoded shared memory descriptor (fact 5).
struct SmemMatrix {
    unsigned start, leading, stride;

    // Byte and nibble of element (row, k) of a K-major E2M1 operand (fact 6, T = 32).
    unsigned element(unsigned row, unsigned k) const {
        const unsigned offset = start + (row % 8) * 16 + (row / 8) * stride + (k / 32) * leading + (k % 32) / 2;
        const unsigned byte = *shared_window(offset, 1);
        return (k % 2) ? byte >> 4 : byte & 15u;
    }
};

inline unsigned bits(unsigned long long v, unsigned lo, unsigned count) {
    return unsigned((v >> lo) & ((1ull << count) - 1));
}

inline SmemMatrix decode_smem_descriptor(unsigned long long d, const char* which) {
    const std::string name = std::string("shared memory descriptor of ") + which;
    if (bits(d, 46, 3) != 1u) fail(name + ": bits 46-48 must hold the sm_100 fixed value 0b001");
    if (bits(d, 49, 3) != 0u) fail(name + ": matrix base offset (bits 49-51) is not modelled");
    if (bits(d, 52, 1) != 0u) fail(name + ": absolute leading-dimension mode (bit 52) is not modelled");
    if (bits(d, 53, 8) != 0u) fail(name + ": bits 53-60 must be 0");
    const unsigned swizzle = bits(d, 61, 3);
    if (swizzle != 0u) {
        fail(name + (swizzle == 1 || swizzle == 2 || swizzle == 4 || swizzle == 6
                         ? ": swizzled layouts are not modelled"
                         : ": swizzle mode " + std::to_string(swizzle) + " is not a valid encoding"));
    }
    return {bits(d, 0, 14) << 4, bits(d, 16, 14) << 4, bits(d, 32, 14) << 4};
}

// A decoded .kind::mxf4nvf4 instruction descriptor (fact 7).
struct InstrDesc {
    unsigned m, n;
    bool negate_a, negate_b, ue8m0;
};

inline InstrDesc decode_instr_descriptor(unsigned d) {
    auto must_be = [&](unsigned lo, unsigned count, unsigned value, const char* what) {
        if (bits(d, lo, count) != value) fail(std::string("instruction descriptor: ") + what);
    };
    must_be(0, 2, 0, "bits 0-1 are reserved");
    must_be(2, 1, 0, "sparsity (bit 2) is not modelled");
    must_be(3, 1, 0, "bit 3 is reserved");
    must_be(4, 2, 0, "the scale-factor B id (bits 4-5) must be 0 with scale_vec::4X");
    must_be(6, 1, 0, "bit 6 is reserved");
    must_be(7, 3, 1, "atype (bits 7-9) must be E2M1 = 1 for .kind::mxf4nvf4");
    must_be(10, 2, 1, "btype (bits 10-11) must be E2M1 = 1 for .kind::mxf4nvf4");
    must_be(12, 1, 0, "bit 12 is reserved");
    must_be(15, 2, 0, "transpose A / B (bits 15-16) must be 0 (K-major) for .kind::mxf4nvf4");
    must_be(24, 3, 0, "bits 24-26 are reserved");
    must_be(29, 2, 0, "the scale-factor A id (bits 29-30) must be 0 with scale_vec::4X");
    must_be(31, 1, 0, "K (bit 31) = 1 is K = 96, which scale_vec::4X does not take");
    InstrDesc id{bits(d, 27, 2) << 7, bits(d, 17, 6) << 3, bits(d, 13, 1) != 0, bits(d, 14, 1) != 0,
                 bits(d, 23, 1) != 0};
    // M = 128 is the only M of cta_group::1 for this kind (256 needs cta_group::2); N a multiple of
    // 16 up to 256 for M = 128 (ISA "Matrix shape", #tcgen05-kind-shapes).
    if (id.m != 128) fail("instruction descriptor: M = " + std::to_string(id.m) + " (cta_group::1 takes M = 128)");
    if (id.n < 16 || id.n > 256 || id.n % 16 != 0) {
        fail("instruction descriptor: N = " + std::to_string(id.n) + " (M = 128 takes N = 16, 32, .., 256)");
    }
    return id;
}

// The scale of row `row` (of A, or of B's N dimension), K block `block` (0..3), from the 4X
// layout at `sf_taddr` (fact 8), checking that all four lane quarters hold the same word.
inline float block_scale(const TensorMemory& t, unsigned sf_taddr, unsigned row, unsigned block, bool ue8m0,
                         const char* which) {
    if (lane_of(sf_taddr) != 0) fail(std::string(which) + " scale address must be lane 0");
    const unsigned column = column_of(sf_taddr) + row / 32;
    t.check_allocated(column, which);
    const uint32_t word = t.cell[row % 32][column];
    for (unsigned q = 1; q < 4; ++q) {
        if (t.cell[32 * q + row % 32][column] != word) {
            fail(std::string(which) + " scale factors of row " + std::to_string(row) +
                 " differ between lane quarters: they must be duplicated to all four");
        }
    }
    const unsigned code = (word >> (8 * block)) & 0xFFu;
    if (ue8m0) return code == 0xFFu ? __int_as_float(0x7fc00000) : std::ldexp(1.0f, int(code) - 127);
    // UE4M3: E4M3 without a sign; its sign bit is not part of the format.
    if (code & 0x80u) fail(std::string(which) + " UE4M3 scale with the sign bit set");
    return e4m3_to_float(code);
}

inline void mma(unsigned d_tmem, unsigned long long a_desc, unsigned long long b_desc, unsigned idesc,
                unsigned sfa_tmem, unsigned sfb_tmem, bool accumulate) {
    TensorMemory& t = tmem();
    const InstrDesc id = decode_instr_descriptor(idesc);
    const SmemMatrix a = decode_smem_descriptor(a_desc, "A"), b = decode_smem_descriptor(b_desc, "B");
    if (lane_of(d_tmem) != 0) fail("the accumulator address must be lane 0 (M = 128 uses all 128 lanes)");
    for (unsigned n = 0; n < id.n; ++n) t.check_allocated(column_of(d_tmem) + n, "the accumulator");
    for (unsigned m = 0; m < id.m; ++m) {
        for (unsigned n = 0; n < id.n; ++n) {
            // Each 16-block's products are exact (E2M1 x E2M1 has at most 4 significant bits), and
            // so are they times both scales in double; the four blocks sum exactly in double too.
            double sum = 0.0;
            for (unsigned block = 0; block < 4; ++block) {
                double dot = 0.0;
                for (unsigned k = 16 * block; k < 16 * block + 16; ++k) {
                    dot += double(e2m1_to_float(a.element(m, k))) * double(e2m1_to_float(b.element(n, k)));
                }
                const double sa = block_scale(t, sfa_tmem, m, block, id.ue8m0, "A");
                const double sb = block_scale(t, sfb_tmem, n, block, id.ue8m0, "B");
                sum += dot * sa * sb;
            }
            if (id.negate_a != id.negate_b) sum = -sum;
            uint32_t& cell = t.cell[m][column_of(d_tmem) + n];
            const float product = float(sum);
            cell = __float_as_uint(accumulate ? __uint_as_float(cell) + product : product);
        }
    }
}

// The emulated mbarrier, in its 64-bit word: pending arrivals in bits 0-31, the expected count in
// bits 32-62, the phase parity in bit 63.
inline void mbarrier_arrive(unsigned long long* bar) {
    std::atomic_ref<unsigned long long> word(*bar);
    unsigned long long old = word.load(std::memory_order_relaxed), next;
    do {
        const unsigned long long pending = old & 0xFFFFFFFFull, count = (old >> 32) & 0x7FFFFFFFull;
        if (pending == 0) fail("mbarrier arrival on an uninitialised barrier");
        next = pending > 1 ? old - 1 : ((old & (1ull << 63)) ^ (1ull << 63)) | count << 32 | count;
    } while (!word.compare_exchange_weak(old, next, std::memory_order_acq_rel, std::memory_order_relaxed));
}

}  // namespace marc::tc::emu
#endif

namespace marc::tc {

// The shared-state-space address of `p`. In the CPU build the shared state space that
// descriptors address is the launch's dynamic shared memory (simt_cpu.h), so operands that
// tcgen05.mma reads must be there; anything else aborts.
__device__ __forceinline__ unsigned shared_address(const void* p) {
#if defined(__CUDACC__)
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
#else
    auto& dynamic = ::simt::this_lane.launch->dynamic_shared;
    const auto* byte = static_cast<const unsigned char*>(p);
    if (byte < dynamic.data() || byte >= dynamic.data() + dynamic.size()) {
        emu::fail("an operand of tcgen05.mma must be in dynamic shared memory in the CPU model");
    }
    return unsigned(byte - dynamic.data());
#endif
}

// tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 by the whole calling warp: allocates
// `columns` columns and writes their address to *dst (fact 2).
__device__ __forceinline__ void alloc(unsigned* dst, unsigned columns) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%0], %1;" ::"r"(shared_address(dst)),
                 "r"(columns)
                 : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    emu::once_per_warp([&](emu::TensorMemory& t) {
        if (t.relinquished) emu::fail("tcgen05.alloc after tcgen05.relinquish_alloc_permit");
        if (columns < 32 || columns > TMEM_COLUMNS || (columns & (columns - 1)) != 0) {
            emu::fail("tcgen05.alloc of " + std::to_string(columns) + " columns (a power of 2 in [32, 512])");
        }
        unsigned start = 0;
        for (; start < TMEM_COLUMNS; start += columns) {
            if (std::all_of(t.allocation + start, t.allocation + start + columns, [](int c) { return c < 0; })) break;
        }
        if (start >= TMEM_COLUMNS) emu::fail("tcgen05.alloc: no free run of " + std::to_string(columns) + " columns");
        for (unsigned c = start; c < start + columns; ++c) {
            t.allocation[c] = int(start);
            // A NaN as f32 whose bytes are NaN as E4M3 (0x7F, 0xFF): reading before writing shows.
            for (auto& lane : t.cell) lane[c] = 0x7FFF7F7Fu;
        }
        *dst = start;  // lane 0
    });
#endif
}

// tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned (whole warp).
__device__ __forceinline__ void relinquish_alloc_permit() {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;" ::: "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    emu::once_per_warp([&](emu::TensorMemory& t) {
        t.relinquished = true;
    });
#endif
}

// tcgen05.dealloc.cta_group::1.sync.aligned.b32 (whole warp): frees what alloc returned.
__device__ __forceinline__ void dealloc(unsigned taddr, unsigned columns) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.dealloc.cta_group::1.sync.aligned.b32 %0, %1;" ::"r"(taddr), "r"(columns) : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    emu::once_per_warp([&](emu::TensorMemory& t) {
        const unsigned start = emu::column_of(taddr);
        if (emu::lane_of(taddr) != 0 || start + columns > TMEM_COLUMNS) emu::fail("tcgen05.dealloc of a bad address");
        for (unsigned c = start; c < start + columns; ++c) {
            if (t.allocation[c] != int(start)) emu::fail("tcgen05.dealloc does not match an allocation");
            t.allocation[c] = -1;
        }
        if (start + columns < TMEM_COLUMNS && t.allocation[start + columns] == int(start)) {
            emu::fail("tcgen05.dealloc frees only part of an allocation");
        }
    });
#endif
}

// tcgen05.st.sync.aligned.32x32b.x16.b32 (whole warp): lane taddr.lane + t of columns
// taddr.col .. + 15 from this thread's v[0..16) (facts 3, 4).
__device__ __forceinline__ void store_32x32b_x16(unsigned taddr, const unsigned (&v)[16]) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile(
        "tcgen05.st.sync.aligned.32x32b.x16.b32 [%0], {%1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, "
        "%15, %16};" ::"r"(taddr),
        "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3]), "r"(v[4]), "r"(v[5]), "r"(v[6]), "r"(v[7]), "r"(v[8]), "r"(v[9]),
        "r"(v[10]), "r"(v[11]), "r"(v[12]), "r"(v[13]), "r"(v[14]), "r"(v[15])
        : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    __syncwarp();
    emu::check_quarter(taddr, "tcgen05.st");
    emu::TensorMemory& t = emu::tmem();
    for (unsigned i = 0; i < 16; ++i) {
        t.check_allocated(emu::column_of(taddr) + i, "tcgen05.st");
        t.cell[emu::lane_of(taddr) + ::simt::this_lane.lane][emu::column_of(taddr) + i] = v[i];
    }
    __syncwarp();
#endif
}

// tcgen05.ld.sync.aligned.32x32b.x16.b32 then tcgen05.wait::ld (whole warp), the mirror of
// store_32x32b_x16. The ISA makes the destination registers valid only after the wait; issuing
// both in one asm statement means the compiler sees the registers written only once the wait
// has passed, so it cannot schedule a use of them in between (with two statements nothing but
// the asm's order ties the uses to the wait).
__device__ __forceinline__ void load_32x32b_x16(unsigned taddr, unsigned (&v)[16]) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile(
        "tcgen05.ld.sync.aligned.32x32b.x16.b32 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, "
        "%15}, [%16];\n\ttcgen05.wait::ld.sync.aligned;"
        : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]), "=r"(v[4]), "=r"(v[5]), "=r"(v[6]), "=r"(v[7]), "=r"(v[8]),
          "=r"(v[9]), "=r"(v[10]), "=r"(v[11]), "=r"(v[12]), "=r"(v[13]), "=r"(v[14]), "=r"(v[15])
        : "r"(taddr)
        : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    __syncwarp();
    emu::check_quarter(taddr, "tcgen05.ld");
    const emu::TensorMemory& t = emu::tmem();
    for (unsigned i = 0; i < 16; ++i) {
        t.check_allocated(emu::column_of(taddr) + i, "tcgen05.ld");
        v[i] = t.cell[emu::lane_of(taddr) + ::simt::this_lane.lane][emu::column_of(taddr) + i];
    }
    __syncwarp();
#endif
}

// tcgen05.wait::st: this thread's earlier tcgen05.st have completed. (The model's stores complete
// when issued.)
__device__ __forceinline__ void wait_st() {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.wait::st.sync.aligned;" ::: "memory");
#elif defined(__CUDACC__)
    __trap();
#endif
}

// tcgen05.fence::before_thread_sync / ::after_thread_sync (fact 11). Ordering in the model comes
// from the real barriers between the emulated threads.
__device__ __forceinline__ void fence_before_thread_sync() {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.fence::before_thread_sync;" ::: "memory");
#elif defined(__CUDACC__)
    __trap();
#endif
}
__device__ __forceinline__ void fence_after_thread_sync() {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.fence::after_thread_sync;" ::: "memory");
#elif defined(__CUDACC__)
    __trap();
#endif
}

// fence.proxy.async.shared::cta: this thread's ordinary shared-memory stores become visible to
// the async proxy (tcgen05.mma's operand reads), fact 11.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#elif defined(__CUDACC__)
    __trap();
#endif
}

// D (+)= (A * scale_A) (B * scale_B) for one 128 x N x 64 block:
// tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X, issued by one thread.
__device__ __forceinline__ void mma_mxf4nvf4(unsigned d_tmem, unsigned long long a_desc, unsigned long long b_desc,
                                             unsigned idesc, unsigned sfa_tmem, unsigned sfb_tmem, bool accumulate) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %4, 0;\n\t"
        "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X [%0], %1, %2, %3, [%5], [%6], p;\n\t}" ::"r"(
            d_tmem),
        "l"(a_desc), "l"(b_desc), "r"(idesc), "r"(unsigned(accumulate)), "r"(sfa_tmem), "r"(sfb_tmem)
        : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    emu::mma(d_tmem, a_desc, b_desc, idesc, sfa_tmem, sfb_tmem, accumulate);
#endif
}

// mbarrier.init.shared::cta.b64 with `count` expected arrivals, then the fence that makes the
// initialisation visible to the async proxy (tcgen05.commit arrives through it).
__device__ __forceinline__ void mbarrier_init(unsigned long long* bar, unsigned count) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n\tfence.mbarrier_init.release.cluster;" ::"r"(
                     shared_address(bar)),
                 "r"(count)
                 : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    std::atomic_ref<unsigned long long>(*bar).store((unsigned long long)count << 32 | count,
                                                    std::memory_order_release);
#endif
}

// tcgen05.commit.cta_group::1.mbarrier::arrive::one: `bar` gets one arrival once this thread's
// earlier tcgen05.mma have completed (fact 10). In the model they already have.
__device__ __forceinline__ void commit(unsigned long long* bar) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile("tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [%0];" ::"r"(
                     shared_address(bar))
                 : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    emu::mbarrier_arrive(bar);
#endif
}

// Blocks until the phase of `bar` with parity `parity` has completed (mbarrier.try_wait.parity
// in a loop).
__device__ __forceinline__ void mbarrier_wait(unsigned long long* bar, unsigned parity) {
#if defined(MARC_TCGEN05_PTX)
    asm volatile(
        "{\n\t.reg .pred done;\n\tLAB_WAIT:\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra LAB_WAIT;\n\t}" ::"r"(shared_address(bar)),
        "r"(parity)
        : "memory");
#elif defined(__CUDACC__)
    __trap();
#else
    std::atomic_ref<unsigned long long> word(*bar);
    // The phase with parity p has completed once the current phase's parity differs from p.
    for (unsigned spins = 0; (word.load(std::memory_order_acquire) >> 63) == (parity & 1u); ++spins) {
        if (spins < 64) {
            std::this_thread::yield();
        } else {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    }
#endif
}

}  // namespace marc::tc
