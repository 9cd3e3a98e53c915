//! Pointwise activations. Small enough to be plain functions the compiler inlines and
//! vectorises; the slice versions exist so model code reads as one call per step.

/// `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `1 / (1 + e^-x)`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `ln(1 + e^x)`, linear above 20 as PyTorch's `softplus` (threshold 20) is.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// `relu(x)²`, in place.
pub fn relu2_in_place(x: &mut [f32]) {
    for v in x {
        let r = v.max(0.0);
        *v = r * r;
    }
}

/// `a += b`, element-wise.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a += b;
    }
}
