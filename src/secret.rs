//! A wrapper for keys and passwords whose `Debug` and `Display` print nothing of the value, and the
//! one way secret files are read: refused when anyone but the daemon (and its own group) can read them.
use std::fmt;
use std::path::{Path, PathBuf};

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the secret file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the secret file {} is mode {mode:04o}: {who} can read it. Fix: `chmod 600 {}` (or `chmod 640` with the daemon's own group as the file's group)",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32, who: &'static str },
}

/// Read a secret file (master key, vendor secret, API token, private key) after checking that it is private.
pub fn read_file(path: &Path) -> Result<Secret, SecretFileError> {
    check_private(path)?;
    std::fs::read(path).map(Secret::new).map_err(|source| SecretFileError::Read { path: path.to_path_buf(), source })
}

/// The rule for secret files: no permission at all for "other"; the group may only read, and only
/// when it is the daemon's own group (a packaged token is `0640 root:posgate`); owner-only is always fine.
#[cfg(unix)]
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read { path: path.to_path_buf(), source })?;
    let mode = meta.mode() & 0o7777;
    let exposed = |who| Err(SecretFileError::Exposed { path: path.to_path_buf(), mode, who });
    if mode & 0o007 != 0 {
        return exposed("every local user");
    }
    if mode & 0o030 != 0 {
        return exposed("its group (with write or execute)");
    }
    if mode & 0o040 != 0 && meta.gid() != nix::unistd::getegid().as_raw() {
        return exposed("a group other than the daemon's");
    }
    Ok(())
}

/// Elsewhere the installer's ACLs protect secret files.
#[cfg(not(unix))]
pub fn check_private(_path: &Path) -> Result<(), SecretFileError> {
    Ok(())
}

/// Secret bytes (terminal master keys, app secrets, tokens). Never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    /// The raw bytes, for the one place that must use them (a cipher, a signer).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The value as text with surrounding whitespace trimmed (secret files often end in a newline).
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0).map(str::trim)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn group_or_world_readable_secret_files_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("tmk.hex");
        std::fs::write(&f, "00").expect("write");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, true), (0o644, false), (0o604, false), (0o660, false), (0o666, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let r = read_file(&f);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                let text = e.to_string();
                assert!(text.contains("tmk.hex") && text.contains(&format!("{mode:04o}")) && text.contains("chmod 600"), "{text}");
            }
        }
    }

    #[test]
    fn debug_and_display_print_nothing_of_the_value() {
        let s = Secret::new(b"0123456789ABCDEFFEDCBA9876543210".to_vec());
        let shown = format!("{s:?} {s} {:?}", Some(&s));
        assert!(!shown.contains("0123"), "{shown}");
        assert!(!shown.contains("ABCDEF"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
