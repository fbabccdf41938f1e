//! The development signing key: a random HMAC secret kept in the data
//! directory so that a hub started without auth settings has a stable key
//! to mint and verify development tokens with.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The key file's name inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-signing-key";

/// Length of a generated development key, in bytes.
pub const DEV_KEY_LEN: usize = 32;

/// Largest key file read back, in bytes (a generated one is 43).
const MAX_DEV_KEY_FILE_LEN: u64 = 4096;

/// Loads `data_dir/dev-signing-key`, creating it first if it is missing.
///
/// A new key is [`DEV_KEY_LEN`] random bytes, stored base64url without
/// padding in a file created with mode `0600` (on Unix; `data_dir` is
/// created with mode `0700` if missing). An existing file is read back;
/// surrounding whitespace is ignored, and content that is not base64url or
/// decodes to fewer than [`DEV_KEY_LEN`] bytes is an
/// [`io::ErrorKind::InvalidData`] error. Returns the key and whether it was
/// created by this call.
pub fn load_or_create_dev_key(data_dir: &Path) -> io::Result<(Vec<u8>, bool)> {
    create_dir(data_dir)?;
    let path = data_dir.join(DEV_KEY_FILE);
    let key: [u8; DEV_KEY_LEN] = rand::random();
    match create_new(&path) {
        Ok(mut file) => {
            file.write_all(URL_SAFE_NO_PAD.encode(key).as_bytes())?;
            file.sync_all()?;
            Ok((key.to_vec(), true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key(&path).map(|k| (k, false)),
        Err(e) => Err(e),
    }
}

fn read_key(path: &Path) -> io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    warn_if_shared(&file);
    let mut text = String::new();
    file.take(MAX_DEV_KEY_FILE_LEN).read_to_string(&mut text)?;
    let key = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| invalid("the dev signing key file is not base64url"))?;
    if key.len() < DEV_KEY_LEN {
        return Err(invalid("the dev signing key is too short"));
    }
    Ok(key)
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(unix)]
fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_new(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_new(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn warn_if_shared(file: &fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!("the dev signing key file is readable by other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_file: &fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("data");
        let (key, created) = load_or_create_dev_key(&dir).unwrap();
        assert!(created);
        assert_eq!(key.len(), DEV_KEY_LEN);
        let text = fs::read_to_string(dir.join(DEV_KEY_FILE)).unwrap();
        assert_eq!(text.len(), 43, "base64url without padding");
        assert!(!text.contains('='));

        let (again, created) = load_or_create_dev_key(&dir).unwrap();
        assert!(!created);
        assert_eq!(again, key);

        let other = tempfile::tempdir().unwrap();
        let (fresh, _) = load_or_create_dev_key(other.path()).unwrap();
        assert_ne!(fresh, key);
    }

    #[cfg(unix)]
    #[test]
    fn file_mode_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        load_or_create_dev_key(tmp.path()).unwrap();
        let mode = fs::metadata(tmp.path().join(DEV_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(DEV_KEY_FILE);
        fs::write(&path, "not base64 !!").unwrap();
        let err = load_or_create_dev_key(tmp.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        fs::write(&path, URL_SAFE_NO_PAD.encode([1u8; 8])).unwrap();
        let err = load_or_create_dev_key(tmp.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Whitespace around a valid key is fine.
        fs::write(&path, format!("{}\n", URL_SAFE_NO_PAD.encode([7u8; 32]))).unwrap();
        assert_eq!(
            load_or_create_dev_key(tmp.path()).unwrap(),
            (vec![7u8; 32], false)
        );
    }
}
