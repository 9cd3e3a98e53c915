//! Reusable activation buffers for the forward pass.
//!
//! A forward pass needs a dozen buffers per block, up to tens of megabytes each. Allocating them
//! fresh costs a page fault per 4 KiB and a memset every time (large allocations go straight to
//! `mmap` and back), which measured ~10% of a 16 x 128 batch. Buffers taken here come back to a
//! small pool when dropped and are handed out again without clearing: **a taken buffer's contents
//! are unspecified**, and every user overwrites it completely (GEMM outputs, op outputs).

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept for reuse: more than a forward pass holds at once.
const MAX_POOLED: usize = 32;
/// Bytes kept for reuse at most, so an occasional huge batch does not pin its memory forever.
const MAX_POOLED_BYTES: usize = 512 << 20;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` f32s from the pool (contents unspecified); returns to the pool on drop.
pub struct Buffer {
    data: Vec<f32>,
    len: usize,
}

/// Takes a buffer of at least `len` elements, reusing the smallest pooled one that fits.
pub fn take(len: usize) -> Buffer {
    let reused = {
        let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    };
    // Pooled vectors are always fully initialised (len == the size they were created with).
    let data = reused.unwrap_or_else(|| vec![0.0; len]);
    Buffer { data, len }
}

/// Takes a buffer and fills it with zeros (for accumulators).
pub fn take_zeroed(len: usize) -> Buffer {
    let mut buffer = take(len);
    buffer.fill(0.0);
    buffer
}

impl Buffer {
    /// Copies the contents into a plain vector (for results that leave the engine).
    pub fn to_vec(&self) -> Vec<f32> {
        self[..].to_vec()
    }
}

impl Deref for Buffer {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.push(data);
        // Over a limit, drop the smallest buffers first: the large ones are the expensive ones to
        // fault in again.
        let bytes = |pool: &Vec<Vec<f32>>| pool.iter().map(|v| v.len() * 4).sum::<usize>();
        while pool.len() > MAX_POOLED || (pool.len() > 1 && bytes(&pool) > MAX_POOLED_BYTES) {
            if let Some((i, _)) = pool.iter().enumerate().min_by_key(|(_, v)| v.len()) {
                pool.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_the_asked_length_and_zeroed_ones_are_zero() {
        // The pool is process-wide and other tests use it concurrently, so this checks only what
        // holds whatever they do: lengths, and zeroing when asked.
        for len in [1000, 500, 64, 1] {
            let mut a = take(len);
            assert_eq!(a.len(), len);
            a.fill(7.0);
            drop(a);
            assert!(take_zeroed(len).iter().all(|v| *v == 0.0));
        }
    }
}
