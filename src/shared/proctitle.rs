//! Process titles: what `ps` shows for the master (`NAME: master (gen G, N workers)`) and each worker
//! (`NAME: worker SLOT`, with ` [scheduler]` while it holds the scheduler lease).
//!
//! Linux has no call for this: `ps` shows the memory holding the process's arguments
//! (`/proc/PID/cmdline`), so the title is written there. That memory is the arguments' strings,
//! followed directly by the environment's; [`init`] first moves every argument and environment
//! string to the heap (pointing `argv[i]` and `environ[i]` at the copies, so `std::env::args` and
//! `std::env::var` keep working), then the whole span is free for titles. When the kernel sees that
//! the byte ending the arguments is no longer a NUL, it reads the title up to its first NUL instead,
//! which lets titles run into the former environment's space.
//!
//! No crate does this on Linux (`proctitle` only renames the thread, 15 bytes). If the memory layout
//! is not the one expected (checked before anything is written), titles stay off and nothing changes.

use std::ffi::{CStr, CString, c_char};
use std::sync::Mutex;

/// The writable span: start address and length. `None` until [`init`] succeeded.
static SPAN: Mutex<Option<(usize, usize)>> = Mutex::new(None);

unsafe extern "C" {
    /// The C library's environment array (glibc and musl both define it).
    static mut environ: *mut *mut c_char;
}

/// The argument and environment areas of this process, from `/proc/self/stat` (fields 48 to 51).
fn areas() -> Option<[usize; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces, start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    Some([get(48)?, get(49)?, get(50)?, get(51)?])
}

/// Prepares this process for titles: call once, early, while the process has one thread and before
/// anything keeps pointers to argument or environment strings. Returns whether titles are on.
pub fn init() -> bool {
    let Some([arg_start, arg_end, env_start, env_end]) = areas() else {
        return false;
    };
    let argc = std::env::args_os().count();
    program_name();
    if argc == 0 || arg_end <= arg_start {
        return false;
    }
    // SAFETY: the process has one thread (documented requirement), so nothing reads or changes the
    // environment meanwhile. `environ` is read as a pointer; the checks below confirm it still points
    // to the array the kernel built on the stack, right after `argv`'s terminating NULL, before any
    // element is dereferenced beyond what the layout guarantees.
    unsafe {
        let envp = environ;
        if envp.is_null() {
            return false;
        }
        // The kernel lays out argv[0..argc], NULL, envp[...], NULL contiguously.
        let argv = envp.sub(argc + 1);
        if !(*argv.add(argc)).is_null() || *argv as usize != arg_start {
            return false;
        }
        // Move every argument string to the heap.
        for i in 0..argc {
            let p = argv.add(i);
            *p = CString::from(CStr::from_ptr(*p)).into_raw();
        }
        // And every environment string inside the environment area.
        let mut i = 0;
        loop {
            let p = envp.add(i);
            if (*p).is_null() {
                break;
            }
            let addr = *p as usize;
            if (env_start..env_end).contains(&addr) {
                *p = CString::from(CStr::from_ptr(*p)).into_raw();
            }
            i += 1;
        }
    }
    let end = if env_start == arg_end {
        env_end
    } else {
        arg_end
    };
    *SPAN.lock().unwrap_or_else(|e| e.into_inner()) = Some((arg_start, end - arg_start));
    true
}

/// Sets the title `ps` shows (cut to the space available). Does nothing if [`init`] did not succeed.
pub fn set(title: &str) {
    let span = SPAN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((start, len)) = *span else {
        return;
    };
    let bytes = title.as_bytes();
    let n = bytes.len().min(len.saturating_sub(1));
    // SAFETY: [start, start + len) is the argument and environment strings' memory, which [`init`]
    // confirmed belongs to this process and moved every user of to the heap; it stays mapped (it is
    // on the main thread's stack, above `main`) and writable for the process's life. The lock keeps
    // writers apart.
    unsafe {
        let dst = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
        std::ptr::write_bytes(dst.add(n), 0, len - n);
    }
}

/// The name titles start with: `--name` (gunicorn's proc_name), else the executable's file name.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the name titles start with (`--name`); only before the first title is set.
pub fn set_name(name: &str) {
    let _ = NAME.set(name.to_string());
}

/// The program name titles start with.
fn program_name() -> &'static str {
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .as_deref()
            .and_then(|a| std::path::Path::new(a).file_name())
            .map_or_else(
                || "hyperfork".to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
    })
}

/// What the master's title says of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterState {
    /// Serving with this many workers.
    Serving(usize),
    /// Still serving, draining in this many seconds (`--shutdown-delay`).
    StoppingIn(u64),
    /// Draining.
    Stopping,
}

/// The master's title: `NAME: master (gen G, N workers)`, `NAME: master (gen G, stopping in Ns)`,
/// or `NAME: master (gen G, stopping)`.
pub fn master(generation: u64, state: MasterState) -> String {
    let name = program_name();
    match state {
        MasterState::Serving(workers) => {
            format!("{name}: master (gen {generation}, {workers} workers)")
        }
        MasterState::StoppingIn(secs) => {
            format!("{name}: master (gen {generation}, stopping in {secs}s)")
        }
        MasterState::Stopping => format!("{name}: master (gen {generation}, stopping)"),
    }
}

/// A worker's title: `NAME: worker SLOT`, plus ` [scheduler]` while it holds the scheduler lease.
pub fn worker(slot: usize, scheduler: bool) -> String {
    let name = program_name();
    if scheduler {
        format!("{name}: worker {slot} [scheduler]")
    } else {
        format!("{name}: worker {slot}")
    }
}
