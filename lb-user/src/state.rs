//! lbd's own state on the host: one directory per data plane.
//!
//! `/run/lb/dataplane-<pin path>/` (mode 0700, owned by root) holds:
//!
//! - `lock`: an exclusive `flock` held for as long as lbd runs, so that one
//!   lbd at a time owns a data plane. It is taken before anything is adopted
//!   or changed; a second lbd finds it held, reads who holds it (the pid and
//!   control socket written inside) and stops. The lock dies with the
//!   process, so an lbd that crashed or exited with SIGQUIT leaves nothing
//!   that blocks the next one.
//! - `state.json`: what lbd changed on the host (the original sysctls, the
//!   directories it created), kept while the data plane runs so that the lbd
//!   that adopts it can undo exactly that at its clean stop.
//!
//! Nothing in here is taken on trust: the directory and every file in it are
//! opened without following symlinks, and refused unless they are owned by
//! this user (root) and writable by nobody else. The directory is created by
//! lbd itself with mode 0700, so no other user can place anything there.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};

/// Where lbd keeps its state directories (systemd's `RuntimeDirectory=lb`).
pub const STATE_ROOT: &str = "/run/lb";

/// The lock file's name inside a state directory.
const LOCK: &str = "lock";
/// The largest state file lbd reads back (a record is a few hundred bytes).
const MAX_STATE_FILE: u64 = 1 << 20;

/// Why lbd's state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another lbd holds the data plane's lock.
    #[error(
        "another lbd (pid {pid}, control socket {socket}) is running the data plane pinned at {}; \
         stop it first (or talk to it with lbctl --socket {socket})",
        pin_path.display()
    )]
    Busy {
        pin_path: PathBuf,
        pid: String,
        socket: String,
    },
    /// A directory or file is not what lbd made: a symlink, someone else's,
    /// or writable by others.
    #[error("refusing {}: {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state directory's name for the data plane pinned at `pin_path`:
/// `dataplane-` and the path below `/sys/fs/bpf`, with every byte other than
/// `A-Za-z0-9._` escaped as `%XX` (`/sys/fs/bpf/lb` → `dataplane-lb`,
/// `/sys/fs/bpf/a/b` → `dataplane-a%2Fb`). Different pin paths give
/// different names.
pub fn dir_name(pin_path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let rel = pin_path.strip_prefix("/sys/fs/bpf").unwrap_or(pin_path);
    let mut name = String::from("dataplane-");
    for &b in rel.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

/// Why a directory or file with this metadata is not to be trusted, if it
/// is not: not owned by us, or writable by group or others. `kind` names
/// what it should be ("directory", "file").
fn distrust(meta: &fs::Metadata, want_dir: bool) -> Option<String> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if want_dir && !ft.is_dir() {
        return Some("it is not a directory".into());
    }
    if !want_dir && !ft.is_file() {
        return Some("it is not a regular file".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Some(format!(
            "it is owned by uid {}, not by lbd's uid {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "it is writable by {} (mode {:o})",
            if meta.mode() & 0o002 != 0 {
                "everybody"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Refuses `path` unless it is a directory of ours that only we can write.
/// The last component is not followed if it is a symlink.
pub fn check_trusted_dir(path: &Path) -> Result<(), StateError> {
    let meta = fs::symlink_metadata(path).map_err(io_error(path))?;
    match distrust(&meta, true) {
        Some(why) => Err(StateError::Untrusted {
            path: path.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// Refuses a control socket that another user could replace or
/// intercept: its directory (or, while that does not exist yet, the nearest
/// existing directory above it, where lbd will create it) must belong to
/// lbd's user and be writable by nobody else, sticky bit or not; every
/// directory above that must belong to lbd's user or be sticky. A socket
/// in `/tmp` is therefore refused: another user could take its name while
/// lbd is down, and lbctl would send its requests there.
pub fn check_socket_dir(socket: &Path) -> Result<(), StateError> {
    let mut dir = socket.parent().unwrap_or(Path::new("/"));
    while let Err(e) = fs::metadata(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(io_error(dir)(e));
        }
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let canon = fs::canonicalize(dir).map_err(io_error(dir))?;
    let meta = fs::metadata(&canon).map_err(io_error(&canon))?;
    if let Some(why) = distrust(&meta, true) {
        return Err(StateError::Untrusted { path: canon, why });
    }
    for above in canon.ancestors().skip(1) {
        let meta = fs::metadata(above).map_err(io_error(above))?;
        let sticky = meta.mode() & 0o1000 != 0;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me && meta.uid() != 0 {
            return Err(StateError::Untrusted {
                path: above.to_path_buf(),
                why: format!("it is owned by uid {}", meta.uid()),
            });
        }
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(StateError::Untrusted {
                path: above.to_path_buf(),
                why: format!("it is writable by others (mode {:o})", meta.mode() & 0o7777),
            });
        }
    }
    Ok(())
}

/// Creates `path` and any missing parents, each new one with `mode`.
/// Returns the directories it created, outermost first (to be removed,
/// innermost first, when lbd stops cleanly).
pub fn create_dirs(path: &Path, mode: u32) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = path;
    loop {
        match fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(parent) => p = parent,
                    None => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut created = Vec::new();
    for dir in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(mode).create(&dir) {
            Ok(()) => created.push(dir),
            // Made by someone else meanwhile: theirs, not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Removes the directories `created` lists (as returned by
/// [`create_dirs`]), innermost first, each only if it is empty: whatever
/// else lives there now stays.
pub fn remove_created_dirs(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        match fs::remove_dir(dir) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "removed a directory lbd created"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "left a directory lbd created (not empty)")
            }
        }
    }
}

/// The state directory of one data plane, locked by this process.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    pin_path: PathBuf,
    lock: File,
    /// Directories made to create this one (`/run/lb` itself when it was
    /// missing), outermost first.
    created: Vec<PathBuf>,
}

impl StateDir {
    /// Opens the state directory of the data plane pinned at `pin_path`
    /// under `root` (creating it, mode 0700, if missing), checks that only
    /// lbd's user can write it, and takes its lock. A lock held by another
    /// process is [`StateError::Busy`], naming it; nothing is changed then.
    pub fn lock(root: &Path, pin_path: &Path) -> Result<StateDir, StateError> {
        if fs::symlink_metadata(root).is_ok() {
            check_trusted_dir(root)?;
        }
        let dir = root.join(dir_name(pin_path));
        let mut created = create_dirs(root, 0o755).map_err(io_error(root))?;
        created.extend(create_dirs(&dir, 0o700).map_err(io_error(&dir))?);
        check_trusted_dir(root)?;
        check_trusted_dir(&dir)?;
        let path = dir.join(LOCK);
        let lock = open_trusted(&path, true)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&lock).take(4096).read_to_string(&mut text);
                let mut lines = text.lines();
                return Err(StateError::Busy {
                    pin_path: pin_path.to_path_buf(),
                    pid: lines.next().unwrap_or("unknown").trim().to_owned(),
                    socket: lines.next().unwrap_or("unknown").trim().to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
        }
        Ok(StateDir {
            dir,
            pin_path: pin_path.to_path_buf(),
            lock,
            created,
        })
    }

    /// Records who holds the lock (this process, serving `socket`), for the
    /// message a second lbd prints.
    pub fn claim(&self, socket: &Path) -> Result<(), StateError> {
        let path = self.dir.join(LOCK);
        let text = format!("{}\n{}\n", std::process::id(), socket.display());
        self.lock
            .set_len(0)
            .and_then(|()| (&self.lock).write_all(text.as_bytes()))
            .map_err(io_error(&path))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The data plane this directory belongs to.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Reads `name` as JSON; `None` if there is no such file.
    pub fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        let file = match open_trusted(&path, false) {
            Ok(f) => f,
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        if bytes.len() as u64 > MAX_STATE_FILE {
            return Err(StateError::Untrusted {
                path,
                why: format!("it is larger than {MAX_STATE_FILE} bytes"),
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Json { path, source })
    }

    /// Writes `value` as JSON to `name`, atomically (a new file renamed
    /// over the old one).
    pub fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.new"));
        let json = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
            path: path.clone(),
            source,
        })?;
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_error(&path))
    }

    /// Removes `name`, if it is there.
    pub fn remove(&self, name: &str) {
        let path = self.dir.join(name);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a state file");
            }
        }
    }

    /// A clean stop: removes the directory with everything in it, and the
    /// directories lbd created for it if they are empty now. The lock goes
    /// with the process.
    pub fn discard(self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove lbd's state directory");
        }
        remove_created_dirs(&self.created);
    }
}

/// Opens `path` for reading (and writing, creating it with mode 0600, if
/// `create`), without following a symlink, and refuses it unless it is a
/// regular file of ours that nobody else can write.
fn open_trusted(path: &Path, create: bool) -> Result<File, StateError> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    if create {
        opts.write(true).create(true).truncate(false).mode(0o600);
    }
    let file = opts.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            StateError::Untrusted {
                path: path.to_path_buf(),
                why: "it is a symbolic link".into(),
            }
        } else {
            io_error(path)(e)
        }
    })?;
    let meta = file.metadata().map_err(io_error(path))?;
    if let Some(why) = distrust(&meta, false) {
        return Err(StateError::Untrusted {
            path: path.to_path_buf(),
            why,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        dir
    }

    #[test]
    fn names_are_distinct_per_pin_path() {
        assert_eq!(dir_name(Path::new("/sys/fs/bpf/lb")), "dataplane-lb");
        assert_eq!(dir_name(Path::new("/sys/fs/bpf/a/b")), "dataplane-a%2Fb");
        assert_eq!(
            dir_name(Path::new("/sys/fs/bpf/a%2Fb")),
            "dataplane-a%252Fb"
        );
        assert_eq!(dir_name(Path::new("/sys/fs/bpf/a-b")), "dataplane-a%2Db");
    }

    #[test]
    fn one_holder_at_a_time_and_the_second_is_told_who() {
        let root = scratch("lock");
        let pin = Path::new("/sys/fs/bpf/x");
        let first = StateDir::lock(&root, pin).unwrap();
        first.claim(Path::new("/run/lb/one.sock")).unwrap();
        let meta = fs::metadata(first.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        match StateDir::lock(&root, pin).unwrap_err() {
            StateError::Busy { pid, socket, .. } => {
                assert_eq!(pid, std::process::id().to_string());
                assert_eq!(socket, "/run/lb/one.sock");
            }
            e => panic!("{e}"),
        }
        // Another data plane has its own lock.
        let other = StateDir::lock(&root, Path::new("/sys/fs/bpf/y")).unwrap();
        drop(first);
        let again = StateDir::lock(&root, pin).unwrap();
        again.discard();
        other.discard();
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        fs::remove_dir(&root).unwrap();
    }

    #[test]
    fn records_round_trip_and_planted_files_are_refused() {
        let root = scratch("files");
        let state = StateDir::lock(&root, Path::new("/sys/fs/bpf/z")).unwrap();
        assert_eq!(state.read::<Vec<u32>>("r.json").unwrap(), None);
        state.write("r.json", &vec![1u32, 2]).unwrap();
        assert_eq!(state.read::<Vec<u32>>("r.json").unwrap(), Some(vec![1, 2]));

        // A symlink in place of the file is not followed.
        let target = root.join("elsewhere");
        fs::write(&target, "[9]").unwrap();
        std::os::unix::fs::symlink(&target, state.path().join("s.json")).unwrap();
        let e = state.read::<Vec<u32>>("s.json").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");

        // A file writable by others is refused.
        let p = state.path().join("w.json");
        fs::write(&p, "[1]").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let e = state.read::<Vec<u32>>("w.json").unwrap_err().to_string();
        assert!(e.contains("writable by everybody"), "{e}");
        state.discard();
        let _ = fs::remove_file(&target);
        fs::remove_dir(&root).unwrap();
    }

    #[test]
    fn a_directory_writable_by_others_is_refused() {
        let root = scratch("perm");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).unwrap();
        let e = StateDir::lock(&root, Path::new("/sys/fs/bpf/q"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by everybody"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_socket_directory_others_can_write_is_refused() {
        let e = check_socket_dir(Path::new("/tmp/lbd.sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by everybody"), "{e}");
        let root = scratch("sock");
        check_socket_dir(&root.join("lbd.sock")).unwrap();
        // Not there yet: judged by where lbd would create it.
        check_socket_dir(&root.join("sub/dir/lbd.sock")).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_socket_dir(&root.join("sub/lbd.sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("writable by its group"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn created_directories_are_listed_and_removed_when_empty() {
        let root = scratch("mk");
        let deep = root.join("a/b/c");
        let created = create_dirs(&deep, 0o700).unwrap();
        assert_eq!(created, [root.join("a"), root.join("a/b"), deep.clone()]);
        assert!(create_dirs(&deep, 0o700).unwrap().is_empty());
        fs::write(root.join("a/keep"), "").unwrap();
        remove_created_dirs(&created);
        assert!(!root.join("a/b").exists());
        assert!(root.join("a/keep").exists(), "a non-empty directory stays");
        fs::remove_dir_all(&root).unwrap();
    }
}
