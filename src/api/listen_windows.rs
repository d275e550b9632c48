//! The API's local endpoint on Windows: a named pipe (`\\.\pipe\posgate`), local clients only.
//!
//! The pipe takes the place of the Unix socket and, like it, needs no token: only processes on this
//! PC reach it (remote clients are rejected), and Windows' default pipe DACL lets only SYSTEM,
//! Administrators and the daemon's own account write to it (Everyone may only read, which is not
//! enough to send a request). POS apps running as ordinary users use loopback TCP with the token.
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions};

use super::ApiError;

/// What the access log calls the local transport.
pub const LOCAL_TRANSPORT: &str = "pipe";
/// One client connection on the local listener.
pub type LocalStream = NamedPipeServer;

/// `ERROR_PIPE_BUSY`: every instance of the pipe is taken; try again shortly.
const ERROR_PIPE_BUSY: i32 = 231;
/// At most this many clients at once (each an instance of the pipe); more wait for a free one.
/// Bounds what any local process can make the daemon hold (tokio allows at most 254).
pub const PIPE_INSTANCES: usize = 64;
/// How long a client waits for a free pipe instance before giving up.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The named pipe the daemon serves on: one instance waits for the next client at all times.
#[derive(Debug)]
pub struct LocalListener {
    name: PathBuf,
    next: NamedPipeServer,
}

fn server(name: &Path, first: bool) -> std::io::Result<NamedPipeServer> {
    ServerOptions::new().first_pipe_instance(first).reject_remote_clients(true).max_instances(PIPE_INSTANCES).create(name)
}

/// Bind the daemon's local endpoint (`pipe` in the config). The first instance is created with
/// `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a second daemon on the same pipe fails here instead of
/// sharing clients with the first.
pub fn bind_local(name: impl AsRef<Path>) -> Result<LocalListener, ApiError> {
    let name = name.as_ref();
    crate::platform::check_pipe_name(&name.to_string_lossy())
        .map_err(|e| ApiError::Bind { path: name.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e) })?;
    match server(name, true) {
        Ok(next) => Ok(LocalListener { name: name.to_path_buf(), next }),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(ApiError::InUse(name.to_path_buf())),
        Err(source) => Err(ApiError::Bind { path: name.to_path_buf(), source }),
    }
}

/// The next client: wait for one on the waiting instance, put a fresh instance in its place, and
/// hand over the connected one. Cancel safe (tokio's `connect` is, and nothing else awaits).
pub async fn accept_local(l: &mut LocalListener) -> std::io::Result<LocalStream> {
    if let Err(e) = l.next.connect().await {
        // A client that came and went leaves the instance broken: replace it, then report.
        if let Ok(fresh) = server(&l.name, false) {
            l.next = fresh;
        }
        return Err(e);
    }
    // At PIPE_INSTANCES this fails: the connected client stays in `next` (its `connect` returns at once
    // next time) and is handed over once an instance is free.
    let fresh = server(&l.name, false)?;
    Ok(std::mem::replace(&mut l.next, fresh))
}

/// The pipe's name, for the log. (Nothing to remove at shutdown: a pipe goes with its last handle.)
pub fn local_name(l: &LocalListener) -> Option<PathBuf> {
    Some(l.name.clone())
}

/// Named pipes leave no file behind.
pub fn remove_local(_name: &Path) {}

/// Connect to a daemon's pipe (the CLI's `--socket`), waiting up to [`BUSY_WAIT`] while every
/// instance is busy. A missing pipe is `NotFound`: the daemon is not running.
pub async fn connect_local(name: &Path) -> std::io::Result<NamedPipeClient> {
    let mut waited = Duration::ZERO;
    loop {
        match ClientOptions::new().open(name) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && waited < BUSY_WAIT => {}
            r => return r,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
}
