//! Memory shared by the master and every worker it forks: an anonymous shared mapping made before the
//! first fork, inherited by each child at the same address, never unmapped.

/// Maps a zero-filled `T` shared with every process forked from this one after the call.
///
/// # Safety
/// All-zero bytes must be a valid `T` (integers and atomics only), and every process must write it
/// only through atomics.
pub unsafe fn map_zeroed<T>() -> std::io::Result<&'static T> {
    let len = std::mem::size_of::<T>();
    // SAFETY: an anonymous shared mapping with no address hint has no preconditions; the result is
    // checked for MAP_FAILED before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for any `T` this crate maps),
    // zero-filled by the kernel (a valid `T`, by the caller's promise) and never unmapped, so the
    // reference is valid for 'static.
    Ok(unsafe { &*ptr.cast::<T>() })
}
