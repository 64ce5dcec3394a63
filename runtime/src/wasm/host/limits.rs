//! The store's memory limiter: caps the total linear memory of all instances and
//! remembers that the cap was hit, so the guest's resulting abort is reported as the
//! memory limit.

use wasmtime::ResourceLimiter;

/// Caps the total linear memory of all instances in the store and remembers that the
/// cap was hit, so a guest's resulting abort is reported as the memory limit.
pub(crate) struct MemLimiter {
    pub limit: usize,
    pub used: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.used.saturating_add(grow) > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        256
    }
    fn memories(&self) -> usize {
        64
    }
}
