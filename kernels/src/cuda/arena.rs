//! The workspace arena's bookkeeping: byte offsets handed out as a stack inside one allocation made
//! at start-up, so a request never allocates device memory.
//!
//! Tensors are released in any order (Rust drops them when they go out of scope); a released
//! region is reclaimed once everything above it is released too, so a block's activations all
//! come back when the block ends. Pure arithmetic: the device pointer is added by the backend.

use super::plan::ALIGN;

/// The arena has no room for a tensor: the memory plan is smaller than what the forward needed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the CUDA workspace (planned for the batch token limit) has {free} of {capacity} bytes free, and \
     {wanted} were asked: the batch is larger than the plan, or the plan misses a tensor"
)]
pub struct ArenaFull {
    /// Bytes asked.
    pub wanted: usize,
    /// Bytes free at the top of the stack.
    pub free: usize,
    /// The arena's size.
    pub capacity: usize,
}

/// Stack allocation of byte ranges within `capacity` bytes.
#[derive(Debug)]
pub struct StackArena {
    capacity: usize,
    /// `(offset, bytes, live)`, bottom to top.
    entries: Vec<(usize, usize, bool)>,
    /// The most bytes ever in use at once.
    peak: usize,
}

impl StackArena {
    /// An empty arena of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Vec::new(),
            peak: 0,
        }
    }

    fn top(&self) -> usize {
        self.entries.last().map_or(0, |&(offset, bytes, _)| offset + bytes)
    }

    /// Reserves `bytes` (rounded up to [`ALIGN`]) on top of the stack; returns its offset.
    pub fn alloc(&mut self, bytes: usize) -> Result<usize, ArenaFull> {
        let offset = self.top();
        let rounded = bytes.next_multiple_of(ALIGN);
        let free = self.capacity - offset;
        if rounded > free {
            return Err(ArenaFull {
                wanted: rounded,
                free,
                capacity: self.capacity,
            });
        }
        self.entries.push((offset, rounded, true));
        self.peak = self.peak.max(offset + rounded);
        Ok(offset)
    }

    /// Releases the region at `offset`; it is reused once every region above it is released.
    pub fn free(&mut self, offset: usize) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|e| e.0 == offset && e.2) {
            entry.2 = false;
        }
        while self.entries.last().is_some_and(|e| !e.2) {
            self.entries.pop();
        }
    }

    /// Bytes in use, released-but-buried regions included.
    pub fn in_use(&self) -> usize {
        self.top()
    }

    /// The most bytes ever in use at once.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_stack_up_aligned_and_come_back_when_everything_above_is_released() {
        let mut arena = StackArena::new(10 * ALIGN);
        let a = arena.alloc(1).unwrap();
        let b = arena.alloc(ALIGN + 1).unwrap();
        let c = arena.alloc(ALIGN).unwrap();
        assert_eq!((a, b, c), (0, ALIGN, 3 * ALIGN));
        // Released out of order: b stays buried under c.
        arena.free(b);
        assert_eq!(arena.in_use(), 4 * ALIGN);
        arena.free(c);
        assert_eq!(arena.in_use(), ALIGN);
        assert_eq!(arena.alloc(ALIGN).unwrap(), ALIGN);
        assert_eq!(arena.peak(), 4 * ALIGN);
    }

    #[test]
    fn a_full_arena_refuses_and_says_how_full() {
        let mut arena = StackArena::new(2 * ALIGN);
        arena.alloc(ALIGN).unwrap();
        let err = arena.alloc(ALIGN + 1).unwrap_err();
        assert_eq!(
            err,
            ArenaFull {
                wanted: 2 * ALIGN,
                free: ALIGN,
                capacity: 2 * ALIGN
            }
        );
        assert!(err.to_string().contains("workspace"), "{err}");
        // The refusal left the arena as it was.
        assert_eq!(arena.alloc(ALIGN).unwrap(), ALIGN);
    }
}
