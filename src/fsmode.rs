//! Owner-only files and folders for everything the daemon keeps (journal, keys, marks), whatever the umask.
//!
//! The journal holds masked cards, amounts and sealed fields, the data key beside it opens the sealed
//! ones: no other local user may read either. Folders are made 0700 before anything is created in them
//! (a 0700 folder protects what a library such as sled makes inside with its own modes), files 0600.
//! Elsewhere than Unix these are plain creates: the installer's ACLs protect the data folder there.
use std::io;
use std::path::{Path, PathBuf};

/// Folders the daemon makes.
pub const DIR_MODE: u32 = 0o700;
/// Files the daemon makes.
pub const FILE_MODE: u32 = 0o600;

/// Make `dir` (and missing parents) owner-only; an existing `dir` that others could enter is closed
/// (0700) and `Ok(Some(old mode))` says so, for a warning.
#[cfg(unix)]
pub fn private_dir(dir: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700 | DIR_MODE))?;
    Ok(Some(mode))
}

#[cfg(not(unix))]
pub fn private_dir(dir: &Path) -> io::Result<Option<u32>> {
    std::fs::create_dir_all(dir).map(|()| None)
}

/// Open options that create a file 0600 (for new journal logs and keys); add read/write/append as needed.
pub fn private_options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut o = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o
}

/// Write a whole file, owner-only (also when it existed with a wider mode).
pub fn write_private(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    let mut f = private_options().write(true).create(true).truncate(true).open(path)?;
    restrict_file(&f)?;
    f.write_all(bytes.as_ref())
}

#[cfg(unix)]
fn restrict_file(f: &std::fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_file(_f: &std::fs::File) -> io::Result<()> {
    Ok(())
}

/// Close everything under `dir` to its owner: folders 0700, files 0600 (sockets are left alone: the
/// API socket's 0660 is deliberate). For files made by others (sled) and data folders from older
/// versions. Returns what was changed, for a warning. Symbolic links are not followed.
#[cfg(unix)]
pub fn restrict_tree(dir: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = std::fs::symlink_metadata(e.path())?;
            let ft = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            let want = if ft.is_dir() {
                todo.push(e.path());
                mode & 0o700 | DIR_MODE
            } else if ft.is_file() {
                mode & 0o600
            } else {
                continue; // sockets, links, devices
            };
            if mode & 0o077 != 0 {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(want))?;
                changed.push(e.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(not(unix))]
pub fn restrict_tree(_dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(Vec::new())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn folders_and_files_are_owner_only_and_open_ones_are_closed() {
        let t = tempfile::tempdir().expect("dir");
        let d = t.path().join("data/journal");
        assert_eq!(private_dir(&d).expect("make"), None);
        assert_eq!(mode(&d), 0o700);
        write_private(d.join("k"), b"x").expect("write");
        assert_eq!(mode(&d.join("k")), 0o600);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(private_dir(&d).expect("fix"), Some(0o755));
        assert_eq!(mode(&d), 0o700);
        std::fs::write(d.join("db"), "x").expect("write");
        std::fs::set_permissions(d.join("db"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::create_dir(d.join("blobs")).expect("mkdir");
        std::fs::set_permissions(d.join("blobs"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let changed = restrict_tree(t.path()).expect("restrict");
        assert_eq!((mode(&d.join("db")), mode(&d.join("blobs"))), (0o600, 0o700));
        assert_eq!(changed.len(), 2, "{changed:?}");
    }
}
