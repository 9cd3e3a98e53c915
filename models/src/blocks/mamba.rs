//! The Mamba-2 mixer: `in_proj` -> [z | xBC | dt]; causal depthwise conv + SiLU on xBC;
//! the selective scan (chunked SSD) with `dt = max(softplus(dt + dt_bias), dt_min)`,
//! `A = -exp(A_log)` and the D skip; the gated group RMSNorm with z; `out_proj`.

use marc_kernels::KernelError;
use marc_kernels::ops::activation::softplus;
use marc_kernels::ops::causal_conv1d::causal_conv1d_silu;
use marc_kernels::ops::norm::gated_group_rms_norm;
use marc_kernels::ops::ssd_scan::{SsdShape, ssd_scan_xbc};

use crate::config::MambaConfig;
use crate::error::LoadError;
use crate::weights::{Linear, WeightLoader};

pub(crate) struct Mamba {
    cfg: MambaConfig,
    eps: f32,
    /// `in_proj` split by output rows into its three consumers, so each lands contiguous.
    z_proj: Linear,
    xbc_proj: Linear,
    dt_proj: Linear,
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
        let (inner, conv_dim) = (cfg.intermediate_size(), cfg.conv_dim());
        let [z_proj, xbc_proj, dt_proj] = w.linear_split(
            &format!("{prefix}.in_proj"),
            [inner, conv_dim, heads],
            hidden,
            cfg.proj_bias,
        )?;
        let a_log = w.vector(&format!("{prefix}.A_log"), &[heads])?;
        Ok(Self {
            cfg: cfg.clone(),
            eps,
            z_proj,
            xbc_proj,
            dt_proj,
            conv_weight: w.vector(&format!("{prefix}.conv1d.weight"), &[conv_dim, 1, cfg.conv_kernel])?,
            conv_bias: w.optional_vector(&format!("{prefix}.conv1d.bias"), conv_dim, cfg.conv_bias)?,
            a: a_log.iter().map(|v| -v.exp()).collect(),
            d: w.vector(&format!("{prefix}.D"), &[heads])?,
            dt_bias: w.vector(&format!("{prefix}.dt_bias"), &[heads])?,
            norm: w.vector(&format!("{prefix}.norm.weight"), &[inner])?,
            out_proj: w.linear(&format!("{prefix}.out_proj"), hidden, inner, cfg.proj_bias)?,
        })
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        [&self.z_proj, &self.xbc_proj, &self.dt_proj, &self.out_proj]
            .iter()
            .map(|l| l.size_in_bytes())
            .sum::<usize>()
            + 4 * self.conv_weight.len()
    }

    pub(crate) fn forward(&self, x: &[f32], cu_seqlens: &[usize]) -> Result<Vec<f32>, KernelError> {
        let cfg = &self.cfg;
        let tokens = x.len() / self.z_proj.weight.cols();
        let z = self.z_proj.apply(x, tokens)?;
        let xbc = self.xbc_proj.apply(x, tokens)?;
        let mut dt = self.dt_proj.apply(x, tokens)?;
        for row in dt.chunks_exact_mut(cfg.num_heads) {
            for (v, bias) in row.iter_mut().zip(&self.dt_bias) {
                *v = softplus(*v + bias).max(cfg.dt_min);
            }
        }

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

        let shape = SsdShape {
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim,
            n_groups: cfg.n_groups,
            state_size: cfg.state_size,
            chunk_size: cfg.chunk_size,
        };
        let mut y = vec![0.0; z.len()];
        ssd_scan_xbc(&shape, cu_seqlens, &conv, &dt, &self.a, &self.d, &mut y)?;
        drop(conv);
        gated_group_rms_norm(&mut y, &z, &self.norm, cfg.intermediate_size() / cfg.n_groups, self.eps)?;
        self.out_proj.apply(&y, tokens)
    }
}
