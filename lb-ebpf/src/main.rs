//! lb's XDP program. Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`;
//! on the host this target is an empty stub so workspace builds succeed.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("lb-ebpf is the XDP object; build it with `cargo xtask build-ebpf`");
}
