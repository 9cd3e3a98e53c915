//! Compiles the CUDA kernels as C++ through the SIMT emulation header (kernels/cuda/include/simt_cpu.h).

fn main() {
    let cuda = std::path::Path::new("../cuda");
    println!("cargo:rerun-if-changed=src/emulated.cpp");
    println!("cargo:rerun-if-changed=src/simt_selftest.cu");
    println!("cargo:rerun-if-changed=src/quant_probe.cu");
    println!("cargo:rerun-if-changed={}", cuda.display());
    for entry in std::fs::read_dir(cuda).expect("kernels/cuda exists").flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    for entry in std::fs::read_dir(cuda.join("include"))
        .expect("kernels/cuda/include exists")
        .flatten()
    {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("src/emulated.cpp")
        .include(cuda.join("include"))
        .opt_level(2)
        .flag("-pthread")
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("marc_cuda_emulated");
    println!("cargo:rustc-link-lib=pthread");
}
