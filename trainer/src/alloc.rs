//! Allocator tuning for the compute commands.
//!
//! burn-flex allocates a fresh buffer for every tensor op. With glibc's defaults, buffers over
//! 128 KiB come from `mmap`/`brk` and go back to the kernel when freed, so every training step
//! page-faults its activations in again: measured here, a third of a batch-4096 NeuMF step was
//! page faults and the step ran 1.6× faster with the heap kept. This keeps freed memory in the
//! process (up to the trim threshold) so the next step reuses it.

/// Keeps freed heap memory for reuse (glibc on Linux; elsewhere nothing to do).
pub fn keep_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only adjusts glibc malloc parameters; called before the work starts.
        unsafe {
            // Below 32 MiB (glibc's largest allowed) allocate from the heap, not fresh mappings.
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            // Return freed heap to the kernel only past 512 MiB of slack; grow it 64 MiB at a time.
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}
