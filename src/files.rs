//! Small files only their owner may read: created with mode 0600 from the first byte and replaced
//! atomically, so a crash never leaves a half-written key or pin list behind. Used for TLS
//! private keys, identity keys and pinned peer keys. Unix only.
//!
//! A file is only as private as the directories above it: whoever can write one of them can
//! delete or replace what is below (a pin list, to be "trusted on first use" again). So, like
//! OpenSSH's `StrictModes`, [`check_directory_chain`] refuses a key or pin directory when any
//! directory from it up to `$HOME` (or `/` outside it) is owned by another user (root is
//! fine) or writable by group or others — unless it is a root-owned directory with the
//! sticky bit, such as `/tmp`, where others cannot remove or rename what is ours.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owner read and write, nobody else anything: identity keys are secrets, and a pin list that
/// others could edit would let them pin their own keys.
const PRIVATE_FILE_MODE: u32 = 0o600;

/// Directories we create for such files: owner only, so other users cannot even list them.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Permission bits that give the group or other users any access.
const GROUP_OR_OTHER_BITS: u32 = 0o077;

/// Permission bits that let the group or other users write.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// The sticky bit: in such a directory only an entry's owner may remove or rename it.
const STICKY: u32 = 0o1000;

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

/// An exclusive lock on a directory, held until dropped: processes that make files there
/// (two servers started at the same moment on one `certs/`) take turns instead of writing
/// each other's half-made files. An advisory `flock` on `<dir>/.lock` (0600).
pub struct DirLock {
    /// The locked file; closing it releases the lock.
    _file: File,
}

/// Waits for and takes [`DirLock`] on `dir` (which must exist).
pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".lock"))?;
    // SAFETY: flock on a descriptor this function owns; it blocks until granted.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(DirLock { _file: file })
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

/// Refuses `dir` (which may not exist yet: its nearest existing ancestor is where the check
/// starts) when it or any directory above it, up to `$HOME` if `dir` is inside it and `/`
/// otherwise, is owned by another user than us or root, or can be written by group or
/// others (a root-owned sticky directory like `/tmp` excepted). The error names the
/// directory and how to fix it.
pub fn check_directory_chain(dir: &Path) -> io::Result<()> {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .and_then(|home| fs::canonicalize(home).ok());
    let mut existing = dir.to_path_buf();
    while fs::symlink_metadata(&existing).is_err() {
        if !existing.pop() {
            return Ok(()); // nothing of it exists: it will be created private
        }
    }
    let start = fs::canonicalize(&existing)?;
    let stop = home.filter(|home| start.starts_with(home));
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for current in start.ancestors() {
        let metadata = fs::metadata(current)?;
        let mode = metadata.permissions().mode();
        let owner = metadata.uid();
        if owner != me && owner != 0 {
            return Err(unsafe_directory(
                current,
                &format!("is owned by another user (uid {owner})"),
                &format!("chown {me} {}", current.display()),
            ));
        }
        let shared_sticky = owner == 0 && mode & STICKY != 0;
        if mode & GROUP_OR_OTHER_WRITE != 0 && !shared_sticky {
            return Err(unsafe_directory(
                current,
                &format!("can be written by other users (mode {:o})", mode & 0o7777),
                &format!("chmod go-w {}", current.display()),
            ));
        }
        if stop.as_deref() == Some(current) {
            break;
        }
    }
    Ok(())
}

/// The error for a directory others control.
fn unsafe_directory(dir: &Path, problem: &str, fix: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "refusing to use keys below {}: it {problem}, so someone else could replace or \
             delete your keys and pinned contacts. Fix it (`{fix}`) or choose another \
             directory with --home",
            dir.display()
        ),
    )
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

    #[test]
    fn a_directory_others_can_write_or_another_user_owns_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("shared").join("alice");
        check_directory_chain(&keys).expect("a private temporary directory is fine");
        fs::create_dir(dir.path().join("shared")).expect("mkdir");
        fs::set_permissions(dir.path().join("shared"), fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let error = check_directory_chain(&keys).expect_err("world-writable");
        assert!(
            error.to_string().contains("can be written by other users"),
            "{error}"
        );
        assert!(error.to_string().contains("chmod go-w"), "{error}");

        fs::set_permissions(dir.path().join("shared"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        fs::create_dir(&keys).expect("mkdir");
        check_directory_chain(&keys).expect("private again");
        std::os::unix::fs::chown(dir.path().join("shared"), Some(4242), None).expect("chown");
        let error = check_directory_chain(&keys).expect_err("foreign owner");
        assert!(
            error
                .to_string()
                .contains("owned by another user (uid 4242)"),
            "{error}"
        );
    }
}
