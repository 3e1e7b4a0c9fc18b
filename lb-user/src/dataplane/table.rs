//! Read-only views of the flow and NAT tables: both are memory-mappable
//! arrays, so counting their entries is a walk through shared memory rather
//! than a system call per entry.

use std::{io, marker::PhantomData, os::fd::AsFd as _, os::fd::AsRawFd as _};

use anyhow::{bail, Result};
use aya::maps::MapData;
use lb_ebpf::{Flow, NatEntry};

/// An entry type of a memory-mapped table, and when its slot is in use.
pub trait Slot: Copy {
    fn occupied(&self) -> bool;
}

impl Slot for Flow {
    fn occupied(&self) -> bool {
        self.key.dst_addr_be != 0
    }
}

impl Slot for NatEntry {
    fn occupied(&self) -> bool {
        self.backend_addr_be != 0
    }
}

/// A shared, read-only mapping of a `BPF_F_MMAPABLE` array of `T`.
pub struct TableView<T: Slot> {
    ptr: *const T,
    slots: usize,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: the mapping is owned by this value and only read (with volatile
// loads: the XDP program writes it concurrently).
unsafe impl<T: Slot> Send for TableView<T> {}

impl<T: Slot> TableView<T> {
    /// Maps `data`, an array of `T` (checked: 8-byte-aligned values, so the
    /// kernel's stride is the size of `T`).
    pub fn map(data: &MapData, name: &str) -> Result<TableView<T>> {
        let info = data.info()?;
        let size = std::mem::size_of::<T>();
        if info.value_size() as usize != size || !size.is_multiple_of(8) {
            bail!(
                "{name} has {}-byte values, this lbd expects {size}",
                info.value_size()
            );
        }
        let slots = info.max_entries() as usize;
        let (ptr, len) = map_shared(data, name, slots * size, false)?;
        Ok(TableView {
            ptr: ptr.cast_const().cast(),
            slots,
            len,
            _t: PhantomData,
        })
    }

    /// Slots whose entry satisfies `pred`.
    pub fn count(&self, pred: impl Fn(&T) -> bool) -> usize {
        (0..self.slots)
            // SAFETY: `i` is within the mapping; volatile, as the kernel
            // writes concurrently (a torn entry is at worst miscounted).
            .filter(|&i| pred(&unsafe { self.ptr.add(i).read_volatile() }))
            .count()
    }
}

impl<T: Slot> Drop for TableView<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Maps `bytes` of a `BPF_F_MMAPABLE` map into this process, shared with
/// the kernel (read-only unless `writable`). Returns the address and the
/// length mapped (whole pages), for `munmap`.
pub fn map_shared(
    data: &MapData,
    name: &str,
    bytes: usize,
    writable: bool,
) -> Result<(*mut libc::c_void, usize)> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let len = bytes.div_ceil(page) * page;
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a shared mapping of the map's fd, no larger than the kernel
    // allocated for it; checked for failure below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        bail!("mapping {name} into memory: {}", io::Error::last_os_error());
    }
    Ok((ptr, len))
}
