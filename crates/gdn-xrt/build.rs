//! Compiles the HLS kernel (kernels/hls/gdn_kernel.cpp) into the crate as plain C++, once per
//! design point P, through the C-simulation harness (kernels/csim/gdn_csim.cpp). Every exported
//! symbol carries the suffix `_pP`, so all four design points live side by side in one binary.
//! Needs only a C++ compiler: no vendor headers, no XRT.

const DESIGN_POINTS: [u32; 4] = [2, 4, 8, 16];

fn main() {
    for file in [
        "kernels/hls/gdn_kernel.cpp",
        "kernels/hls/gdn_kernel.h",
        "kernels/csim/gdn_csim.cpp",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for p in DESIGN_POINTS {
        let dir = out_dir.join(format!("p{p}"));
        std::fs::create_dir_all(&dir).expect("create object directory");
        cc::Build::new()
            .cpp(true)
            .file("kernels/csim/gdn_csim.cpp")
            .out_dir(&dir)
            .define("GDN_P", p.to_string().as_str())
            .std("c++14")
            // The simulation is on the test path of every backend check: always optimise it.
            .opt_level(2)
            // No fused multiply-add contraction: the simulation rounds the same on every host.
            .flag_if_supported("-ffp-contract=off")
            // HLS pragmas and loop labels mean nothing to a host compiler.
            .flag_if_supported("-Wno-unknown-pragmas")
            .flag_if_supported("-Wno-unused-label")
            .warnings(true)
            .compile(&format!("gdn_csim_p{p}"));
    }
}
