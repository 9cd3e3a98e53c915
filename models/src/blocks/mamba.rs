//! The Mamba-2 mixer: `in_proj` -> [z | xBC | dt]; causal depthwise conv + SiLU on xBC;
//! the selective scan (chunked SSD) with `dt = max(softplus(dt + dt_bias), dt_min)`,
//! `A = -exp(A_log)` and the D skip; the gated group RMSNorm with z; `out_proj`.

use marc_kernels::KernelError;
use marc_kernels::backend::{Backend, Resident};
use marc_kernels::ops::ssd_scan::SsdShape;

use crate::config::MambaConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;

pub(crate) struct Mamba<B: Backend> {
    cfg: MambaConfig,
    eps: f32,
    /// `in_proj` split by output rows into its three consumers, so each lands contiguous.
    z_proj: B::Linear,
    xbc_proj: B::Linear,
    dt_proj: B::Linear,
    /// `[conv_dim, kernel]` (the checkpoint's `[conv_dim, 1, kernel]` without the unit axis).
    conv_weight: B::Vector,
    conv_bias: Option<B::Vector>,
    /// `-exp(A_log)`, computed once at load.
    a: B::Vector,
    d: B::Vector,
    dt_bias: B::Vector,
    norm: B::Vector,
    out_proj: B::Linear,
}

impl<B: Backend> Mamba<B> {
    pub(crate) fn load(
        w: &mut WeightLoader<'_, B>,
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
        Ok(Self {
            cfg: cfg.clone(),
            eps,
            z_proj,
            xbc_proj,
            dt_proj,
            conv_weight: w.param(&format!("{prefix}.conv1d.weight"), &[conv_dim, 1, cfg.conv_kernel])?,
            conv_bias: w.optional_param(&format!("{prefix}.conv1d.bias"), conv_dim, cfg.conv_bias)?,
            a: w.param_with(&format!("{prefix}.A_log"), &[heads], |a_log| {
                a_log.iter().map(|v| -v.exp()).collect()
            })?,
            d: w.param(&format!("{prefix}.D"), &[heads])?,
            dt_bias: w.param(&format!("{prefix}.dt_bias"), &[heads])?,
            norm: w.param(&format!("{prefix}.norm.weight"), &[inner])?,
            out_proj: w.linear(&format!("{prefix}.out_proj"), hidden, inner, cfg.proj_bias)?,
        })
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        [&self.z_proj, &self.xbc_proj, &self.dt_proj, &self.out_proj]
            .iter()
            .map(|l| l.size_in_bytes())
            .sum::<usize>()
            + self.conv_weight.size_in_bytes()
    }

    pub(crate) fn forward(&self, backend: &B, x: &B::Tensor, batch: &B::Batch) -> Result<B::Tensor, KernelError> {
        let cfg = &self.cfg;
        let z = backend.linear(x, &self.z_proj)?;
        let xbc = backend.linear(x, &self.xbc_proj)?;
        let mut dt = backend.linear(x, &self.dt_proj)?;
        backend.softplus_dt(&mut dt, &self.dt_bias, cfg.dt_min)?;

        let conv =
            backend.causal_conv1d_silu(&xbc, batch, &self.conv_weight, self.conv_bias.as_ref(), cfg.conv_kernel)?;
        drop(xbc);

        let shape = SsdShape::new(
            cfg.num_heads,
            cfg.head_dim,
            cfg.n_groups,
            cfg.state_size,
            cfg.chunk_size,
        );
        let mut y = backend.ssd_scan_xbc(&shape, batch, &conv, &dt, &self.a, &self.d)?;
        drop(conv);
        let group_size = cfg.intermediate_size() / cfg.n_groups;
        backend.gated_group_rms_norm(&mut y, &z, &self.norm, group_size, self.eps)?;
        backend.linear(&y, &self.out_proj)
    }
}
