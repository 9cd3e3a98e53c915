//! The CUDA kernels, compiled as C++ through the SIMT emulation, launched from Rust.

use std::ffi::{CString, c_char, c_int, c_void};

unsafe extern "C" {
    fn simt_launch(
        name: *const c_char,
        grid: *const [u32; 3],
        block: *const [u32; 3],
        shared_bytes: usize,
        args: *mut *mut c_void,
    ) -> c_int;
}

/// A launch failed before running.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    /// No kernel of that name is registered in `src/emulated.cpp`.
    #[error("no emulated kernel named {0:?} (is it listed in kernels/verify/src/emulated.cpp?)")]
    UnknownKernel(String),
    /// A grid or block dimension is zero, or a block has more than 1024 threads.
    #[error("invalid launch geometry for {name}: grid {grid:?}, block {block:?}")]
    Geometry {
        /// The kernel.
        name: String,
        /// Blocks per dimension.
        grid: [u32; 3],
        /// Threads per dimension.
        block: [u32; 3],
    },
}

/// A kernel's parameters in `cuLaunchKernel` form: one pointer per parameter, each pointing at the
/// parameter's value. Values are stored in 8-byte slots (pointers, `int`, `float`), read by the
/// kernel at their own width from the slot's start (little-endian).
#[derive(Default)]
pub struct Args {
    /// Pointers to the slots are taken only at launch, after the last push, so the vector may
    /// reallocate while arguments are added.
    slots: Vec<u64>,
}

impl Args {
    /// No parameters yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn push_bits(&mut self, bits: u64) -> &mut Self {
        self.slots.push(bits);
        self
    }

    /// A `const T*` parameter. The slice must outlive the launch.
    pub fn input<T>(&mut self, data: &[T]) -> &mut Self {
        self.push_bits(data.as_ptr() as u64)
    }

    /// A `T*` parameter the kernel writes. The slice must outlive the launch.
    pub fn output<T>(&mut self, data: &mut [T]) -> &mut Self {
        self.push_bits(data.as_mut_ptr() as u64)
    }

    /// A null pointer parameter (an absent optional operand).
    pub fn null(&mut self) -> &mut Self {
        self.push_bits(0)
    }

    /// An `int` parameter.
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.push_bits(u64::from(v as u32))
    }

    /// A `float` parameter.
    pub fn float(&mut self, v: f32) -> &mut Self {
        self.push_bits(u64::from(v.to_bits()))
    }
}

/// Runs kernel `name` over `grid` blocks of `block` threads with `shared_bytes` of dynamic shared
/// memory, on the CPU.
///
/// # Safety
/// `args` must match the kernel's parameter list in count and types, and every pointer in it must
/// be valid for all the accesses the kernel makes with this geometry (as on a GPU).
pub unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: usize,
    args: &mut Args,
) -> Result<(), LaunchError> {
    let threads = block.iter().map(|&d| u64::from(d)).product::<u64>();
    if grid.contains(&0) || block.contains(&0) || threads > 1024 {
        return Err(LaunchError::Geometry {
            name: name.to_owned(),
            grid,
            block,
        });
    }
    let c_name = CString::new(name).map_err(|_| LaunchError::UnknownKernel(name.to_owned()))?;
    let mut pointers: Vec<*mut c_void> = args
        .slots
        .iter_mut()
        .map(|slot| std::ptr::from_mut(slot).cast::<c_void>())
        .collect();
    // SAFETY: the name is a valid C string, grid/block point at three u32 each, and the caller
    // guarantees that `pointers` matches the kernel's parameters and that every buffer they name
    // is valid for the kernel's accesses.
    let status = unsafe { simt_launch(c_name.as_ptr(), &grid, &block, shared_bytes, pointers.as_mut_ptr()) };
    if status == 0 {
        Ok(())
    } else {
        Err(LaunchError::UnknownKernel(name.to_owned()))
    }
}
