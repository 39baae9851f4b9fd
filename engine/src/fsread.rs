//! Reading the files a spec names, safely: every read is bounded and must be
//! a regular file.
//!
//! A spec, strategy, template, policy, registry or scenario is input we do
//! not control: `uses: /dev/zero` would allocate without end and a FIFO
//! would block forever. [`read`] opens without blocking (`O_NONBLOCK`, so a
//! FIFO cannot hang the open), checks the *opened* handle (no check-then-use
//! race), refuses anything that is not a regular file, and never reads more
//! than the cap, even if the file grows while it is read. Its errors are
//! stable phrases (`no such file`, `is a directory`, `is a FIFO`, `is larger
//! than 1 MiB`) that every command prints the same way.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The default cap: what a spec, a template or a registry can sensibly be.
pub const DEFAULT_MAX: u64 = 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Nothing at that path.
    #[error("no such file")]
    NotFound,
    /// Not readable by us.
    #[error("permission denied")]
    PermissionDenied,
    /// A directory, FIFO, device or socket.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Over the cap.
    #[error("is larger than {}", human(*.max))]
    TooLarge {
        /// The cap.
        max: u64,
    },
    /// Anything else the OS said.
    #[error("{0}")]
    Io(String),
}

/// `1 MiB`, `64 KiB`, `300 bytes`.
#[must_use]
pub fn human(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

fn of_io(e: &std::io::Error) -> ReadError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound,
        std::io::ErrorKind::PermissionDenied => ReadError::PermissionDenied,
        std::io::ErrorKind::IsADirectory => ReadError::NotRegular("a directory"),
        _ => ReadError::Io(e.to_string()),
    }
}

/// Reads a regular file of at most `max` bytes.
///
/// # Errors
/// See [`ReadError`].
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| of_io(&e))?;
    let meta = file.metadata().map_err(|e| of_io(&e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(ReadError::NotRegular(if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a file"
        }));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge { max });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows after the check.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| of_io(&e))?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
///
/// # Errors
/// See [`ReadError`]; invalid UTF-8 is an `Io` error saying so.
pub fn read_string(path: &Path, max: u64) -> Result<String, ReadError> {
    String::from_utf8(read(path, max)?).map_err(|_| ReadError::Io("is not valid UTF-8".into()))
}

/// The directory the files of a spec must stay inside: the nearest
/// ancestor of `start` holding `.git` (or `.hg`, `.jj`), else `start`.
#[must_use]
pub fn repository_root(start: &Path) -> PathBuf {
    let start = std::fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
    let mut dir = start.as_path();
    loop {
        if [".git", ".hg", ".jj"].iter().any(|m| dir.join(m).exists()) {
            return dir.to_path_buf();
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return start,
        }
    }
}

/// Why a path is outside the root it must stay in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is outside {}{}", root.display(), if *via_symlink { " (through a symbolic link)" } else { "" })]
pub struct Escape {
    /// The root.
    pub root: PathBuf,
    /// The path itself was inside, a symbolic link took it out.
    pub via_symlink: bool,
}

/// Checks that `path` (resolved, symbolic links followed) lies inside `root`.
/// A path that does not exist is judged lexically (its read fails later).
///
/// # Errors
/// [`Escape`] when it leaves the root.
pub fn confine(root: &Path, path: &Path) -> Result<(), Escape> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let lexical = normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    let inside_lexically = lexical.starts_with(&root);
    match std::fs::canonicalize(path) {
        Ok(real) if real.starts_with(&root) => Ok(()),
        Ok(_) => Err(Escape {
            root,
            via_symlink: inside_lexically,
        }),
        Err(_) if inside_lexically => Ok(()),
        Err(_) => Err(Escape {
            root,
            via_symlink: false,
        }),
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, "x: 1\n").unwrap();
        assert_eq!(read(&f, 100).unwrap(), b"x: 1\n");
        assert_eq!(read(&f, 3), Err(ReadError::TooLarge { max: 3 }));
        assert_eq!(read(&dir.path().join("nope"), 100), Err(ReadError::NotFound));
        assert_eq!(read(dir.path(), 100), Err(ReadError::NotRegular("a directory")));
        assert_eq!(
            read(Path::new("/dev/zero"), 100),
            Err(ReadError::NotRegular("a device"))
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid, NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read(&fifo, 100),
            Err(ReadError::NotRegular("a FIFO")),
            "and it does not hang"
        );
        assert_eq!(
            ReadError::TooLarge { max: DEFAULT_MAX }.to_string(),
            "is larger than 1 MiB"
        );
    }

    #[test]
    fn confinement_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("specs")).unwrap();
        std::fs::write(root.join("specs/t.hbs"), "x").unwrap();
        assert!(confine(&root, &root.join("specs/../specs/t.hbs")).is_ok());
        let e = confine(&root, &root.join("specs/../../etc")).unwrap_err();
        assert!(!e.via_symlink);
        std::os::unix::fs::symlink("/etc/hostname", root.join("specs/link.hbs")).unwrap();
        let e = confine(&root, &root.join("specs/link.hbs")).unwrap_err();
        assert!(e.via_symlink, "{e}");
        assert!(confine(&root, Path::new("/etc/passwd")).is_err());
        assert!(confine(&root, &root.join("specs/missing.hbs")).is_ok());
    }
}
