//! The routed experts of an MoE block on CUDA: routing (`moe_route_f32`), the permutation by
//! expert padded to the GEMM tile, the grouped up and down GEMMs, and the weighted un-permute.

use cudarc::driver::PushKernelArg;

use super::Cuda;
use super::failed;
use super::launch::{GEMM_TILE, grid, int};
use super::memory::{ArenaBuf, CudaExperts, CudaTensor, CudaVector};
use crate::cuda::plan::{EXPERT_TILE, padded_expert_rows};
use crate::error::{KernelError, check_len};
use crate::ops::matmul::MatmulPrecision;
use crate::ops::moe_route::RouterConfig;

/// One batch's routing on the device: the permutation the grouped GEMM reads.
struct Routing {
    experts: usize,
    /// Routing entries per expert, padded to the tile; `-1` pads, up to `rows`.
    sorted: ArenaBuf,
    offsets: ArenaBuf,
    /// Rows the grouped GEMM's grid covers (a bound on `offsets[experts]`, a multiple of the tile).
    rows: usize,
}

impl Cuda {
    /// See [`crate::backend::Backend::routed_experts`].
    pub(super) fn moe(
        &self,
        x: &CudaTensor,
        logits: CudaTensor,
        bias: &CudaVector,
        router: &RouterConfig,
        experts: &CudaExperts,
    ) -> Result<CudaTensor, KernelError> {
        const OP: &str = "routed_experts";
        let (e, top_k, width, inter) = (experts.experts, router.top_k, experts.width, experts.inter);
        if !logits.len.is_multiple_of(e) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("{} router logits are not whole rows of {e} experts", logits.len),
            });
        }
        let tokens = logits.len / e;
        check_len(OP, "x", x.len, tokens * width)?;
        check_len(OP, "bias", bias.len, e)?;
        let entries = tokens * top_k;

        // Routing: experts and weights per (token, slot), then each expert's entries in token
        // order, padded to the GEMM tile.
        let chosen = self.scratch(OP, entries * 4)?;
        let weights = self.tensor(OP, entries)?;
        let ints: [i32; 6] = [
            int(OP, "tokens", tokens)?,
            int(OP, "experts", e)?,
            int(OP, "n_group", router.n_group)?,
            int(OP, "topk_group", router.topk_group)?,
            int(OP, "top_k", top_k)?,
            i32::from(router.norm_topk_prob),
        ];
        let cfg = grid(int(OP, "token blocks", tokens.div_ceil(4))?, 1, 1, 128, 0);
        self.launch("moe_route_f32", &self.kernels.moe_route_f32, cfg, |a| {
            a.arg(&logits.buf.ptr).arg(&bias.ptr);
            for v in &ints {
                a.arg(v);
            }
            a.arg(&router.routed_scaling_factor)
                .arg(&chosen.ptr)
                .arg(&weights.buf.ptr);
        })?;
        let counts = self.scratch(OP, e * 4)?;
        let offsets = self.scratch(OP, (e + 1) * 4)?;
        let rows = padded_expert_rows(tokens, top_k, e);
        let sorted = self.scratch(OP, rows * 4)?;
        let (pairs, tile): (i32, i32) = (int(OP, "entries", entries)?, int(OP, "tile", EXPERT_TILE)?);
        let per_expert = grid(ints[1].unsigned_abs(), 1, 1, 32, 0);
        self.launch(
            "moe_count_by_expert",
            &self.kernels.moe_count_by_expert,
            per_expert,
            |a| {
                a.arg(&chosen.ptr).arg(&pairs).arg(&counts.ptr);
            },
        )?;
        self.launch(
            "moe_align_offsets",
            &self.kernels.moe_align_offsets,
            grid(1, 1, 1, 1, 0),
            |a| {
                a.arg(&counts.ptr).arg(&ints[1]).arg(&tile).arg(&offsets.ptr);
            },
        )?;
        // Rows past offsets[experts] stay -1, so the grid can cover the bound without a read-back.
        // SAFETY: `sorted` holds `rows` i32s.
        unsafe { cudarc::driver::result::memset_d8_async(sorted.ptr, 0xff, rows * 4, self.stream.cu_stream()) }
            .map_err(failed(OP))?;
        self.launch(
            "moe_scatter_by_expert",
            &self.kernels.moe_scatter_by_expert,
            per_expert,
            |a| {
                a.arg(&chosen.ptr).arg(&pairs).arg(&offsets.ptr).arg(&sorted.ptr);
            },
        )?;
        let routing = Routing {
            experts: e,
            sorted,
            offsets,
            rows,
        };

        // up (by token), relu², down (by entry), then each token's slots weighted and summed.
        let mut up = self.tensor(OP, entries * inter)?;
        let (up_w, down_w) = (experts.up_ptr, experts.down_ptr);
        self.grouped_gemm(x, &routing, top_k, up_w, (inter, width), experts.precision, &up)?;
        crate::backend::Backend::relu2(self, &mut up)?;
        let down = self.tensor(OP, entries * width)?;
        self.grouped_gemm(&up, &routing, 1, down_w, (width, inter), experts.precision, &down)?;
        let routed = self.tensor(OP, tokens * width)?;
        let (tk, w32): (i32, i32) = (ints[4], int(OP, "width", width)?);
        self.launch(
            "moe_unpermute_f32",
            &self.kernels.moe_unpermute_f32,
            grid(
                int(OP, "column blocks", width.div_ceil(256))?,
                ints[0].unsigned_abs(),
                1,
                256,
                0,
            ),
            |a| {
                a.arg(&down.buf.ptr)
                    .arg(&weights.buf.ptr)
                    .arg(&ints[0])
                    .arg(&tk)
                    .arg(&w32)
                    .arg(&routed.buf.ptr);
            },
        )?;
        Ok(routed)
    }

    /// The routed experts' GEMM for one projection (`w`: `[experts, n, k]`), rows gathered from
    /// `x` by `a_row = entry / top_k`, written by entry.
    #[allow(clippy::too_many_arguments)] // The grouped GEMM's operands.
    fn grouped_gemm(
        &self,
        x: &CudaTensor,
        routing: &Routing,
        top_k: usize,
        w: u64,
        (n, k): (usize, usize),
        precision: MatmulPrecision,
        out: &CudaTensor,
    ) -> Result<(), KernelError> {
        const OP: &str = "grouped_gemm_bf16_f32";
        let (e, kk, nn, tk): (i32, i32, i32, i32) = (
            int(OP, "experts", routing.experts)?,
            int(OP, "k", k)?,
            int(OP, "n", n)?,
            int(OP, "top_k", top_k)?,
        );
        let cfg = grid(
            int(OP, "column tiles", n.div_ceil(GEMM_TILE))?,
            int(OP, "row tiles", routing.rows / EXPERT_TILE)?,
            1,
            128,
            0,
        );
        self.staged_gemm(OP, x.ptr(), x.len, out, precision, |a_ptr, _, out_ptr| {
            self.launch(OP, &self.kernels.grouped_gemm_bf16_f32, cfg, |a| {
                a.arg(&a_ptr)
                    .arg(&routing.sorted.ptr)
                    .arg(&routing.offsets.ptr)
                    .arg(&e)
                    .arg(&tk)
                    .arg(&w)
                    .arg(&nn)
                    .arg(&kk)
                    .arg(&out_ptr);
            })
        })
    }
}
