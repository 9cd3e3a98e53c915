//! The op interface on CUDA: each op checks its sizes, takes its output from the workspace and
//! launches its kernels with docs/gpu.md's launch configurations.

use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig, PushKernelArg};

use super::memory::{ArenaBuf, CudaBatch, CudaEmbedding, CudaExperts, CudaLinear, CudaTensor, CudaVector, DeviceVec};
use super::{Cuda, failed, ssd_shared_bytes};
use crate::backend::{Backend, LinearSource, WeightData, WeightSource};
use crate::cuda::plan::{EXPERT_TILE, padded_expert_rows};
use crate::dtype::FloatType;
use crate::error::{KernelError, check_len};
use crate::ops::matmul::MatmulPrecision;
use crate::ops::moe_route::RouterConfig;
use crate::ops::{AttentionShape, SsdShape};

/// Threads of the element-wise kernels (the ones docs/gpu.md lists as not written yet).
const ELEMENTWISE_THREADS: u32 = 256;
/// `GEMM_BM` / `GEMM_BN` of gemm_bf16.cu.
const GEMM_TILE: usize = 64;

/// A launch size or an `int` kernel argument out of range.
fn int<T: TryFrom<usize>>(op: &'static str, what: &str, value: usize) -> Result<T, KernelError> {
    T::try_from(value).map_err(|_| KernelError::InvalidShape {
        op,
        reason: format!("{what} = {value} is beyond what a kernel argument holds"),
    })
}

fn grid(x: u32, y: u32, z: u32, threads: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x, y, z),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// A null device pointer, for optional arguments.
const NULL: u64 = 0;

/// bf16 bits of a little-endian bf16 tensor.
fn bf16_bits(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

impl Cuda {
    /// Launches `f` with the arguments `push` adds.
    fn launch<'a>(
        &'a self,
        op: &'static str,
        f: &'a CudaFunction,
        cfg: LaunchConfig,
        push: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<(), KernelError> {
        if cfg.grid_dim.0 == 0 || cfg.grid_dim.1 == 0 || cfg.grid_dim.2 == 0 {
            return Ok(());
        }
        let mut args = self.stream.launch_builder(f);
        push(&mut args);
        // SAFETY: every pointer argument is a live weight or workspace range whose size the op
        // checked against the kernel's contract (its header comment); integer arguments match the
        // kernel's parameter types; the stream orders this launch after the writes it reads.
        unsafe { args.launch(cfg) }.map(drop).map_err(failed(op))
    }

    /// One launch per `ELEMENTWISE_THREADS` elements of `n`.
    fn elementwise(&self, n: usize) -> Result<LaunchConfig, KernelError> {
        let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize);
        Ok(grid(
            int("elementwise", "blocks", blocks)?,
            1,
            1,
            ELEMENTWISE_THREADS,
            0,
        ))
    }

    /// `acc += x` over `n` floats at device addresses.
    fn add_raw(&self, acc: u64, x: u64, n: usize) -> Result<(), KernelError> {
        let n32: i32 = int("add_f32", "n", n)?;
        self.launch("add_f32", &self.kernels.add_f32, self.elementwise(n)?, |a| {
            a.arg(&acc).arg(&x).arg(&n32);
        })
    }

    /// Runs `gemm(a, with_bias, out)` — a GEMM reading bf16 rows from `a` — on `x` (`rows x cols`
    /// f32 at `x_ptr`) into `out` (`out_len` floats) per `precision`: on x rounded to bf16, or,
    /// exact, on each of its three bf16 parts, summing the three products.
    fn staged_gemm(
        &self,
        op: &'static str,
        x_ptr: u64,
        x_len: usize,
        out: &CudaTensor,
        precision: MatmulPrecision,
        gemm: impl Fn(u64, bool, u64) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let n: i32 = int(op, "x", x_len)?;
        match precision {
            MatmulPrecision::Bf16Activations => {
                let staged = self.scratch(op, x_len * 2)?;
                self.launch(op, &self.kernels.round_bf16_f32, self.elementwise(x_len)?, |a| {
                    a.arg(&x_ptr).arg(&n).arg(&staged.ptr);
                })?;
                gemm(staged.ptr, true, out.ptr())
            }
            MatmulPrecision::Exact => {
                let parts = self.scratch(op, x_len * 2 * 3)?;
                let part = |i: u64| parts.ptr + i * x_len as u64 * 2;
                let (hi, mid, lo) = (part(0), part(1), part(2));
                self.launch(op, &self.kernels.split_bf16x3_f32, self.elementwise(x_len)?, |a| {
                    a.arg(&x_ptr).arg(&n).arg(&hi).arg(&mid).arg(&lo);
                })?;
                let partials = self.tensor(op, out.len * 2)?;
                let second = partials.ptr() + out.len as u64 * 4;
                gemm(hi, true, out.ptr())?;
                gemm(mid, false, partials.ptr())?;
                gemm(lo, false, second)?;
                self.add_raw(out.ptr(), partials.ptr(), out.len)?;
                self.add_raw(out.ptr(), second, out.len)
            }
            MatmulPrecision::Nvfp4Activations => Err(KernelError::Unsupported {
                op,
                reason: "NVFP4 activations (W4A4) have no CUDA GEMM yet".into(),
            }),
        }
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

/// One batch's routing on the device: the permutation the grouped GEMM reads.
struct Routing {
    experts: usize,
    /// Routing entries per expert, padded to the tile; `-1` pads, up to `rows`.
    sorted: ArenaBuf,
    offsets: ArenaBuf,
    /// Rows the grouped GEMM's grid covers (a bound on `offsets[experts]`, a multiple of the tile).
    rows: usize,
}

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
        let WeightSource { rows, cols, data } = linear.weight;
        let WeightData::Float {
            dtype: FloatType::BF16,
            bytes,
        } = data
        else {
            return Err(KernelError::Unsupported {
                op: OP,
                reason: format!(
                    "a {} weight has no CUDA GEMM yet (gemm_bf16_f32 takes BF16 weights); run this model \
                     with --device cpu",
                    data.dtype()
                ),
            });
        };
        check_len(OP, "weight bytes", bytes.len(), rows * cols * 2)?;
        if let Some(bias) = &linear.bias {
            check_len(OP, "bias", bias.len(), rows)?;
        }
        let weight = DeviceVec::upload(&self.stream, &bf16_bits(bytes)).map_err(failed(OP))?;
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
        let stack = |part: fn(&(CudaLinear, CudaLinear)) -> &CudaLinear| {
            let per_expert = inter * width;
            // SAFETY: u16 has no invalid bit patterns and every element is copied below.
            let mut stacked = unsafe { self.stream.alloc::<u16>(per_expert * experts.len()) }?;
            for (e, pair) in experts.iter().enumerate() {
                let src = part(pair);
                let mut dst = stacked.slice_mut(e * per_expert..(e + 1) * per_expert);
                // SAFETY: both ranges hold `per_expert` u16s; the source lives until the copy
                // has run (the stream is synchronised before `experts` is dropped).
                unsafe {
                    let (dst_ptr, _guard) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut dst, &self.stream);
                    cudarc::driver::result::memcpy_dtod_async(
                        dst_ptr,
                        src.weight.ptr,
                        per_expert * 2,
                        self.stream.cu_stream(),
                    )?;
                }
            }
            Ok::<_, cudarc::driver::DriverError>(stacked)
        };
        let up = stack(|(up, _)| up).map_err(failed(OP))?;
        let down = stack(|(_, down)| down).map_err(failed(OP))?;
        self.stream.synchronize().map_err(failed(OP))?;
        let (up_ptr, down_ptr) = (
            cudarc::driver::DevicePtr::device_ptr(&up, &self.stream).0,
            cudarc::driver::DevicePtr::device_ptr(&down, &self.stream).0,
        );
        Ok(CudaExperts {
            experts: experts.len(),
            up,
            down,
            up_ptr,
            down_ptr,
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
        const OP: &str = "gemm_bf16_f32";
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
        let cfg = grid(
            int(OP, "column tiles", linear.rows.div_ceil(GEMM_TILE))?,
            int(OP, "row tiles", m.div_ceil(GEMM_TILE))?,
            1,
            128,
            0,
        );
        let bias = linear.bias.as_ref().map_or(NULL, |b| b.ptr);
        self.staged_gemm(
            OP,
            x.ptr(),
            x.len,
            &out,
            linear.precision,
            |a_ptr, with_bias, out_ptr| {
                let bias = if with_bias { bias } else { NULL };
                self.launch(OP, &self.kernels.gemm_bf16_f32, cfg, |a| {
                    a.arg(&a_ptr)
                        .arg(&linear.weight.ptr)
                        .arg(&bias)
                        .arg(&mm)
                        .arg(&n)
                        .arg(&k)
                        .arg(&out_ptr);
                })
            },
        )?;
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
            64 => &self.kernels.causal_attention_f32_d64,
            128 => &self.kernels.causal_attention_f32_d128,
            _ => {
                return Err(KernelError::Unsupported {
                    op: OP,
                    reason: format!("head_dim {d} (kernels exist for 64 and 128)"),
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
        self.relu2(&mut up)?;
        let down = self.tensor(OP, entries * width)?;
        self.grouped_gemm(&up, &routing, 1, down_w, (width, inter), experts.precision, &down)?;
        let routed = self.tensor(OP, tokens * width)?;
        let (tk, w32): (i32, i32) = (ints[4], int(OP, "width", width)?);
        self.launch(
            "moe_combine_f32",
            &self.kernels.moe_combine_f32,
            self.elementwise(tokens * width)?,
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
}
