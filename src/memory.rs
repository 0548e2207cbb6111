//! The process's allocator is mimalloc (`main.rs`). It keeps freed pages for reuse and purges
//! them (hands them back to the system) only when an allocating thread gets to it. After a
//! large one-off free, such as a model's plaintext once its sessions are built, the threads
//! involved may not allocate for hours, and the pages would stay resident.

/// Purges the pages freed so far in mimalloc's arenas, and collects this thread's heap, now.
pub fn return_freed() {
    // SAFETY: `mi_collect` takes no pointers; it only walks mimalloc's own heaps and arenas,
    // and is safe to call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
