//! Embeds the XDP object in lbd when `LB_EBPF_OBJECT` names a built one (as
//! `cargo xtask build` does). Without it lbd is still built, and then needs
//! `--bpf-object` (or `LB_EBPF_OBJECT` at run time).
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lb_embedded_ebpf)");
    println!("cargo::rerun-if-env-changed=LB_EBPF_OBJECT");
    let Some(obj) = env::var_os("LB_EBPF_OBJECT").map(PathBuf::from) else {
        return;
    };
    println!("cargo::rerun-if-changed={}", obj.display());
    if obj.is_file() {
        let out =
            PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lb-ebpf.o");
        fs::copy(&obj, &out).expect("copying the XDP object");
        println!("cargo::rustc-cfg=lb_embedded_ebpf");
    }
}
