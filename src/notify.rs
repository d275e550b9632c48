//! systemd's readiness protocol (`sd_notify`): tell the service manager at `$NOTIFY_SOCKET` that the daemon is ready or stopping.
//!
//! The unit runs with `Type=notify`, so systemd holds back `systemctl start` (and every unit ordered after
//! posgate) until `READY=1` arrives; the daemon sends it only once the journal is open and every listener
//! is bound, so a POS app started after posgate never meets a refused socket. The protocol is one Unix
//! datagram of `KEY=value` lines; std's `UnixDatagram` speaks it, no crate and no `unsafe` needed. An
//! address starting with `@` is an abstract socket name (Linux only; std has it safely since 1.70).
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

/// The environment variable systemd sets for `Type=notify` services.
pub const ENV: &str = "NOTIFY_SOCKET";

/// The longest address a Unix socket can take (`sun_path` is 108 bytes on Linux); anything longer is refused
/// before a system call.
const MAX_ADDRESS: usize = 108;

/// The service manager's view of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Journal open, listeners bound: requests are answered from now on.
    Ready,
    /// Shutdown has begun: finishing in-flight requests, refusing new ones.
    Stopping,
}

impl State {
    fn line(self) -> &'static str {
        match self {
            State::Ready => "READY=1",
            State::Stopping => "STOPPING=1",
        }
    }
}

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error("{ENV}={0:?}: not an absolute path or an @abstract socket name")]
    Address(String),
    #[error("{ENV}={0:?}: abstract socket names exist only on Linux")]
    NoAbstract(String),
    #[error("{ENV}={addr:?}: {why}")]
    Send { addr: String, why: std::io::Error },
    #[error("{ENV}={addr:?}: sent {sent} of {len} bytes")]
    Short { addr: String, sent: usize, len: usize },
}

/// Tell the service manager `state` (with a human `status` line for `systemctl status`). `Ok(false)` when
/// not started by one (no `$NOTIFY_SOCKET`): then there is no one to tell.
pub fn notify(state: State, status: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(ENV) {
        Some(addr) if !addr.is_empty() => send(&addr, &message(state, status)).map(|()| true),
        _ => Ok(false),
    }
}

/// The datagram: the state line, then `STATUS=` with newlines taken out (each line is one assignment).
pub fn message(state: State, status: &str) -> String {
    let status: String = status.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).take(200).collect();
    format!("{}\nSTATUS={status}\n", state.line())
}

/// Send one datagram to `addr`, a `$NOTIFY_SOCKET` value: an absolute path, or `@name` for an abstract socket.
pub fn send(addr: &OsStr, message: &str) -> Result<(), NotifyError> {
    let shown = || addr.to_string_lossy().chars().take(MAX_ADDRESS + 8).collect::<String>();
    let bytes = addr.as_bytes();
    if bytes.len() > MAX_ADDRESS || bytes.len() < 2 {
        return Err(NotifyError::Address(shown()));
    }
    let err = |why| NotifyError::Send { addr: shown(), why };
    let sock = UnixDatagram::unbound().map_err(err)?;
    // The manager reads its socket at once; a full buffer means it is stuck, and then waiting helps no one.
    sock.set_write_timeout(Some(Duration::from_secs(2))).map_err(err)?;
    let sent = match bytes.first() {
        Some(b'/') => sock.send_to(message.as_bytes(), Path::new(addr)).map_err(err)?,
        Some(b'@') => send_abstract(&sock, &bytes[1..], message.as_bytes()).map_err(|e| e.unwrap_or_else(|| NotifyError::NoAbstract(shown())))?,
        _ => return Err(NotifyError::Address(shown())),
    };
    if sent != message.len() {
        return Err(NotifyError::Short { addr: shown(), sent, len: message.len() });
    }
    Ok(())
}

/// `Err(None)`: this platform has no abstract names.
#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &[u8], message: &[u8]) -> Result<usize, Option<NotifyError>> {
    use std::os::linux::net::SocketAddrExt;
    let shown = || format!("@{}", String::from_utf8_lossy(name));
    let to = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(|why| Some(NotifyError::Send { addr: shown(), why }))?;
    sock.send_to_addr(message, &to).map_err(|why| Some(NotifyError::Send { addr: shown(), why }))
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_sock: &UnixDatagram, _name: &[u8], _message: &[u8]) -> Result<usize, Option<NotifyError>> {
    Err(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("posgate-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_and_stopping_reach_a_real_datagram_socket_at_a_path() {
        let dir = scratch("path");
        let path = dir.join("notify.sock");
        let manager = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), &message(State::Ready, "serving 2 profiles")).unwrap();
        assert_eq!(recv(&manager), "READY=1\nSTATUS=serving 2 profiles\n");
        send(path.as_os_str(), &message(State::Stopping, "shutting\ndown")).unwrap();
        assert_eq!(recv(&manager), "STOPPING=1\nSTATUS=shutting down\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("posgate-notify-test-{}", std::process::id());
        let manager = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1\n").unwrap();
        assert_eq!(recv(&manager), "READY=1\n");
    }

    #[test]
    fn relative_empty_and_overlong_addresses_are_refused_without_a_send() {
        for bad in ["notify.sock", "", "@", &format!("/{}", "x".repeat(200))] {
            let e = send(OsStr::new(bad), "READY=1\n").unwrap_err();
            assert!(matches!(e, NotifyError::Address(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_missing_manager_socket_is_an_error_naming_the_address() {
        let dir = scratch("missing");
        let path = dir.join("gone.sock");
        let e = send(path.as_os_str(), "READY=1\n").unwrap_err().to_string();
        assert!(e.contains("gone.sock") && e.contains(ENV), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
