//! Per-thread heap accounting, so a sandbox can bound what its evaluation allocates.
//!
//! Rhai's own limits are per value (one string, one array); a script holding many
//! values within those limits can still take gigabytes. kiln's global allocator counts,
//! per thread, the bytes allocated minus the bytes freed; the script engine compares
//! that count with what it was when an evaluation began (`script::engine::begin`).
//! Counting is one thread-local add per allocation and never allocates itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting net bytes per thread.
pub struct CountingAlloc;

thread_local! {
    // `const` and without `Drop`: reading it never allocates or registers a destructor,
    // which an allocator must not do.
    static NET: Cell<isize> = const { Cell::new(0) };
}

#[inline]
fn add(bytes: usize, grow: bool) {
    let n = isize::try_from(bytes).unwrap_or(isize::MAX);
    let _ = NET.try_with(|c| {
        c.set(if grow {
            c.get().wrapping_add(n)
        } else {
            c.get().wrapping_sub(n)
        })
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counter is a side effect.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size(), true);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size(), true);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; the caller guarantees `ptr` came from this allocator.
        unsafe { System.dealloc(ptr, layout) };
        add(layout.size(), false);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                add(new_size - layout.size(), true);
            } else {
                add(layout.size() - new_size, false);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Bytes this thread has allocated and not freed (frees of memory another thread
/// allocated count against this one, so this may be negative).
pub fn thread_net_bytes() -> isize {
    NET.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_this_threads_allocations() {
        let before = super::thread_net_bytes();
        let v = vec![0u8; 10 << 20];
        let during = super::thread_net_bytes();
        assert!(during - before >= 10 << 20, "{before} -> {during}");
        drop(v);
        assert!(super::thread_net_bytes() - before < 1 << 20);
    }
}
