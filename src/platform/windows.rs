//! The Windows side of `platform`: no mode bits (ACLs decide), positioned writes, service stop, no pty.
use std::fs::{File, Metadata, OpenOptions};
use std::os::windows::fs::FileExt;
use std::path::{Path, PathBuf};

/// The local API endpoint a client uses when none is given: the daemon's named pipe.
pub const DEFAULT_LOCAL_ENDPOINT: &str = super::DEFAULT_LOCAL_ENDPOINT_WINDOWS;
/// The daemon config the MSI installs.
pub const DEFAULT_CONFIG: &str = r"C:\ProgramData\posgate\posgate.toml";

/// The local API endpoint from the daemon config: `pipe`, a named pipe name (`\\.\pipe\posgate`).
/// `unix_socket` is refused: Windows serves the local API on a pipe. `Err((field, why))`.
pub fn local_endpoint(_dir: &Path, unix_socket: Option<String>, pipe: Option<String>) -> Result<Option<PathBuf>, (&'static str, String)> {
    if unix_socket.is_some() {
        return Err(("unix_socket", r"Windows has no Unix socket for the local API; use `pipe = '\\.\pipe\posgate'`".into()));
    }
    match pipe {
        None => Ok(None),
        Some(p) => {
            super::check_pipe_name(&p).map_err(|e| ("pipe", e))?;
            Ok(Some(PathBuf::from(p)))
        }
    }
}

/// The demo's local endpoint: its own pipe, so it runs beside an installed service.
pub fn demo_endpoint(_data_dir: &Path) -> PathBuf {
    PathBuf::from(r"\\.\pipe\posgate-demo")
}

/// Windows has no mode bits: a new file takes the ACL its folder passes on (the MSI gives
/// `%ProgramData%\posgate` to SYSTEM, Administrators and the service account only).
pub fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts
}

/// Windows has no mode bits; access is the folder's ACL (see [`private`]), reported as owner-only.
pub fn mode_bits(_meta: &Metadata) -> u32 {
    0o600
}

/// Write all of `buf` at `offset` (`seek_write` may write less than asked, so loop).
pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "failed to write the whole buffer")),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// NTFS journals its metadata, and a folder cannot be opened for `FlushFileBuffers` without backup
/// privileges: there is nothing to do (and failing here would stop the journal from opening).
pub fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// `FlushFileBuffers` needs a handle with write access.
pub fn open_syncable(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Resolves on Ctrl-C or Ctrl-Break (console runs of `posgate serve`; the service stops through the SCM).
pub async fn terminate_signal() {
    let brk = async {
        match tokio::signal::windows::ctrl_break() {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = brk => {}
    }
}

/// Windows has no pseudo-terminals a serial port reader could open: `posgate demo --scanner` and the
/// scan bench say so. (Uninhabited: `open` always fails.)
#[derive(Debug)]
pub struct Pty {
    never: std::convert::Infallible,
}

impl Pty {
    pub fn open() -> Result<Pty, String> {
        Err("the pseudo-terminal scanner is not available on Windows (no pty); plug in a real scanner or use the API's POST /v1/scans".into())
    }

    pub fn path(&self) -> &Path {
        match self.never {}
    }

    pub fn master(&mut self) -> &mut File {
        match self.never {}
    }
}
