//! lb's userspace: the daemon `lbd` and the CLI `lbctl` share this library.
//!
//! - [`config`]: TOML -> validated, typed values.
//! - [`maglev`]: pure ring generation.
//! - [`dataplane`]: loading, pinning, attaching; typed maps behind [`dataplane::Maps`].
//! - [`balancer`]: VIPs, backends, ids and ring swaps, on top of `Maps`.
//! - [`host`]: sysctls lbd needs while running.
//! - [`state`]: lbd's own state directory: the one-lbd-per-data-plane lock.
//! - [`sync`]: flow-state sync with the peer of a pair.
//! - [`api`]: the control-socket protocol; [`daemon`]: the process wired together.
pub mod api;
pub mod balancer;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod host;
pub mod maglev;
pub mod metrics;
pub mod state;
pub mod sync;
pub mod text;
pub mod vrrp;

/// The XDP object built into this binary by `cargo xtask build`, if any.
pub fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(lb_embedded_ebpf)]
    {
        Some(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/lb-ebpf.o"
        )))
    }
    #[cfg(not(lb_embedded_ebpf))]
    {
        None
    }
}
