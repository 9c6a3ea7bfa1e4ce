//! The service manager's side of the daemon: the notices it sends
//! (`sd_notify`: READY, RELOADING, STOPPING, WATCHDOG, STATUS), and sockets
//! passed by socket activation (`LISTEN_FDS`). Both are plain
//! environment-plus-datagram protocols, so nothing here links libsystemd;
//! without systemd every call is a no-op.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::time::Duration;

use anyhow::{Context, bail};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Where to send notifications, from `$NOTIFY_SOCKET`.
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`; a path or, with a leading `@`, an abstract
    /// name. No variable means no service manager: notifications are
    /// dropped.
    pub(crate) fn from_env() -> anyhow::Result<Notifier> {
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier { socket: None });
        };
        let raw = raw
            .into_string()
            .map_err(|v| anyhow::anyhow!("NOTIFY_SOCKET={v:?} is not valid UTF-8"))?;
        let addr = if let Some(name) = raw.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        } else {
            SocketAddr::from_pathname(&raw)
        }
        .with_context(|| format!("NOTIFY_SOCKET={raw:?} is not a usable socket address"))?;
        let socket = UnixDatagram::unbound().context("could not create the notify socket")?;
        Ok(Notifier {
            socket: Some((socket, addr)),
        })
    }

    /// The database is open and the socket listens (at start, and again
    /// after a reload); `status` is a `STATUS=` line.
    pub(crate) fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\n{status}"));
    }

    /// A reload has begun; `ready` ends it.
    pub(crate) fn reloading(&self) {
        self.notify("RELOADING=1");
    }

    /// The drain has begun (a signal or `ctl shutdown`).
    pub(crate) fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining: answering queued requests");
    }

    /// The writer answered a ping within half the watchdog period.
    pub(crate) fn watchdog(&self, status: &str) {
        self.notify(&format!("WATCHDOG=1\n{status}"));
    }

    /// A `STATUS=` line alone.
    pub(crate) fn status(&self, status: &str) {
        self.notify(status);
    }

    /// Sends one notification. A failure is logged, not fatal: the daemon
    /// serves clients either way.
    fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!(error = %e, state, "could not notify the service manager");
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.socket.is_some()
    }
}

/// The watchdog period asked for by `$WATCHDOG_USEC` (when `$WATCHDOG_PID`
/// is unset or names this process).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The listening socket passed by socket activation, if any. Takes it out
/// of the environment so children do not inherit the claim.
pub(crate) fn listener_from_env() -> anyhow::Result<Option<UnixListener>> {
    let Some(pid) = std::env::var_os("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        // Meant for another process (e.g. our parent); not ours.
        return Ok(None);
    }
    let fds: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .context("LISTEN_PID is set but LISTEN_FDS is missing or not a number")?;
    // SAFETY: removing variables before any other thread starts (serve
    // calls this first thing, on the main thread).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if fds != 1 {
        bail!(
            "socket activation passed {fds} sockets; nexusd serves exactly one. Give the \
             .socket unit a single ListenStream="
        );
    }
    let fd = LISTEN_FDS_START;
    check_is_listening_unix_socket(fd)?;
    // SAFETY: systemd passed us this descriptor and nothing else owns it;
    // it was just checked to be a listening AF_UNIX stream socket.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // CLOEXEC so it does not leak into children.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    Ok(Some(listener))
}

fn check_is_listening_unix_socket(fd: RawFd) -> anyhow::Result<()> {
    let get = |opt: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with a valid pointer and length to a local.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let domain = get(libc::SO_DOMAIN).context("descriptor 3 from LISTEN_FDS is not a socket")?;
    let kind = get(libc::SO_TYPE)?;
    let listening = get(libc::SO_ACCEPTCONN)?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        bail!(
            "descriptor 3 from LISTEN_FDS is not a listening Unix stream socket; the .socket \
             unit needs ListenStream=/path/to.sock and Accept=no"
        );
    }
    Ok(())
}
