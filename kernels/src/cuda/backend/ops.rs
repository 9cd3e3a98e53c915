//! The op interface on CUDA: each op checks its sizes, takes its output from the workspace and
//! launches its kernels with docs/gpu.md's launch configurations.

use cudarc::driver::PushKernelArg;

use super::gemm::{Activations, gemm_weight};
use super::launch::{GEMM_TILE, NULL, TCGEN05_TILE_M, grid, int, tcgen05_grid};
use super::memory::{CudaBatch, CudaEmbedding, CudaExperts, CudaLinear, CudaTensor, CudaVector, CudaWeight, DeviceVec};
use super::{ATTENTION_HEAD_DIMS, Cuda, failed, ssd_shared_bytes};
use crate::backend::{Backend, LinearSource, WeightData, WeightSource};
use crate::dtype::FloatType;
use crate::error::{KernelError, check_len};
use crate::ops::moe_route::RouterConfig;
use crate::ops::{AttentionShape, SsdShape};
use crate::quant::nvfp4::NVFP4_BLOCK;

/// Threads per block of `nvfp4_quantize_f32` (`QUANTIZE_THREADS` in gemm_nvfp4.cu), one per 16-block.
pub(super) const NVFP4_QUANTIZE_THREADS: u32 = 256;

impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Vector = CudaVector;
    type Linear = CudaLinear;
    type Embedding = CudaEmbedding;
    type Experts = CudaExperts;
    type Batch = CudaBatch;

    fn upload_vector(&self, values: Vec<f32>) -> Result<CudaVector, KernelError> {
        DeviceVec::upload(&self.stream, &values).map_err(failed("upload_vector"))
    }

    fn upload_linear(&self, linear: LinearSource<'_>) -> Result<CudaLinear, KernelError> {
        const OP: &str = "cuda linear";
        let (rows, cols) = (linear.weight.rows, linear.weight.cols);
        if linear.observer.is_some() {
            return Err(KernelError::Unsupported {
                op: OP,
                reason: "calibration observes a Linear's inputs on the CPU backend only".into(),
            });
        }
        let data = gemm_weight(&linear.weight, linear.precision)?;
        if let Some(bias) = &linear.bias {
            check_len(OP, "bias", bias.len(), rows)?;
        }
        let upload = |bytes: &[u8]| DeviceVec::upload(&self.stream, bytes).map_err(failed(OP));
        let weight = match data {
            WeightData::Float { dtype, bytes } => CudaWeight::Float {
                dtype,
                values: upload(bytes)?,
            },
            WeightData::Fp8 { bytes, scale } => CudaWeight::Fp8 {
                codes: upload(bytes)?,
                scale,
            },
            WeightData::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
                input_scale,
            } => CudaWeight::Nvfp4 {
                packed: upload(packed)?,
                block_scales: upload(block_scales)?,
                tensor_scale,
                input_scale,
            },
        };
        let bias = linear
            .bias
            .map(|b| DeviceVec::upload(&self.stream, &b))
            .transpose()
            .map_err(failed(OP))?;
        Ok(CudaLinear {
            weight,
            bias,
            rows,
            cols,
            precision: linear.precision,
        })
    }

    fn upload_embedding(&self, table: WeightSource<'_>) -> Result<CudaEmbedding, KernelError> {
        const OP: &str = "cuda embedding";
        let (bytes, bf16) = match table.data {
            WeightData::Float {
                dtype: FloatType::BF16,
                bytes,
            } => (bytes, true),
            WeightData::Float {
                dtype: FloatType::F32,
                bytes,
            } => (bytes, false),
            other => {
                return Err(KernelError::Unsupported {
                    op: OP,
                    reason: format!("a {} table has no gather kernel (BF16 and F32 have)", other.dtype()),
                });
            }
        };
        let value = if bf16 { 2 } else { 4 };
        check_len(OP, "table bytes", bytes.len(), table.rows * table.cols * value)?;
        Ok(CudaEmbedding {
            table: DeviceVec::upload(&self.stream, bytes).map_err(failed(OP))?,
            bf16,
            rows: table.rows,
            width: table.cols,
        })
    }

    fn group_experts(&self, experts: Vec<(CudaLinear, CudaLinear)>) -> Result<CudaExperts, KernelError> {
        const OP: &str = "group_experts";
        let Some((first_up, _)) = experts.first() else {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: "no experts".into(),
            });
        };
        let (inter, width, precision) = (first_up.rows, first_up.cols, first_up.precision);
        for (e, (up, down)) in experts.iter().enumerate() {
            let same = (up.rows, up.cols, down.rows, down.cols) == (inter, width, width, inter);
            if !same || up.bias.is_some() || down.bias.is_some() || up.precision != precision {
                return Err(KernelError::InvalidShape {
                    op: OP,
                    reason: format!("expert {e} differs from expert 0 in shape, bias or precision"),
                });
            }
        }
        let stacked = self
            .stack_experts(experts.iter().map(|(up, _)| up))
            .and_then(|up| Ok((up, self.stack_experts(experts.iter().map(|(_, down)| down))?)));
        // The copies read the experts' own allocations, freed when `experts` is dropped: they must
        // have run first, whether or not stacking succeeded.
        self.stream.synchronize().map_err(failed(OP))?;
        let (up, down) = stacked?;
        Ok(CudaExperts {
            experts: experts.len(),
            up,
            down,
            inter,
            width,
            precision,
        })
    }

    fn batch(&self, tokens: &[u32], cu_seqlens: &[usize]) -> Result<CudaBatch, KernelError> {
        const OP: &str = "batch";
        if tokens.len() > self.plan.max_tokens {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!(
                    "{} tokens, and the CUDA workspace is planned for {} (the batch token limit)",
                    tokens.len(),
                    self.plan.max_tokens
                ),
            });
        }
        if cu_seqlens.first() != Some(&0) || cu_seqlens.last() != Some(&tokens.len()) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("cu_seqlens must run from 0 to {} tokens", tokens.len()),
            });
        }
        let ids = tokens
            .iter()
            .map(|&t| int::<i32>(OP, "token id", t as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let cu = cu_seqlens
            .iter()
            .map(|&c| int::<i32>(OP, "cu_seqlens", c))
            .collect::<Result<Vec<_>, _>>()?;
        let ids_buf = self.scratch(OP, ids.len() * 4)?;
        let cu_buf = self.scratch(OP, cu.len() * 4)?;
        // SAFETY: each destination holds the copied bytes; the host vectors outlive the copies
        // because the stream is synchronised before they are dropped.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(ids_buf.ptr, &ids, self.stream.cu_stream())
                .map_err(failed(OP))?;
            cudarc::driver::result::memcpy_htod_async(cu_buf.ptr, &cu, self.stream.cu_stream()).map_err(failed(OP))?;
        }
        self.stream.synchronize().map_err(failed(OP))?;
        Ok(CudaBatch {
            ids: ids_buf,
            cu_seqlens: cu_buf,
            tokens: tokens.len(),
            sequences: cu_seqlens.len() - 1,
            max_len: cu_seqlens.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0),
        })
    }

    fn download(&self, x: &CudaTensor) -> Result<Vec<f32>, KernelError> {
        let mut host = vec![0.0f32; x.len];
        // SAFETY: the tensor holds `len` f32s; the stream is synchronised before `host` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, x.ptr(), self.stream.cu_stream()) }
            .map_err(failed("download"))?;
        self.synchronize()?;
        Ok(host)
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(failed("synchronize"))
    }

    fn embed(&self, table: &CudaEmbedding, batch: &CudaBatch) -> Result<CudaTensor, KernelError> {
        const OP: &str = "embed";
        let out = self.tensor(OP, batch.tokens * table.width)?;
        let (vocab, width): (i32, i32) = (int(OP, "vocab", table.rows)?, int(OP, "width", table.width)?);
        let f = if table.bf16 {
            &self.kernels.embedding_gather_bf16
        } else {
            &self.kernels.embedding_gather_f32
        };
        let cfg = grid(int(OP, "tokens", batch.tokens)?, 1, 1, 256, 0);
        self.launch(OP, f, cfg, |a| {
            a.arg(&table.table.ptr)
                .arg(&batch.ids.ptr)
                .arg(&vocab)
                .arg(&width)
                .arg(&out.buf.ptr);
        })?;
        Ok(out)
    }

    fn linear(&self, x: &CudaTensor, linear: &CudaLinear) -> Result<CudaTensor, KernelError> {
        const OP: &str = "cuda linear";
        if !x.len.is_multiple_of(linear.cols) {
            return Err(KernelError::LengthMismatch {
                op: OP,
                what: "x",
                expected: x.len.next_multiple_of(linear.cols),
                found: x.len,
            });
        }
        let m = x.len / linear.cols;
        let out = self.tensor(OP, m * linear.rows)?;
        let (mm, n, k): (i32, i32, i32) = (int(OP, "m", m)?, int(OP, "n", linear.rows)?, int(OP, "k", linear.cols)?);
        // Every GEMM kernel tiles the output 64 x 64 with 128 threads (gemm_tile.cuh).
        let cfg = grid(
            int(OP, "column tiles", linear.rows.div_ceil(GEMM_TILE))?,
            int(OP, "row tiles", m.div_ceil(GEMM_TILE))?,
            1,
            128,
            0,
        );
        let bias = linear.bias.as_ref().map_or(NULL, |b| b.ptr);
        let (x_ptr, y_ptr) = (x.ptr(), out.ptr());
        match &linear.weight {
            CudaWeight::Float { .. } | CudaWeight::Fp8 { .. } | CudaWeight::Nvfp4 { input_scale: None, .. } => {
                let weight = &linear.weight;
                let (kernel, reads) = match weight {
                    CudaWeight::Float { dtype, .. } => self.float_gemm(*dtype, false),
                    CudaWeight::Fp8 { .. } => (&self.kernels.gemm_fp8_f32, Activations::F32),
                    CudaWeight::Nvfp4 { .. } => (&self.kernels.gemm_nvfp4_w4a16_f32, Activations::F32),
                };
                // Every one of these kernels takes (a, the weight's arguments, bias, m, n, k, y).
                let gemm = |a_ptr: u64, with_bias: bool, out_ptr: u64| {
                    let bias = if with_bias { bias } else { NULL };
                    self.launch(OP, kernel, cfg, |a| {
                        a.arg(&a_ptr);
                        weight.push_gemm_args(a);
                        a.arg(&bias).arg(&mm).arg(&n).arg(&k).arg(&out_ptr);
                    })
                };
                self.staged_gemm(OP, (x_ptr, x.len), &out, linear.precision, reads, gemm)?;
            }
            CudaWeight::Nvfp4 {
                input_scale: Some(input_scale),
                ..
            } => {
                // W4A4: x quantised to NVFP4 with the layer's static scale (one thread per 16-block,
                // the CPU quantiser's bits), then the block-scaled product.
                let blocks = x.len / NVFP4_BLOCK;
                let x_packed = self.scratch(OP, x.len / 2)?;
                let x_scales = self.scratch(OP, blocks)?;
                let quantise = grid(
                    int(OP, "quantiser blocks", blocks.div_ceil(NVFP4_QUANTIZE_THREADS as usize))?,
                    1,
                    1,
                    NVFP4_QUANTIZE_THREADS,
                    0,
                );
                self.launch(OP, &self.kernels.nvfp4_quantize_f32, quantise, |a| {
                    a.arg(&x_ptr)
                        .arg(&mm)
                        .arg(&k)
                        .arg(input_scale)
                        .arg(&x_packed.ptr)
                        .arg(&x_scales.ptr);
                })?;
                // The block-scaled product: on Blackwell (10.x) on its FP4 tensor cores, elsewhere
                // the portable kernel (both decoded operands exact in bf16, mma.sync); the same
                // parameters and the same result to f32 rounding.
                let (kernel, cfg) = if self.has_tcgen05() {
                    let tiles = tcgen05_grid(OP, linear.rows, m.div_ceil(TCGEN05_TILE_M))?;
                    (&self.kernels.gemm_nvfp4_w4a4_tcgen05_f32, tiles)
                } else {
                    (&self.kernels.gemm_nvfp4_w4a4_f32, cfg)
                };
                self.launch(OP, kernel, cfg, |a| {
                    a.arg(&x_packed.ptr).arg(&x_scales.ptr).arg(input_scale);
                    linear.weight.push_gemm_args(a);
                    a.arg(&bias).arg(&mm).arg(&n).arg(&k).arg(&y_ptr);
                })?;
            }
        }
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaVector, eps: f32) -> Result<CudaTensor, KernelError> {
        const OP: &str = "rms_norm_f32";
        let width = weight.len;
        if width == 0 || !x.len.is_multiple_of(width) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("x has {} elements, not whole rows of {width}", x.len),
            });
        }
        let out = self.tensor(OP, x.len)?;
        let w32: i32 = int(OP, "width", width)?;
        let cfg = grid(int(OP, "rows", x.len / width)?, 1, 1, 256, 0);
        self.launch(OP, &self.kernels.rms_norm_f32, cfg, |a| {
            a.arg(&x.buf.ptr).arg(&weight.ptr).arg(&eps).arg(&w32).arg(&out.buf.ptr);
        })?;
        Ok(out)
    }

    fn add_assign(&self, acc: &mut CudaTensor, x: &CudaTensor) -> Result<(), KernelError> {
        check_len("add_f32", "x", x.len, acc.len)?;
        self.add_raw(acc.ptr(), x.ptr(), x.len)
    }

    fn relu2(&self, x: &mut CudaTensor) -> Result<(), KernelError> {
        const OP: &str = "relu2_f32";
        let n: i32 = int(OP, "n", x.len)?;
        self.launch(OP, &self.kernels.relu2_f32, self.elementwise(x.len)?, |a| {
            a.arg(&x.buf.ptr).arg(&n);
        })
    }

    fn softplus_dt(&self, dt: &mut CudaTensor, bias: &CudaVector, min: f32) -> Result<(), KernelError> {
        const OP: &str = "softplus_dt_f32";
        if bias.len == 0 || !dt.len.is_multiple_of(bias.len) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("{} step sizes are not whole rows of {} heads", dt.len, bias.len),
            });
        }
        let (heads, n): (i32, i32) = (int(OP, "heads", bias.len)?, int(OP, "n", dt.len)?);
        self.launch(OP, &self.kernels.softplus_dt_f32, self.elementwise(dt.len)?, |a| {
            a.arg(&dt.buf.ptr).arg(&bias.ptr).arg(&heads).arg(&n).arg(&min);
        })
    }

    fn causal_conv1d_silu(
        &self,
        x: &CudaTensor,
        batch: &CudaBatch,
        weight: &CudaVector,
        bias: Option<&CudaVector>,
        kernel_size: usize,
    ) -> Result<CudaTensor, KernelError> {
        const OP: &str = "causal_conv1d_silu_f32";
        let channels = weight.len / kernel_size.max(1);
        check_len(OP, "x", x.len, batch.tokens * channels)?;
        if let Some(bias) = bias {
            check_len(OP, "bias", bias.len, channels)?;
        }
        let out = self.tensor(OP, x.len)?;
        let (seqs, k, c): (i32, i32, i32) = (
            int(OP, "sequences", batch.sequences)?,
            int(OP, "kernel_size", kernel_size)?,
            int(OP, "channels", channels)?,
        );
        let bias = bias.map_or(NULL, |b| b.ptr);
        let cfg = grid(
            int(OP, "channel blocks", channels.div_ceil(128))?,
            int(OP, "tokens", batch.tokens)?,
            1,
            128,
            0,
        );
        self.launch(OP, &self.kernels.causal_conv1d_silu_f32, cfg, |a| {
            a.arg(&x.buf.ptr)
                .arg(&batch.cu_seqlens.ptr)
                .arg(&seqs)
                .arg(&weight.ptr)
                .arg(&bias)
                .arg(&k)
                .arg(&c)
                .arg(&out.buf.ptr);
        })?;
        Ok(out)
    }

    fn ssd_scan_xbc(
        &self,
        shape: &SsdShape,
        batch: &CudaBatch,
        xbc: &CudaTensor,
        dt: &CudaTensor,
        a: &CudaVector,
        d: &CudaVector,
    ) -> Result<CudaTensor, KernelError> {
        const OP: &str = "ssd_scan_f32";
        let (h, p, g, n) = (shape.num_heads, shape.head_dim, shape.n_groups, shape.state_size);
        if h == 0 || g == 0 || !h.is_multiple_of(g) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("{h} heads in {g} groups"),
            });
        }
        let (x_width, bc_width) = (h * p, g * n);
        let row = x_width + 2 * bc_width;
        check_len(OP, "xbc", xbc.len, batch.tokens * row)?;
        check_len(OP, "dt", dt.len, batch.tokens * h)?;
        check_len(OP, "a", a.len, h)?;
        check_len(OP, "d", d.len, h)?;
        let y = self.tensor(OP, batch.tokens * x_width)?;
        let (b_ptr, c_ptr) = (
            xbc.ptr() + x_width as u64 * 4,
            xbc.ptr() + (x_width + bc_width) as u64 * 4,
        );
        let ints: [i32; 5] = [
            int(OP, "row", row)?,
            int(OP, "heads", h)?,
            int(OP, "head_dim", p)?,
            int(OP, "groups", g)?,
            int(OP, "state", n)?,
        ];
        let cfg = grid(
            int(OP, "heads", h)?,
            int(OP, "sequences", batch.sequences)?,
            1,
            256,
            int(OP, "shared bytes", ssd_shared_bytes(p, n))?,
        );
        self.launch(OP, &self.kernels.ssd_scan_f32, cfg, |l| {
            l.arg(&xbc.buf.ptr)
                .arg(&ints[0])
                .arg(&b_ptr)
                .arg(&c_ptr)
                .arg(&ints[0])
                .arg(&dt.buf.ptr)
                .arg(&a.ptr)
                .arg(&d.ptr)
                .arg(&batch.cu_seqlens.ptr)
                .arg(&ints[1])
                .arg(&ints[2])
                .arg(&ints[3])
                .arg(&ints[4])
                .arg(&y.buf.ptr);
        })?;
        Ok(y)
    }

    fn gated_group_rms_norm(
        &self,
        y: &mut CudaTensor,
        z: &CudaTensor,
        weight: &CudaVector,
        group_size: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        const OP: &str = "gated_group_rms_norm_f32";
        let width = weight.len;
        if group_size == 0 || width == 0 || !width.is_multiple_of(group_size) || !y.len.is_multiple_of(width) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("y of {} in rows of {width}, groups of {group_size}", y.len),
            });
        }
        check_len(OP, "z", z.len, y.len)?;
        let (w32, g32): (i32, i32) = (int(OP, "width", width)?, int(OP, "group_size", group_size)?);
        let cfg = grid(
            int(OP, "rows", y.len / width)?,
            int(OP, "groups", width / group_size)?,
            1,
            256,
            0,
        );
        self.launch(OP, &self.kernels.gated_group_rms_norm_f32, cfg, |a| {
            a.arg(&y.buf.ptr)
                .arg(&z.buf.ptr)
                .arg(&weight.ptr)
                .arg(&w32)
                .arg(&g32)
                .arg(&eps);
        })
    }

    fn causal_attention(
        &self,
        shape: &AttentionShape,
        batch: &CudaBatch,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
    ) -> Result<CudaTensor, KernelError> {
        const OP: &str = "causal_attention_f32";
        let (hq, hkv, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
        let f = match d {
            8 => &self.kernels.causal_attention_f32_d8,
            16 => &self.kernels.causal_attention_f32_d16,
            24 => &self.kernels.causal_attention_f32_d24,
            32 => &self.kernels.causal_attention_f32_d32,
            64 => &self.kernels.causal_attention_f32_d64,
            128 => &self.kernels.causal_attention_f32_d128,
            _ => {
                return Err(KernelError::Unsupported {
                    op: OP,
                    reason: format!("head_dim {d} (kernels exist for {ATTENTION_HEAD_DIMS:?})"),
                });
            }
        };
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(KernelError::InvalidShape {
                op: OP,
                reason: format!("{hq} query heads over {hkv} kv heads"),
            });
        }
        check_len(OP, "q", q.len, batch.tokens * hq * d)?;
        check_len(OP, "k", k.len, batch.tokens * hkv * d)?;
        check_len(OP, "v", v.len, batch.tokens * hkv * d)?;
        let out = self.tensor(OP, q.len)?;
        let (hq32, hkv32): (i32, i32) = (int(OP, "heads", hq)?, int(OP, "kv heads", hkv)?);
        // The CPU op's scale, computed the same way so both use the same f32.
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let cfg = grid(
            int(OP, "query tiles", batch.max_len.div_ceil(32))?,
            hq32.unsigned_abs(),
            int(OP, "sequences", batch.sequences)?,
            128,
            0,
        );
        self.launch(OP, f, cfg, |a| {
            a.arg(&q.buf.ptr)
                .arg(&k.buf.ptr)
                .arg(&v.buf.ptr)
                .arg(&batch.cu_seqlens.ptr)
                .arg(&hq32)
                .arg(&hkv32)
                .arg(&scale)
                .arg(&out.buf.ptr);
        })?;
        Ok(out)
    }

    fn routed_experts(
        &self,
        x: &CudaTensor,
        logits: CudaTensor,
        bias: &CudaVector,
        router: &RouterConfig,
        experts: &CudaExperts,
    ) -> Result<CudaTensor, KernelError> {
        let routing = self.route(&logits, bias, router, experts.experts)?;
        let (entries, inter, width) = (routing.entries(), experts.inter, experts.width);
        check_len("routed_experts", "x", x.len, routing.tokens() * width)?;
        // up (rows gathered by token), relu², down (rows by entry), then the weighted sum.
        let mut up = self.tensor("routed_experts", entries * inter)?;
        let projection = (&experts.up, (inter, width));
        self.grouped_gemm(x, &routing, router.top_k, projection, experts.precision, &up)?;
        self.relu2(&mut up)?;
        let down = self.tensor("routed_experts", entries * width)?;
        let projection = (&experts.down, (width, inter));
        self.grouped_gemm(&up, &routing, 1, projection, experts.precision, &down)?;
        self.unpermute(&down, &routing, width)
    }
}
