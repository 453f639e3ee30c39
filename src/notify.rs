//! The systemd notification protocol (sd_notify(3)), by hand: each state
//! change is one datagram of `KEY=VALUE` lines to the AF_UNIX socket named
//! by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`), and the watchdog interval comes from `$WATCHDOG_USEC` (for this
//! process only if `$WATCHDOG_PID` is unset or names it). Without
//! `$NOTIFY_SOCKET` every call is a no-op, so the daemon runs the same
//! under systemd, in a container or in a test. What is sent when is the
//! daemon's and the watchdog's business, not this module's.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `Notifier::disabled()` when not under systemd.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; disabled when it is unset or empty. A value
    /// that names no usable address is an error, so a misconfigured unit
    /// fails at start instead of timing out waiting for READY=1.
    pub fn from_env() -> io::Result<Self> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) if !name.is_empty() => Self::to_socket(&name),
            _ => Ok(Self::disabled()),
        }
    }

    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// Notifications to the socket `name`: a path, or `@name` for an
    /// abstract socket address (a leading NUL byte on the wire).
    pub fn to_socket(name: &OsStr) -> io::Result<Self> {
        let address = match name.as_bytes() {
            [b'@', abstract_name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name)?
            }
            [b'/', ..] => SocketAddr::from_pathname(name)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={name:?} is neither an absolute path nor an @abstract name"),
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A reader that stopped reading (a wedged systemd, a test's fake)
        // must not block the watchdog thread or the stop: a full queue
        // fails the send instead, and the caller logs it.
        socket.set_nonblocking(true)?;
        Ok(Self {
            target: Some((socket, address)),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) as one
    /// datagram, without blocking; an error is returned for the caller to
    /// log, never retried (the next ping or status follows anyway).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, address)) => socket.send_to_addr(state.as_bytes(), address).map(drop),
            None => Ok(()),
        }
    }
}

/// `STATUS=` text must be one line: systemd shows it in `systemctl status`,
/// and a newline would start a new assignment.
pub fn status_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The watchdog interval systemd expects pings within, if it expects any
/// from this process: `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` names another
/// process (the variables were inherited from a parent).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_each_state_as_one_datagram() {
        let dir = std::env::temp_dir().join(format!("ringpush-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to_socket(path.as_os_str()).unwrap();
        assert!(notifier.is_enabled());
        notifier.notify("READY=1\nSTATUS=up").unwrap();
        notifier.notify("WATCHDOG=1").unwrap();
        assert_eq!(receive(&systemd), "READY=1\nSTATUS=up");
        assert_eq!(receive(&systemd), "WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_abstract_name_is_written_with_a_leading_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ringpush-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier::to_socket(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.notify("STOPPING=1").unwrap();
        assert_eq!(receive(&systemd), "STOPPING=1");
    }

    #[test]
    fn without_a_socket_notifying_does_nothing() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.notify("READY=1").unwrap();
    }

    #[test]
    fn a_relative_or_empty_name_is_refused() {
        assert!(Notifier::to_socket(OsStr::new("relative/path")).is_err());
        assert!(Notifier::to_socket(OsStr::new("")).is_err());
    }

    #[test]
    fn the_watchdog_interval_is_ours_only_for_our_pid() {
        assert_eq!(parse_watchdog(None, None, 7), None);
        assert_eq!(
            parse_watchdog(Some("200000"), None, 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), None, "a parent's");
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(Some("1000"), Some("x"), 7), None);
    }

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(status_line("a\nb\rc"), "a b c");
    }
}
