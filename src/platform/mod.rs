//! The few things posgate does differently on Unix and on Windows, each behind one function here.
//!
//! Everything else in the crate is platform-neutral and calls these instead of `std::os::unix` or
//! `nix`; the per-platform bodies live in `unix.rs` and `windows.rs`, never as scattered `cfg`s.
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// The named pipe the Windows service serves the local API on.
pub const DEFAULT_LOCAL_ENDPOINT_WINDOWS: &str = r"\\.\pipe\posgate";

/// Longest named pipe name Windows accepts, prefix included.
pub const PIPE_NAME_MAX: usize = 256;
const PIPE_PREFIX: &str = r"\\.\pipe\";

/// A local named pipe name: `\\.\pipe\` then 1 or more characters other than a backslash, at most
/// [`PIPE_NAME_MAX`] in all. (Pure text rules, so they are tested on every platform.)
pub fn check_pipe_name(name: &str) -> Result<(), String> {
    let rest = match name.get(..PIPE_PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(PIPE_PREFIX) => &name[PIPE_PREFIX.len()..],
        _ => return Err(format!(r"a named pipe on this PC starts with `{PIPE_PREFIX}` (e.g. `\\.\pipe\posgate`)")),
    };
    if rest.is_empty() || rest.contains('\\') || name.chars().count() > PIPE_NAME_MAX {
        return Err(format!("after `{PIPE_PREFIX}` a pipe name is 1 to {} characters, none of them a backslash", PIPE_NAME_MAX - PIPE_PREFIX.len()));
    }
    Ok(())
}

/// The Windows service's daemon config, as the MSI's setup step writes it.
pub const WINDOWS_CONFIG_TEMPLATE: &str = include_str!("../../packaging/windows/posgate.toml");

/// First-install setup of a config folder: create `config` from `template` unless it exists (a
/// technician's edits are never overwritten), and the `data` and `terminal-profiles` folders beside
/// it. `Ok(true)` when the config was written now.
pub fn ensure_config(config: &std::path::Path, template: &str) -> std::io::Result<bool> {
    let dir = config.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::create_dir_all(dir.join("terminal-profiles"))?;
    match private(std::fs::OpenOptions::new().write(true).create_new(true)).open(config) {
        Ok(mut f) => {
            std::io::Write::write_all(&mut f, template.as_bytes())?;
            f.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_names_are_local_and_bounded() {
        assert_eq!(check_pipe_name(r"\\.\pipe\posgate"), Ok(()));
        assert_eq!(check_pipe_name(r"\\.\PIPE\posgate-2"), Ok(()));
        for bad in [r"posgate", r"\\server\pipe\posgate", r"\\.\pipe\", r"\\.\pipe\a\b", r"C:\posgate.sock", r"\\.\pip"] {
            assert!(check_pipe_name(bad).is_err(), "{bad} accepted");
        }
        let long = format!(r"\\.\pipe\{}", "p".repeat(PIPE_NAME_MAX - 9));
        assert_eq!(check_pipe_name(&long), Ok(()));
        assert!(check_pipe_name(&format!("{long}p")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn unix_refuses_the_windows_pipe_key() {
        let dir = std::path::Path::new("/etc/posgate");
        assert_eq!(local_endpoint(dir, Some("p.sock".into()), None), Ok(Some(dir.join("p.sock"))));
        assert_eq!(local_endpoint(dir, None, None), Ok(None));
        let (field, _) = local_endpoint(dir, None, Some(r"\\.\pipe\posgate".into())).expect_err("pipe refused");
        assert_eq!(field, "pipe");
    }

    #[test]
    fn setup_writes_the_windows_config_once_and_keeps_edits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("posgate").join("posgate.toml");
        assert!(ensure_config(&config, WINDOWS_CONFIG_TEMPLATE).expect("first setup"));
        assert!(dir.path().join("posgate/data").is_dir() && dir.path().join("posgate/terminal-profiles").is_dir());
        std::fs::write(&config, "edited").expect("edit");
        assert!(!ensure_config(&config, WINDOWS_CONFIG_TEMPLATE).expect("second setup"));
        assert_eq!(std::fs::read_to_string(&config).expect("read"), "edited");
    }

    /// The template the MSI installs loads as a daemon config (its `pipe` checked by the Windows rules;
    /// on Unix, where `pipe` is refused, the rest of it is loaded without that line).
    #[test]
    fn the_windows_config_template_loads() {
        let raw: toml::Table = toml::from_str(WINDOWS_CONFIG_TEMPLATE).expect("TOML");
        assert_eq!(raw["pipe"].as_str(), Some(DEFAULT_LOCAL_ENDPOINT_WINDOWS));
        assert_eq!(check_pipe_name(DEFAULT_LOCAL_ENDPOINT_WINDOWS), Ok(()));
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("posgate.toml");
        let text: String = WINDOWS_CONFIG_TEMPLATE.lines().filter(|l| cfg!(windows) || !l.starts_with("pipe")).map(|l| format!("{l}\n")).collect();
        ensure_config(&config, &text).expect("setup");
        let cfg = crate::config::DaemonConfig::load(&config).expect("the template loads");
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert!(cfg.tcp.is_none() && cfg.profiles.is_empty());
    }

    #[test]
    fn write_all_at_rewrites_only_the_given_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"aaaaaaaa").expect("write");
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
        write_all_at(&f, b"bb", 3).expect("write_all_at");
        sync_dir(dir.path()).expect("sync_dir");
        assert_eq!(std::fs::read(&path).expect("read"), b"aaabbaaa");
    }

    #[test]
    fn private_files_are_made_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        private(std::fs::OpenOptions::new().write(true).create_new(true)).open(&path).expect("create");
        let bits = mode_bits(&std::fs::metadata(&path).expect("metadata"));
        assert_eq!(bits & 0o077, 0, "mode {bits:o}");
        open_syncable(&path).and_then(|f| f.sync_data()).expect("sync a file opened for syncing");
    }
}
