//! Reading ptxas' verbose resource report (`--ptxas-options=-v`).

/// What ptxas reports for one kernel (entry function) on one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// The kernel's name.
    pub kernel: String,
    /// The architecture it was compiled for.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of local-memory stack frame per thread.
    pub stack_bytes: u32,
    /// Bytes of register spill stores.
    pub spill_stores: u32,
    /// Bytes of register spill loads.
    pub spill_loads: u32,
    /// Bytes of static shared memory per block.
    pub shared_bytes: u32,
}

/// The number right before `unit` in `line` (`"0 bytes spill stores"` -> 0 for `"bytes spill stores"`).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Every kernel's resources in `log` (one compile for one architecture), in report order.
///
/// The report names the entry (`Compiling entry function 'k' for 'sm_90a'`), then its stack and
/// spill line (`Function properties for k`) and its register and shared memory line (`Used 10
/// registers, ... 1024 bytes smem`). Properties of non-inlined device functions are skipped.
pub fn parse(log: &str) -> Vec<Resources> {
    let mut kernels: Vec<Resources> = Vec::new();
    let mut properties_of: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or_default().to_owned();
            let arch = parts.nth(1).unwrap_or_default().to_owned();
            kernels.push(Resources {
                kernel,
                arch,
                registers: 0,
                stack_bytes: 0,
                spill_stores: 0,
                spill_loads: 0,
                shared_bytes: 0,
            });
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            properties_of = Some(name.trim().to_owned());
        } else if line.contains("bytes stack frame") {
            let current = kernels.last_mut().filter(|k| Some(&k.kernel) == properties_of.as_ref());
            if let Some(k) = current {
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used ")
            && line.contains(" registers")
            && let Some(k) = kernels.last_mut()
        {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    kernels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'rms_norm_f32' for 'sm_90a'\n\
            ptxas info    : Function properties for rms_norm_f32\n\
            ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem\n\
            ptxas info    : Compile time = 7.326 ms\n";
        assert_eq!(
            parse(log),
            vec![Resources {
                kernel: "rms_norm_f32".into(),
                arch: "sm_90a".into(),
                registers: 18,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12,
                shared_bytes: 128,
            }]
        );
    }
}
