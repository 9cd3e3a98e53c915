//! Where the ops run: the CPU backend (the default) or a CUDA device.
//!
//! [`open`] checks what can be checked before a model is read (a driver, the device); the CUDA
//! backend itself opens with the model's sizes ([`crate::cuda::backend::Cuda::open`]) and fails,
//! with a [`DeviceError`] that says why, when the kernels it launches are not all written, the
//! model's shapes are not ones they handle, or the memory plan does not fit. The driver is probed
//! before any cudarc call that would panic without `libcuda`.

use std::fmt;
use std::str::FromStr;

/// A compute device, as `--device` names it: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    #[default]
    Cpu,
    /// CUDA device number N.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The text is not a device name.
    #[error("unknown device {0:?}: expected cpu, cuda or cuda:N")]
    Parse(String),
    /// No CUDA driver library on this machine.
    #[error("{device}: no CUDA driver (libcuda.so) on this machine; run on the CPU with --device cpu (the default)")]
    NoDriver {
        /// The device asked for.
        device: Device,
    },
    /// The driver is there but refused the device.
    #[error("{device}: the CUDA driver cannot open the device: {reason}")]
    Driver {
        /// The device asked for.
        device: Device,
        /// The driver's error.
        reason: String,
    },
    /// The kernels could not be compiled for the device.
    #[error("{device}: compiling the CUDA kernels failed: {reason}")]
    Compile {
        /// The device asked for.
        device: Device,
        /// NVRTC's or the PTX cache's error.
        reason: String,
    },
    /// Kernels the backend launches are not in the compiled sources yet.
    #[error(
        "{device}: the CUDA backend cannot run the model yet: kernels {missing:?} are not written (see docs/gpu.md, \
         \"What the host side needs\"); run on the CPU with --device cpu"
    )]
    MissingKernels {
        /// The device asked for.
        device: Device,
        /// The kernel names not found.
        missing: Vec<&'static str>,
    },
    /// The model has a shape the kernels do not handle.
    #[error("{device}: the CUDA kernels do not handle this model: {reason}; run on the CPU with --device cpu")]
    Unsupported {
        /// The device asked for.
        device: Device,
        /// What is not handled.
        reason: String,
    },
    /// The memory plan does not fit in the device's free memory.
    #[error(
        "{device}: the model needs {needed} bytes of device memory (weights and the workspace for the batch \
         token limit), and {free} are free; serve fewer layers or lower --max-batch-tokens"
    )]
    OutOfMemory {
        /// The device asked for.
        device: Device,
        /// Bytes planned.
        needed: usize,
        /// Bytes free on the device.
        free: usize,
    },
}

impl FromStr for Device {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(other.to_owned())),
        }
    }
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Checks that the ops can run on `device`: always for the CPU; for CUDA, that a driver is
/// there and opens the device (the backend itself opens with the model: [`crate::cuda::backend::Cuda::open`]).
pub fn open(device: Device) -> Result<(), DeviceError> {
    let Device::Cuda(ordinal) = device else {
        return Ok(());
    };
    if !cuda_driver_present() {
        return Err(DeviceError::NoDriver { device });
    }
    cudarc::driver::CudaContext::new(ordinal).map_err(|e| DeviceError::Driver {
        device,
        reason: e.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU"] {
            assert_eq!(bad.parse::<Device>(), Err(DeviceError::Parse(bad.to_owned())), "{bad}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(Device::default(), Device::Cpu);
    }

    #[test]
    fn cpu_always_opens_and_cuda_without_a_driver_fails_clearly() {
        assert_eq!(open(Device::Cpu), Ok(()));
        if cuda_driver_present() {
            eprintln!("SKIPPED the no-driver case: this machine has a CUDA driver");
            return;
        }
        let err = open(Device::Cuda(1)).unwrap_err();
        assert_eq!(
            err,
            DeviceError::NoDriver {
                device: Device::Cuda(1)
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("cuda:1") && msg.contains("no CUDA driver") && msg.contains("--device cpu"),
            "{msg}"
        );
    }
}
