//! Small files only their owner may read: created with mode 0600 from the first byte and replaced
//! atomically, so a crash never leaves a half-written key or pin list behind. Used for TLS
//! private keys, identity keys and pinned peer keys. Unix only.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owner read and write, nobody else anything: identity keys are secrets, and a pin list that
/// others could edit would let them pin their own keys.
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Directories we create for such files: owner only, so other users cannot even list them.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Permission bits that give the group or other users any access.
const GROUP_OR_OTHER_BITS: u32 = 0o077;

/// Replaces `path` with `contents`: writes a temporary file beside it (mode 0600), flushes it to
/// disk, renames it over `path`, and flushes the directory. Readers see the old or the new file,
/// never a mixture. Creates missing parent directories with mode 0700.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    create_private_dir(dir)?;
    let temporary = temporary_path(path)?;
    // A leftover from a crash may have any mode; remove it so that `create_new` sets ours.
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let written = write_new_file(&temporary, contents).and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        // Best effort: the error we report is the write's, not this clean-up's.
        let _ = fs::remove_file(&temporary);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// True when the file's permissions give nobody but its owner any access.
pub fn is_owner_only(metadata: &fs::Metadata) -> bool {
    metadata.permissions().mode() & GROUP_OR_OTHER_BITS == 0
}

/// Creates `path` (which must not exist yet) with mode 0600 from the first byte, writes
/// `contents` and flushes it to disk.
pub fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Creates `dir` (and its parents) if needed, owner-only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Refuses a private file (or directory) that group or others can access: a leaked key is
/// no longer a secret, and silently carrying on would hide the leak.
pub fn check_private(path: &Path) -> io::Result<()> {
    let metadata = fs::metadata(path)?;
    if !is_owner_only(&metadata) {
        let fix = if metadata.is_dir() {
            PRIVATE_DIR_MODE
        } else {
            PRIVATE_FILE_MODE
        };
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} can be read or changed by other users (mode {:o}); run `chmod {fix:o} {}`",
                path.display(),
                metadata.permissions().mode() & 0o777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `name.tmp` next to `name`.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let mut name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_os_string();
    name.push(".tmp");
    Ok(path.with_file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_owner_only_file_and_directories_and_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("secret");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let metadata = fs::metadata(&path).expect("metadata");
        assert_eq!(metadata.permissions().mode() & 0o777, PRIVATE_FILE_MODE);
        assert!(is_owner_only(&metadata));
        let dir_mode = fs::metadata(path.parent().expect("parent")).expect("dir");
        assert_eq!(dir_mode.permissions().mode() & 0o777, PRIVATE_DIR_MODE);
        assert!(!temporary_path(&path).expect("tmp").exists());
        check_private(&path).expect("owner-only");
    }

    #[test]
    fn group_readable_files_are_refused_with_a_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leaky");
        fs::write(&path, b"k").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = check_private(&path).expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_stale_world_readable_temporary_file_does_not_leak_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let stale = temporary_path(&path).expect("tmp");
        fs::write(&stale, b"junk").expect("stale");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomically(&path, b"fresh").expect("write");
        let metadata = fs::metadata(&path).expect("metadata");
        assert_eq!(metadata.permissions().mode() & 0o777, PRIVATE_FILE_MODE);
        assert_eq!(fs::read(&path).expect("read"), b"fresh");
    }
}
