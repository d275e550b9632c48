//! The API's local endpoint on Unix: a socket file, trusted by its mode (0660) instead of a token.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use super::ApiError;

/// The local listener the daemon serves on (the Unix socket).
pub type LocalListener = UnixListener;
/// One client connection on the local listener.
pub type LocalStream = UnixStream;
/// What the access log calls the local transport.
pub const LOCAL_TRANSPORT: &str = "unix";

/// Bind the API's Unix socket: refuse if a live daemon answers on it, remove a stale socket file,
/// bind, and set mode 0660 so only the owner and the `posgate` group can talk to the daemon.
pub fn bind_unix(path: impl AsRef<Path>) -> Result<UnixListener, ApiError> {
    let path = path.as_ref();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|source| ApiError::Stale { path: path.to_path_buf(), source })?;
        }
        Ok(_) => {
            // Never delete something that is not a socket: the path is probably misconfigured.
            let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket");
            return Err(ApiError::Bind { path: path.to_path_buf(), source });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ApiError::Stale { path: path.to_path_buf(), source }),
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind { path: path.to_path_buf(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| ApiError::Permissions { path: path.to_path_buf(), source })?;
    Ok(listener)
}

/// Bind the daemon's local endpoint (`unix_socket` in the config).
pub fn bind_local(path: impl AsRef<Path>) -> Result<LocalListener, ApiError> {
    bind_unix(path)
}

/// The next client. Cancel safe (used in `select!`).
pub async fn accept_local(l: &mut LocalListener) -> std::io::Result<LocalStream> {
    l.accept().await.map(|(s, _)| s)
}

/// The socket's path, for the log and for removal at shutdown.
pub fn local_name(l: &LocalListener) -> Option<PathBuf> {
    l.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf))
}

/// Remove the socket file once the daemon no longer serves on it.
pub fn remove_local(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Connect to a daemon's local endpoint (the CLI's `--socket`).
pub async fn connect_local(path: &Path) -> std::io::Result<LocalStream> {
    UnixStream::connect(path).await
}
