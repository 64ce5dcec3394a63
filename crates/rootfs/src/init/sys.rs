//! The few system calls rustix does not wrap (or wraps only as `unsafe`), each behind a
//! safe function with the reason it is sound. Functions marked "async-signal-safe" are
//! called between fork and exec in a multi-threaded process: they only issue raw system
//! calls on memory prepared before the fork, and never allocate or lock.

use std::io;
use std::time::Duration;

fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `fork()`: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Only called by the outer init, which checked that it has a single thread, so the child
/// may run arbitrary code (no lock can be held by a thread that does not exist there).
pub(super) fn fork_single_threaded() -> io::Result<Option<i32>> {
    // SAFETY: the caller is single-threaded (checked in `outer::run`), so the child's
    // address space is consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        p => Ok(Some(p)),
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Sets this thread's signal mask to exactly `blocked` (threads started later inherit it).
pub(super) fn set_signal_mask(blocked: &[i32]) -> io::Result<()> {
    let set = sigset(blocked);
    // SAFETY: valid pointers to a sigset we own; the old mask is not requested.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits for one of `signals` (which must be blocked); `None` on timeout.
pub(super) fn wait_signal(signals: &[i32], timeout: Option<Duration>) -> io::Result<Option<i32>> {
    let set = sigset(signals);
    loop {
        // SAFETY: valid pointers; siginfo is not requested.
        let r = unsafe {
            match timeout {
                None => libc::sigwaitinfo(&set, std::ptr::null_mut()),
                Some(t) => {
                    let ts = libc::timespec {
                        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                        tv_nsec: libc::c_long::from(t.subsec_nanos().cast_signed()),
                    };
                    libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
                }
            }
        };
        if r >= 0 {
            return Ok(Some(r));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

pub(super) fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain system call.
    check(unsafe { libc::kill(pid, sig) } as libc::c_long)
}

/// Highest capability number this kernel knows.
pub(super) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Limits what processes started from here on can ever have: only `keep` stays in the
/// bounding set, and the inheritable and ambient sets are emptied; this thread's own
/// effective and permitted capabilities are unchanged. A root program executed afterwards
/// gets exactly `keep` (its permitted set becomes the bounding set). The bounding set is
/// per thread and inherited, so pid 1 calls this before it starts any thread.
pub(super) fn limit_descendants_caps(keep: u64, last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap.min(63) {
        if keep & (1 << cap) == 0 {
            // SAFETY: plain prctl; EINVAL means the kernel does not know this cap.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: plain prctl.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } as libc::c_long)?;
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs as the v3 ABI requires, on our stack.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) })?;
    for d in data.iter_mut() {
        d.inheritable = 0;
    }
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) })
}

/// Switches to `uid`/`gid` with exactly `groups` as supplementary groups.
/// Async-signal-safe (raw system calls: they change only the calling thread, which is the
/// only thread of a freshly forked child).
pub(super) fn set_ids(uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the slice outlives the call.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain system calls.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
}

/// Brings up `lo` in the current (new, empty) network namespace.
pub(super) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() returns a new fd we own (wrapped right away).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; the ioctls read/write only that struct.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = (*s).cast_signed();
        }
        check(libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut ifr) as libc::c_long)?;
        ifr.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        check(libc::ioctl(raw, libc::SIOCSIFFLAGS, &ifr) as libc::c_long)?;
    }
    Ok(())
}

/// Makes this process non-dumpable: processes in the container cannot ptrace it or open
/// its `/proc/1/mem`.
pub(super) fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: plain prctl.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } as libc::c_long)
}

pub(super) fn umask(mask: u32) {
    // SAFETY: plain system call.
    unsafe { libc::umask(mask as libc::mode_t) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_wait_times_out() {
        // A signal nobody sends: the wait must come back empty, not hang or fail.
        std::thread::spawn(|| {
            set_signal_mask(&[libc::SIGUSR2]).unwrap();
            let got = wait_signal(&[libc::SIGUSR2], Some(Duration::from_millis(10))).unwrap();
            assert_eq!(got, None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn last_cap_is_plausible() {
        assert!((30..64).contains(&last_cap()));
    }
}
