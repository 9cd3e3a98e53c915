//! The routed experts of an MoE block on CUDA: routing (`moe_route_f32`), the permutation by
//! expert padded to the GEMM tile, the grouped up and down GEMMs, and the weighted un-permute.

use cudarc::driver::PushKernelArg;

use super::Cuda;
use super::failed;
use super::gemm::Activations;
use super::launch::{GEMM_TILE, TCGEN05_GROUPED_ROWS, grid, int, tcgen05_grid};
use super::memory::{ArenaBuf, CudaLinear, CudaTensor, CudaVector, CudaWeight, DeviceVec, StackedExperts};
use crate::cuda::plan::{EXPERT_TILE, padded_expert_rows};
use crate::error::{KernelError, check_len};
use crate::ops::matmul::MatmulPrecision;
use crate::ops::moe_route::RouterConfig;

/// One batch's routing on the device: each (token, slot)'s expert and weight, and the
/// permutation the grouped GEMM reads.
pub(super) struct Routing {
    tokens: usize,
    experts: usize,
    top_k: usize,
    /// `[tokens * top_k]` routing weights.
    weights: CudaTensor,
    /// Routing entries per expert, padded to the tile; `-1` pads, up to `rows`.
    sorted: ArenaBuf,
    offsets: ArenaBuf,
    /// Rows the grouped GEMM's grid covers (a bound on `offsets[experts]`, a multiple of the tile).
    rows: usize,
    /// `[tokens * top_k]` chosen experts (read by the permutation; kept for the arena's order).
    _chosen: ArenaBuf,
}

impl Routing {
    /// Tokens routed.
    pub(super) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Routing entries: `tokens * top_k`.
    pub(super) fn entries(&self) -> usize {
        self.tokens * self.top_k
    }
}

impl Cuda {
    /// Routes each token from its router `logits` `[tokens, experts]` (`moe_route_f32`), then
    /// lays each expert's entries out in token order, padded to the GEMM tile (count, align,
    /// scatter).
    pub(super) fn route(
        &self,
        logits: &CudaTensor,
        bias: &CudaVector,
        router: &RouterConfig,
        experts: usize,
    ) -> Result<Routing, KernelError> {
        const OP: &str = "moe_route_f32";
        if experts == 0 || !logits.len.is_multiple_of(experts) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("{} router logits are not whole rows of {experts} experts", logits.len),
            });
        }
        check_len(OP, "bias", bias.len, experts)?;
        let (tokens, top_k) = (logits.len / experts, router.top_k);
        let entries = tokens * top_k;
        let chosen = self.scratch(OP, entries * 4)?;
        let weights = self.tensor(OP, entries)?;
        let ints: [i32; 6] = [
            int(OP, "tokens", tokens)?,
            int(OP, "experts", experts)?,
            int(OP, "n_group", router.n_group)?,
            int(OP, "topk_group", router.topk_group)?,
            int(OP, "top_k", top_k)?,
            i32::from(router.norm_topk_prob),
        ];
        let cfg = grid(int(OP, "token blocks", tokens.div_ceil(4))?, 1, 1, 128, 0);
        self.launch(OP, &self.kernels.moe_route_f32, cfg, |a| {
            a.arg(&logits.buf.ptr).arg(&bias.ptr);
            for v in &ints {
                a.arg(v);
            }
            a.arg(&router.routed_scaling_factor)
                .arg(&chosen.ptr)
                .arg(&weights.buf.ptr);
        })?;

        let counts = self.scratch(OP, experts * 4)?;
        let offsets = self.scratch(OP, (experts + 1) * 4)?;
        let rows = padded_expert_rows(tokens, top_k, experts);
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
        let one = grid(1, 1, 1, 1, 0);
        self.launch("moe_align_offsets", &self.kernels.moe_align_offsets, one, |a| {
            a.arg(&counts.ptr).arg(&ints[1]).arg(&tile).arg(&offsets.ptr);
        })?;
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
        Ok(Routing {
            tokens,
            experts,
            top_k,
            weights,
            sorted,
            offsets,
            rows,
            _chosen: chosen,
        })
    }

    /// Each token's expert outputs (`down`, `[tokens * top_k, width]`, by entry) weighted and
    /// summed in slot order (`moe_unpermute_f32`).
    pub(super) fn unpermute(
        &self,
        down: &CudaTensor,
        routing: &Routing,
        width: usize,
    ) -> Result<CudaTensor, KernelError> {
        const OP: &str = "moe_unpermute_f32";
        check_len(OP, "down", down.len, routing.entries() * width)?;
        let out = self.tensor(OP, routing.tokens * width)?;
        let (tokens, top_k, w32): (i32, i32, i32) = (
            int(OP, "tokens", routing.tokens)?,
            int(OP, "top_k", routing.top_k)?,
            int(OP, "width", width)?,
        );
        let cfg = grid(
            int(OP, "column blocks", width.div_ceil(256))?,
            tokens.unsigned_abs(),
            1,
            256,
            0,
        );
        self.launch(OP, &self.kernels.moe_unpermute_f32, cfg, |a| {
            a.arg(&down.buf.ptr)
                .arg(&routing.weights.buf.ptr)
                .arg(&tokens)
                .arg(&top_k)
                .arg(&w32)
                .arg(&out.buf.ptr);
        })?;
        Ok(out)
    }

    /// The routed experts' GEMM for one projection (`weights`, `[experts, n, k]`), rows gathered
    /// from `x` by `a_row = entry / top_k`, written by entry. Float, FP8 and NVFP4 W4A16 experts
    /// run exact through `staged_gemm`; W4A4 experts quantise their rows with their own input
    /// scales.
    pub(super) fn grouped_gemm(
        &self,
        x: &CudaTensor,
        routing: &Routing,
        top_k: usize,
        (weights, (n, k)): (&StackedExperts, (usize, usize)),
        precision: MatmulPrecision,
        out: &CudaTensor,
    ) -> Result<(), KernelError> {
        const OP: &str = "grouped expert GEMM";
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
        // The activation is applied after the sum of the exact parts (`relu2_f32`), never fused.
        let no_relu2 = 0i32;
        let (sorted, offsets) = (routing.sorted.ptr, routing.offsets.ptr);
        match weights {
            StackedExperts::Float { dtype, values } => {
                let (kernel, reads) = self.float_gemm(*dtype, true);
                self.staged_gemm(OP, (x.ptr(), x.len), out, precision, reads, |a_ptr, _, out_ptr| {
                    self.launch(OP, kernel, cfg, |a| {
                        a.arg(&a_ptr).arg(&sorted).arg(&offsets).arg(&e).arg(&tk);
                        a.arg(&values.ptr).arg(&nn).arg(&kk).arg(&out_ptr);
                    })
                })
            }
            StackedExperts::Fp8 { codes, scales } => self.staged_gemm(
                OP,
                (x.ptr(), x.len),
                out,
                precision,
                Activations::F32,
                |a_ptr, _, out_ptr| {
                    self.launch(OP, &self.kernels.grouped_gemm_fp8_f32, cfg, |a| {
                        a.arg(&a_ptr).arg(&sorted).arg(&offsets).arg(&e).arg(&tk);
                        a.arg(&codes.ptr).arg(&scales.ptr);
                        a.arg(&nn).arg(&kk).arg(&no_relu2).arg(&out_ptr);
                    })
                },
            ),
            StackedExperts::Nvfp4 {
                packed,
                block_scales,
                tensor_scales,
                input_scales: None,
            } => self.staged_gemm(
                OP,
                (x.ptr(), x.len),
                out,
                precision,
                Activations::F32,
                |a_ptr, _, out_ptr| {
                    self.launch(OP, &self.kernels.grouped_gemm_nvfp4_w4a16_f32, cfg, |a| {
                        a.arg(&a_ptr).arg(&sorted).arg(&offsets).arg(&e).arg(&tk);
                        a.arg(&packed.ptr).arg(&block_scales.ptr).arg(&tensor_scales.ptr);
                        a.arg(&nn).arg(&kk).arg(&no_relu2).arg(&out_ptr);
                    })
                },
            ),
            StackedExperts::Nvfp4 {
                packed,
                block_scales,
                tensor_scales,
                input_scales: Some(input_scales),
            } => {
                let (x_ptr, out_ptr) = (x.ptr(), out.ptr());
                // On compute capability 10.x the FP4 tensor cores (tcgen05): one routing tile
                // (64 rows) per block as the portable kernel, with the dense tcgen05 kernel's
                // columns, threads and dynamic shared memory; the parameters are the same.
                let (kernel, cfg) = if self.has_tcgen05() {
                    let tiles = tcgen05_grid(OP, n, routing.rows / TCGEN05_GROUPED_ROWS)?;
                    (&self.kernels.grouped_gemm_nvfp4_w4a4_tcgen05_f32, tiles)
                } else {
                    (&self.kernels.grouped_gemm_nvfp4_w4a4_f32, cfg)
                };
                self.launch(OP, kernel, cfg, |a| {
                    a.arg(&x_ptr).arg(&sorted).arg(&offsets).arg(&e).arg(&tk);
                    a.arg(&packed.ptr)
                        .arg(&block_scales.ptr)
                        .arg(&tensor_scales.ptr)
                        .arg(&input_scales.ptr);
                    a.arg(&nn).arg(&kk).arg(&no_relu2).arg(&out_ptr);
                })
            }
        }
    }

    /// One projection of every routed expert (same shape and precision, checked by the caller)
    /// stacked as the grouped GEMMs read it. Experts must share a format: one float type, FP8, or
    /// NVFP4 all with or all without an input scale.
    pub(super) fn stack_experts<'l>(
        &self,
        linears: impl Iterator<Item = &'l CudaLinear>,
    ) -> Result<StackedExperts, KernelError> {
        const OP: &str = "group_experts";
        let linears: Vec<&CudaLinear> = linears.collect();
        let mixed = || KernelError::InvalidShape {
            op: OP,
            reason: "the routed experts of a block are stored in different formats".into(),
        };
        match linears.first().map(|l| &l.weight) {
            None => Err(KernelError::InvalidShape {
                op: OP,
                reason: "no experts".into(),
            }),
            Some(CudaWeight::Fp8 { .. }) => {
                let (mut codes, mut scales) = (Vec::with_capacity(linears.len()), Vec::with_capacity(linears.len()));
                for linear in &linears {
                    let CudaWeight::Fp8 { codes: c, scale } = &linear.weight else {
                        return Err(mixed());
                    };
                    codes.push((c.ptr, c.len));
                    scales.push(*scale);
                }
                Ok(StackedExperts::Fp8 {
                    codes: self.concat(OP, &codes)?,
                    scales: DeviceVec::upload(&self.stream, &scales).map_err(failed(OP))?,
                })
            }
            Some(&CudaWeight::Float { dtype, .. }) => {
                let mut parts = Vec::with_capacity(linears.len());
                for linear in &linears {
                    match &linear.weight {
                        CudaWeight::Float { dtype: d, values } if *d == dtype => parts.push((values.ptr, values.len)),
                        _ => return Err(mixed()),
                    }
                }
                Ok(StackedExperts::Float {
                    dtype,
                    values: self.concat(OP, &parts)?,
                })
            }
            Some(CudaWeight::Nvfp4 { input_scale, .. }) => {
                let w4a4 = input_scale.is_some();
                let (mut packed, mut block_scales) = (Vec::new(), Vec::new());
                let (mut tensor_scales, mut input_scales) = (Vec::new(), Vec::new());
                for linear in &linears {
                    let CudaWeight::Nvfp4 {
                        packed: p,
                        block_scales: b,
                        tensor_scale,
                        input_scale,
                    } = &linear.weight
                    else {
                        return Err(mixed());
                    };
                    if input_scale.is_some() != w4a4 {
                        return Err(mixed());
                    }
                    packed.push((p.ptr, p.len));
                    block_scales.push((b.ptr, b.len));
                    tensor_scales.push(*tensor_scale);
                    input_scales.extend(*input_scale);
                }
                let upload = |v: &[f32]| DeviceVec::upload(&self.stream, v).map_err(failed(OP));
                Ok(StackedExperts::Nvfp4 {
                    packed: self.concat(OP, &packed)?,
                    block_scales: self.concat(OP, &block_scales)?,
                    tensor_scales: upload(&tensor_scales)?,
                    input_scales: if w4a4 { Some(upload(&input_scales)?) } else { None },
                })
            }
        }
    }

    /// The device ranges `parts` (address, bytes) copied one after another into a new allocation.
    /// The copies are queued on the stream: the sources must live until it is synchronised.
    fn concat(&self, op: &'static str, parts: &[(u64, usize)]) -> Result<DeviceVec<u8>, KernelError> {
        let len = parts.iter().map(|&(_, bytes)| bytes).sum();
        // SAFETY: u8 has no invalid bit patterns, and every byte is written below.
        let slice = unsafe { self.stream.alloc::<u8>(len) }.map_err(failed(op))?;
        let stacked = DeviceVec::from_slice(&self.stream, slice);
        let mut at = 0u64;
        for &(src, bytes) in parts {
            // SAFETY: the destination range lies inside `stacked` (the sizes sum to its length)
            // and the source is a live weight allocation of `bytes` bytes.
            unsafe { cudarc::driver::result::memcpy_dtod_async(stacked.ptr + at, src, bytes, self.stream.cu_stream()) }
                .map_err(failed(op))?;
            at += bytes as u64;
        }
        Ok(stacked)
    }
}
