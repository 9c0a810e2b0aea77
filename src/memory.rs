//! Memory goes back to the system: glibc's allocator keeps freed memory in its arenas, so
//! a burst of large request bodies (or a long scan's page buffers) would otherwise stay
//! in the process's footprint for good. [`trim_memory`] returns the free pages of every
//! arena every [`TRIM_EVERY`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often processes give freed memory back to the system ([`trim_memory`]).
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Gives freed memory back to the system every `every`, until `stop`.
pub async fn trim_memory(every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only walks glibc's own arenas.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
