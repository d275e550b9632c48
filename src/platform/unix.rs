//! The Unix side of `platform`: file modes, positioned writes, folder fsync, signals, the demo pty.
use std::fs::{File, Metadata, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The local API endpoint a client uses when none is given.
pub const DEFAULT_LOCAL_ENDPOINT: &str = "/run/posgate/posgate.sock";
/// The daemon config of a packaged install.
pub const DEFAULT_CONFIG: &str = "/etc/posgate/posgate.toml";

/// The local API endpoint from the daemon config: `unix_socket`, relative to the config's folder.
/// `pipe` (Windows' named pipe) is refused, so a config written for Windows does not start silently
/// without its local endpoint. `Err((field, why))`.
pub fn local_endpoint(dir: &Path, unix_socket: Option<String>, pipe: Option<String>) -> Result<Option<PathBuf>, (&'static str, String)> {
    if pipe.is_some() {
        return Err(("pipe", "is Windows' named pipe; on this system the local API listens on `unix_socket`".into()));
    }
    Ok(unix_socket.map(|s| dir.join(s)))
}

/// The demo's local endpoint: a socket in its data folder.
pub fn demo_endpoint(data_dir: &Path) -> PathBuf {
    data_dir.join("posgate.sock")
}

/// New files from these options are readable by their owner only (mode 0600).
pub fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.mode(0o600)
}

/// The file's permission bits (`0o777` part of the mode).
pub fn mode_bits(meta: &Metadata) -> u32 {
    meta.permissions().mode() & 0o777
}

/// Write all of `buf` at `offset` without moving the file position.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    file.write_all_at(buf, offset)
}

/// fsync a folder, so the names of files just created or renamed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Open a file someone else writes, only to fsync it (a read-only descriptor is enough on Unix).
pub fn open_syncable(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// Resolves on SIGTERM (systemd's stop) or Ctrl-C.
pub async fn terminate_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// A pseudo-terminal posing as a serial device (`posgate demo --scanner`, `posgate bench`): the daemon
/// opens [`Pty::path`], the caller writes frames to [`Pty::master`].
#[derive(Debug)]
pub struct Pty {
    master: File,
    path: PathBuf,
    /// Held open so the line stays up while the daemon reopens the port.
    _slave: OwnedFd,
}

impl Pty {
    pub fn open() -> Result<Pty, String> {
        let pair = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        let path = nix::unistd::ttyname(&pair.slave).map_err(|e| format!("ttyname: {e}"))?;
        Ok(Pty { master: File::from(pair.master), path, _slave: pair.slave })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn master(&mut self) -> &mut File {
        &mut self.master
    }
}
