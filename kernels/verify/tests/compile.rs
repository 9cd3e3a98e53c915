//! Every kernel in kernels/cuda/ compiles with NVRTC for Hopper (sm_90a) and Blackwell (sm_100a)
//! with no register spills, no local-memory stack frame, and within its register budget, and
//! docs/gpu.md's resource table is what the compiler reports today. Also: the binary embeds every
//! kernel file, and the PTX cache compiles once and then reads from disk.
//!
//! A Rust test rather than a shell script: it runs under `cargo test --workspace` with the rest, the
//! resource report is parsed by tested code (`marc_kernels_verify::ptxas`), and it compiles through
//! the same code the server uses at start-up (`marc_kernels::cuda::nvrtc`).
//!
//! The compiler comes from NVIDIA's PyPI wheels, installed on first use by scripts/cuda_tools.sh into
//! target/cuda-tools/ (about 140 MB, a few seconds; later runs reuse it). Without network or Python
//! the test fails under CI (`CI` set) and is skipped with a printed reason elsewhere, so an offline
//! laptop can still run the rest of the suite.
//!
//! After changing a kernel, regenerate the table with
//! `MARC_UPDATE_GPU_DOCS=1 cargo test --release -p marc-kernels-verify --test compile`.

use std::path::{Path, PathBuf};

use marc_kernels::cuda::{nvrtc, ptx_cache, sources as embedded};
use marc_kernels_verify::ptxas::{self, Resources};
use marc_kernels_verify::sources;

/// The architectures every kernel must compile for: H100/H200 and B200.
const ARCHS: [&str; 2] = ["sm_90a", "sm_100a"];

/// Registers per thread each kernel may use, the most of its architectures. The budget is what
/// keeps the occupancy the kernel's design assumes (65536 registers per SM): at 256 threads per
/// block, 64 registers leave 4 blocks per SM; at 128 threads, 128 registers leave 4 blocks.
const REGISTER_BUDGETS: &[(&str, u32)] = &[
    // q, o and a tile of scores in registers (3 * D / 4 + 32 floats); 128 threads, so even 128
    // registers leave 4 blocks per SM.
    ("causal_attention_f32_d8", 128),
    ("causal_attention_f32_d16", 128),
    ("causal_attention_f32_d24", 128),
    ("causal_attention_f32_d32", 128),
    ("causal_attention_f32_d64", 128),
    ("causal_attention_f32_d128", 128),
    // One output per thread, K taps: a handful of registers, 128 threads.
    ("causal_conv1d_silu_f32", 40),
    // Copies and per-channel sums: a few pointers and one accumulator.
    ("embedding_gather_bf16", 32),
    ("embedding_gather_f32", 32),
    ("pool_f32", 32),
    // 32 f32 accumulators + 16 fragment words per lane; 128 threads.
    ("gemm_bf16_f32", 96),
    ("grouped_gemm_bf16_f32", 96),
    ("gemm_fp8_f32", 96),
    ("grouped_gemm_fp8_f32", 96),
    // 32 f32 accumulators and 12 operands per k-step, by FMA; 128 threads.
    ("gemm_f32_f32", 96),
    ("gemm_f16_f32", 96),
    ("grouped_gemm_f32_f32", 96),
    ("grouped_gemm_f16_f32", 96),
    // The same tile, plus the NVFP4 decode of each fragment register (nibble, block scale,
    // two products) for one operand (W4A16) or both (W4A4; the grouped one also quantises a
    // block per thread while staging); 128 registers at 128 threads still
    // leave 4 blocks per SM, and their shared memory (2-6 KiB) is no limit.
    ("gemm_nvfp4_w4a16_f32", 128),
    ("gemm_nvfp4_w4a4_f32", 128),
    ("grouped_gemm_nvfp4_w4a16_f32", 128),
    ("grouped_gemm_nvfp4_w4a4_f32", 128),
    ("mma_m16n8k16_probe", 40),
    // tcgen05: the accumulator lives in tensor memory, so a thread holds only its 16 scale words
    // (tcgen05.st), 16 accumulator words at a time in the epilogue (tcgen05.ld .x16) and the
    // copy loop's indices; 128 threads per block and one block's 24 KiB of shared memory, so 80
    // registers leave room for 6 blocks per SM, more than its 128 tensor-memory columns (4 per
    // SM) allow.
    ("gemm_nvfp4_w4a4_tcgen05_f32", 80),
    // The same, with nvfp4_quantize_f32's 16-element block per thread (values, amax, scale,
    // codes) while staging the gathered rows in place of the A copy; 96 at 128 threads still
    // leaves 5 blocks per SM, again more than the tensor memory allows.
    ("grouped_gemm_nvfp4_w4a4_tcgen05_f32", 96),
    ("tcgen05_mxf4nvf4_probe", 64),
    // One 16-element block per thread: its values, amax, the scale and the codes.
    ("nvfp4_quantize_f32", 40),
    // Elementwise epilogues: an accumulator and a few pointers.
    ("relu2_f32", 32),
    ("add_f32", 32),
    ("round_bf16_f32", 32),
    ("split_bf16x3_f32", 32),
    ("bf16_part_f32", 32),
    // softplus' expf and log1pf are the largest part.
    ("softplus_dt_f32", 40),
    ("moe_unpermute_f32", 40),
    // The activation (erff is the largest) and a block reduction.
    ("head_activation_normalize_f32", 40),
    // 16 sigmoid scores and 16 choice scores per lane for 512 experts, plus the argmax state;
    // latency-bound, so 96 registers (5 blocks of 128 per SM) is plenty of warps.
    ("moe_route_f32", 96),
    // Ballot loops over the routing entries: a counter and a few pointers.
    ("moe_count_by_expert", 40),
    ("moe_align_offsets", 32),
    ("moe_scatter_by_expert", 40),
    // Memory-bound row reductions: a running sum and a few pointers per thread.
    ("rms_norm_f32", 32),
    ("gated_group_rms_norm_f32", 32),
    // Strided loops over shared-memory tiles; 256 threads, 4 blocks per SM at 64 registers.
    ("ssd_scan_f32", 64),
];

const TABLE_BEGIN: &str = "<!-- ptxas-table:begin (generated by kernels/verify/tests/compile.rs) -->";
const TABLE_END: &str = "<!-- ptxas-table:end -->";

fn gpu_doc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/gpu.md")
}

/// The compiler (loaded, for `marc_kernels::cuda::nvrtc`), or `None` (after saying why) when it
/// cannot be had outside CI.
/// Installed and loaded once per test process (the tests run in parallel threads).
fn tools_or_skip() -> Option<PathBuf> {
    static TOOLS: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let tools = TOOLS.get_or_init(|| {
        let tools = sources::cuda_tools()?;
        nvrtc::load_library(&tools.join("lib/libnvrtc.so.13")).map_err(|e| e.to_string())?;
        Ok(tools)
    });
    match tools {
        Ok(tools) => Some(tools.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the CUDA compile check needs NVRTC from PyPI and could not install it:\n{why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: the CUDA compile check needs NVRTC from PyPI (fails under CI=true):\n{why}");
            None
        }
    }
}

/// Compiles every source for every architecture, two at a time (CI has two cores).
fn compile_all(tools: &Path) -> Vec<Resources> {
    let include = sources::include_dir();
    let headers = tools.join("include");
    let jobs: Vec<(&embedded::Source, &str)> = embedded::KERNELS
        .iter()
        .flat_map(|src| ARCHS.map(|arch| (src, arch)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<(usize, Vec<Resources>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((src, arch)) = jobs.get(i) else { break done };
                        let compiled = nvrtc::compile(src.name, src.text, arch, &[&include, &headers])
                            .unwrap_or_else(|e| panic!("{e}"));
                        done.push((i, ptxas::parse(&compiled.log)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    let mut all: Vec<Resources> = results.into_iter().flat_map(|(_, r)| r).collect();
    all.sort_by(|a, b| (&a.kernel, &a.arch).cmp(&(&b.kernel, &b.arch)));
    all
}

fn render_table(all: &[Resources]) -> String {
    let mut t = String::from(
        "| kernel | arch | registers (budget) | spill stores / loads (bytes) | stack (bytes) | static shared (bytes) |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in all {
        let budget = REGISTER_BUDGETS
            .iter()
            .find(|(k, _)| *k == r.kernel)
            .map_or("none".to_owned(), |(_, b)| b.to_string());
        t.push_str(&format!(
            "| `{}` | {} | {} ({}) | {} / {} | {} | {} |\n",
            r.kernel, r.arch, r.registers, budget, r.spill_stores, r.spill_loads, r.stack_bytes, r.shared_bytes
        ));
    }
    t
}

#[test]
fn kernels_compile_for_hopper_and_blackwell_without_spills_within_budget() {
    let Some(tools) = tools_or_skip() else { return };
    let all = compile_all(&tools);

    let mut problems = Vec::new();
    for r in &all {
        if r.spill_stores > 0 || r.spill_loads > 0 {
            problems.push(format!(
                "{} on {} spills: {} bytes stored, {} loaded",
                r.kernel, r.arch, r.spill_stores, r.spill_loads
            ));
        }
        // A stack frame is a per-thread array the compiler could not keep in registers (an index
        // it cannot resolve, a loop it did not unroll): local-memory traffic as costly as a spill.
        if r.stack_bytes > 0 {
            problems.push(format!(
                "{} on {} has a {}-byte stack frame (local memory)",
                r.kernel, r.arch, r.stack_bytes
            ));
        }
        match REGISTER_BUDGETS.iter().find(|(k, _)| *k == r.kernel) {
            None => problems.push(format!("{} has no register budget in REGISTER_BUDGETS", r.kernel)),
            Some((_, budget)) if r.registers > *budget => problems.push(format!(
                "{} on {} uses {} registers, over its budget of {budget}",
                r.kernel, r.arch, r.registers
            )),
            Some(_) => {}
        }
    }
    for (kernel, _) in REGISTER_BUDGETS {
        if !all.iter().any(|r| r.kernel == *kernel) {
            problems.push(format!("REGISTER_BUDGETS names {kernel}, which no source defines"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let table = render_table(&all);
    let doc_path = gpu_doc();
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", doc_path.display()));
    let (Some(begin), Some(end)) = (doc.find(TABLE_BEGIN), doc.find(TABLE_END)) else {
        panic!("{} lacks the markers {TABLE_BEGIN} ... {TABLE_END}", doc_path.display());
    };
    let current = &doc[begin + TABLE_BEGIN.len()..end];
    let wanted = format!("\n{table}");
    if !tables_agree(current, &wanted) {
        if std::env::var_os("MARC_UPDATE_GPU_DOCS").is_some() {
            let updated = format!("{}{wanted}{}", &doc[..begin + TABLE_BEGIN.len()], &doc[end..]);
            std::fs::write(&doc_path, updated).expect("docs/gpu.md is writable");
        } else {
            panic!(
                "docs/gpu.md's resource table is out of date; regenerate it with\n\
                 MARC_UPDATE_GPU_DOCS=1 cargo test --release -p marc-kernels-verify --test compile\n\
                 The compiler reports:\n{table}"
            );
        }
    }
}

/// Whether the committed table says what the compiler reports. Every cell must match, except that
/// a kernel's register count may differ by two: ptxas was seen to allocate 55 and
/// 56 registers to `gemm_fp8_f32` on sm_90a in two compiles of the same source (the budgets and the
/// spill checks above are exact; only the documentation tolerates it).
fn tables_agree(committed: &str, reported: &str) -> bool {
    let rows = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with('|'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (committed, reported) = (rows(committed), rows(reported));
    committed.len() == reported.len() && committed.iter().zip(&reported).all(|(a, b)| rows_agree(a, b))
}

/// One row of [`tables_agree`]: equal cells, but for the register count (column 3, "N (budget)").
fn rows_agree(committed: &str, reported: &str) -> bool {
    const REGISTER_JITTER: i64 = 2;
    let (a, b): (Vec<&str>, Vec<&str>) = (committed.split('|').collect(), reported.split('|').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .enumerate()
            .all(|(i, (x, y))| x == y || (i == 3 && registers_agree(x, y, REGISTER_JITTER)))
}

/// Two "N (budget)" cells with the same budget and counts at most `jitter` apart.
fn registers_agree(x: &str, y: &str, jitter: i64) -> bool {
    let parse = |cell: &str| {
        let (count, budget) = cell.trim().split_once(' ')?;
        Some((count.parse::<i64>().ok()?, budget.to_owned()))
    };
    matches!((parse(x), parse(y)), (Some((p, bp)), Some((q, bq))) if bp == bq && (p - q).abs() <= jitter)
}

/// The names of the files under `dir` (relative to kernels/cuda) with one of `extensions`, sorted.
fn files_in(dir: &Path, extensions: &[&str]) -> Vec<String> {
    let cuda = sources::cuda_dir();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("kernels/cuda is readable")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| extensions.iter().any(|x| e == *x)))
        .map(|p| p.strip_prefix(&cuda).unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_binary_embeds_every_kernel_file_and_header() {
    let embedded_names = |set: &[embedded::Source]| set.iter().map(|s| s.name.to_owned()).collect::<Vec<_>>();
    assert_eq!(
        embedded_names(embedded::KERNELS),
        files_in(&sources::cuda_dir(), &["cu"])
    );
    assert_eq!(
        embedded_names(embedded::HEADERS),
        files_in(&sources::include_dir(), &["cuh", "h"])
    );
}

#[test]
fn ptx_cache_compiles_once_then_reads_from_disk() {
    let Some(tools) = tools_or_skip() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ptx-cache-test");
    let _ = std::fs::remove_dir_all(&dir);
    let first = ptx_cache::kernels_ptx(&dir, "compute_90a", &tools.join("include")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.len(), embedded::KERNELS.len());
    assert!(first.iter().all(|k| !k.cached), "a fresh cache compiled nothing");
    assert!(
        first.iter().any(|k| k.ptx.contains(".entry rms_norm_f32")),
        "the PTX lacks rms_norm_f32"
    );
    assert!(
        first.iter().any(|k| k.ptx.contains("mma.sync.aligned.m16n8k16")),
        "the GEMM's PTX lacks mma.sync"
    );
    let second = ptx_cache::kernels_ptx(&dir, "compute_90a", &tools.join("include")).unwrap_or_else(|e| panic!("{e}"));
    assert!(second.iter().all(|k| k.cached), "the second call recompiled");
    assert!(first.iter().zip(&second).all(|(a, b)| a.ptx == b.ptx));
}
