//! Small file helpers shared by everything that keeps secrets on disk: private keys,
//! identity keys, pinned peer keys.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Permission bits for files only their owner may read: private keys and key pins.
pub const PRIVATE_MODE: u32 = 0o600;

/// Permission bits for directories that hold private files.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Writes `contents` to `path` so that a reader sees either the old file or the complete
/// new one, never a torn write, and so that the file is never readable by anyone but its
/// owner, not even for a moment: a temporary file is created with mode 0600, synced, and
/// renamed over `path`.
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_MODE)
            .open(&tmp)?;
        // `mode` applies only when the file is created; make sure of it either way.
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_MODE))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and its parents) if needed, with mode 0700 for the last component.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Refuses a private file that group or others can read: a leaked key is not usable as a
/// secret, and silently continuing would hide the leak.
pub fn check_private(path: &Path) -> std::io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private_atomic(&path, b"one").unwrap();
        write_private_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_MODE);
        check_private(&path).unwrap();
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn group_readable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leaky");
        fs::write(&path, b"k").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
