//! Activation calibration for W4A4: the largest |input| each Linear sees over a corpus, as
//! ModelOpt's max calibration records it, from which an NVFP4 layer's static
//! `input_scale = amax / (6 * 448)` follows (the same two-level rule as its weights).
//!
//! A model loaded with [`NemotronH::load_observed`] reports every Linear's input to one shared
//! [`ActivationAmax`] under the Linear's module name (canonical, without `backbone.`/`model.`;
//! Mamba's split `in_proj` reports once per part, with the same input). Nothing else changes: the
//! forward pass computes the same bits.
//!
//! [`NemotronH::load_observed`]: crate::NemotronH::load_observed

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The largest absolute input value seen per Linear module.
#[derive(Debug, Default)]
pub struct ActivationAmax(Mutex<HashMap<Arc<str>, f32>>);

impl ActivationAmax {
    /// Records the inputs `x` of module `module` (NaN values are ignored).
    pub(crate) fn observe(&self, module: &Arc<str>, x: &[f32]) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.entry(module.clone()).or_insert(0.0);
        *entry = entry.max(amax);
    }

    /// The amax of every module seen so far, by canonical module name.
    pub fn snapshot(&self) -> HashMap<String, f32> {
        let seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter().map(|(k, &v)| (k.to_string(), v)).collect()
    }
}

/// Where a Linear reports its inputs.
#[derive(Clone, Debug)]
pub(crate) struct Observer {
    pub(crate) amax: Arc<ActivationAmax>,
    pub(crate) module: Arc<str>,
}

impl marc_kernels::backend::InputObserver for Observer {
    fn observe(&self, x: &[f32]) {
        self.amax.observe(&self.module, x);
    }
}
