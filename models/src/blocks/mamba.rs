//! The Mamba-2 mixer: `in_proj` -> [z | xBC | dt]; causal depthwise conv + SiLU on xBC;
//! the selective scan (chunked SSD) with `dt = max(softplus(dt + dt_bias), dt_min)`,
//! `A = -exp(A_log)` and the D skip; the gated group RMSNorm with z; `out_proj`.

use marc_kernels::KernelError;
use marc_kernels::ops::activation::softplus;
use marc_kernels::ops::causal_conv1d::causal_conv1d_silu;
use marc_kernels::ops::norm::gated_group_rms_norm;
use marc_kernels::ops::ssd_scan::{SsdShape, ssd_scan};

use crate::config::MambaConfig;
use crate::error::LoadError;
use crate::weights::{Linear, WeightLoader};

pub(crate) struct Mamba {
    cfg: MambaConfig,
    eps: f32,
    in_proj: Linear,
    /// `[conv_dim, kernel]` (the checkpoint's `[conv_dim, 1, kernel]` without the unit axis).
    conv_weight: Vec<f32>,
    conv_bias: Option<Vec<f32>>,
    /// `-exp(A_log)`, computed once at load.
    a: Vec<f32>,
    d: Vec<f32>,
    dt_bias: Vec<f32>,
    norm: Vec<f32>,
    out_proj: Linear,
}

impl Mamba {
    pub(crate) fn load(
        w: &mut WeightLoader<'_>,
        prefix: &str,
        cfg: &MambaConfig,
        hidden: usize,
        eps: f32,
    ) -> Result<Self, LoadError> {
        let heads = cfg.num_heads;
        let conv_dim = cfg.conv_dim();
        let a_log = w.vector(&format!("{prefix}.A_log"), &[heads])?;
        Ok(Self {
            cfg: cfg.clone(),
            eps,
            in_proj: w.linear(&format!("{prefix}.in_proj"), cfg.in_proj_size(), hidden, cfg.proj_bias)?,
            conv_weight: w.vector(&format!("{prefix}.conv1d.weight"), &[conv_dim, 1, cfg.conv_kernel])?,
            conv_bias: w.optional_vector(&format!("{prefix}.conv1d.bias"), conv_dim, cfg.conv_bias)?,
            a: a_log.iter().map(|v| -v.exp()).collect(),
            d: w.vector(&format!("{prefix}.D"), &[heads])?,
            dt_bias: w.vector(&format!("{prefix}.dt_bias"), &[heads])?,
            norm: w.vector(&format!("{prefix}.norm.weight"), &[cfg.intermediate_size()])?,
            out_proj: w.linear(
                &format!("{prefix}.out_proj"),
                hidden,
                cfg.intermediate_size(),
                cfg.proj_bias,
            )?,
        })
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.in_proj.size_in_bytes() + self.out_proj.size_in_bytes() + 4 * self.conv_weight.len()
    }

    pub(crate) fn forward(&self, x: &[f32], cu_seqlens: &[usize]) -> Result<Vec<f32>, KernelError> {
        let cfg = &self.cfg;
        let tokens = x.len() / self.in_proj.weight.cols();
        let (inner, conv_dim, heads) = (cfg.intermediate_size(), cfg.conv_dim(), cfg.num_heads);
        let proj = self.in_proj.apply(x, tokens)?;

        // Split each projected row into z, xBC and dt; dt is discretised on the way.
        let mut z = Vec::with_capacity(tokens * inner);
        let mut xbc = Vec::with_capacity(tokens * conv_dim);
        let mut dt = Vec::with_capacity(tokens * heads);
        for row in proj.chunks_exact(cfg.in_proj_size()) {
            let (z_row, rest) = row.split_at(inner);
            let (xbc_row, dt_row) = rest.split_at(conv_dim);
            z.extend_from_slice(z_row);
            xbc.extend_from_slice(xbc_row);
            dt.extend(
                dt_row
                    .iter()
                    .zip(&self.dt_bias)
                    .map(|(v, bias)| softplus(v + bias).max(cfg.dt_min)),
            );
        }
        drop(proj);

        let mut conv = vec![0.0; xbc.len()];
        causal_conv1d_silu(
            &xbc,
            cu_seqlens,
            &self.conv_weight,
            self.conv_bias.as_deref(),
            cfg.conv_kernel,
            &mut conv,
        )?;
        drop(xbc);

        // The scan wants x, B and C as separate contiguous arrays.
        let bc_width = cfg.n_groups * cfg.state_size;
        let mut xs = Vec::with_capacity(tokens * inner);
        let mut b = Vec::with_capacity(tokens * bc_width);
        let mut c = Vec::with_capacity(tokens * bc_width);
        for row in conv.chunks_exact(conv_dim) {
            let (x_row, rest) = row.split_at(inner);
            let (b_row, c_row) = rest.split_at(bc_width);
            xs.extend_from_slice(x_row);
            b.extend_from_slice(b_row);
            c.extend_from_slice(c_row);
        }
        drop(conv);

        let shape = SsdShape {
            num_heads: heads,
            head_dim: cfg.head_dim,
            n_groups: cfg.n_groups,
            state_size: cfg.state_size,
            chunk_size: cfg.chunk_size,
        };
        let mut y = vec![0.0; tokens * inner];
        ssd_scan(&shape, cu_seqlens, &xs, &dt, &self.a, &b, &c, &self.d, &mut y)?;
        gated_group_rms_norm(&mut y, &z, &self.norm, inner / cfg.n_groups, self.eps)?;
        self.out_proj.apply(&y, tokens)
    }
}
