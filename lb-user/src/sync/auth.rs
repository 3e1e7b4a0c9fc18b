//! Optional authentication of the sync channel: HMAC-SHA256 with a key
//! shared by the pair, bound to each connection by both ends' challenges.
//!
//! **The key** is read from a file (`sync.key_file`) that must be a regular
//! file, not a symbolic link, owned by root, with no permission for group or
//! others (mode 0600 or 0400): anything else is refused with the reason, so
//! a key others could read, or a file others could have replaced, is never
//! used. The key is the file's bytes with leading and trailing ASCII
//! whitespace removed (so `openssl rand -hex 32 > key` works), at least
//! [`MIN_KEY_LEN`] and at most [`MAX_KEY_LEN`] bytes. Both hosts need the
//! same file.
//!
//! **Per connection**, each end sends a HELLO with a fresh 32-byte random
//! challenge (see [`super::wire`]). Both ends then derive one key per
//! direction:
//!
//! ```text
//! writer->reader key = HMAC-SHA256(key, "lb-sync 1 writer" || reader HELLO || writer HELLO)
//! reader->writer key = HMAC-SHA256(key, "lb-sync 1 reader" || reader HELLO || writer HELLO)
//! ```
//!
//! where each HELLO is its whole frame (64 bytes) as sent. Every later
//! frame carries `HMAC-SHA256(direction key, header || body)`, checked in
//! constant time. So a frame is accepted only if it was made with the key
//! (a wrong key or a changed byte fails), for this connection (a frame
//! captured from another connection was made under another challenge, and
//! fails), in this direction (a frame reflected back fails), at this place
//! in the stream (the header's sequence number is covered and must follow
//! on with no gap: a frame replayed, dropped or reordered within the
//! connection fails), and the HELLOs themselves were not altered (both are
//! in the derivation).
//!
//! The channel is not encrypted: flows are addresses and ports the pair's
//! network carries in clear anyway. What the key prevents is a host that
//! can reach the sync port, or sits on the path, writing flows into the
//! tables.

use std::{
    fs::OpenOptions,
    io::{self, Read},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::wire::{WireError, TAG_LEN};

type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;
/// The longest key accepted (bytes).
pub const MAX_KEY_LEN: usize = 1024;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("refusing the sync key file {}: {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("the sync key is {len} bytes; it must be {MIN_KEY_LEN} to {MAX_KEY_LEN} (e.g. `openssl rand -hex 32`)")]
    Length { len: usize },
}

/// The pair's shared key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// A key from its bytes (whitespace around them removed).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Key, KeyError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_KEY_LEN || trimmed.len() > MAX_KEY_LEN {
            return Err(KeyError::Length { len: trimmed.len() });
        }
        Ok(Key(trimmed.to_vec()))
    }

    /// Reads the key from `path`, refusing a file that is not a regular file
    /// owned by root with no permission for group or others, or that is a
    /// symbolic link.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let untrusted = |why: String| KeyError::Untrusted {
            path: path.to_path_buf(),
            why,
        };
        let file = OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO planted there must not hang lbd before
            // it is refused for not being a regular file.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    untrusted("it is a symbolic link".into())
                } else {
                    io_err(e)
                }
            })?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.file_type().is_file() {
            return Err(untrusted("it is not a regular file".into()));
        }
        if meta.uid() != 0 {
            return Err(untrusted(format!(
                "it is owned by uid {}, not by root",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(untrusted(format!(
                "its mode is {mode:04o}: group and others must have no access (chmod 600)"
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_LEN as u64 * 4 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        Key::from_bytes(bytes)
    }

    /// The two direction keys of a connection whose HELLO frames were
    /// `reader_hello` and `writer_hello`: (writer->reader, reader->writer).
    pub fn session(
        &self,
        reader_hello: &[u8],
        writer_hello: &[u8],
    ) -> (DirectionKey, DirectionKey) {
        let derive = |label: &[u8]| {
            let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
            mac.update(label);
            mac.update(reader_hello);
            mac.update(writer_hello);
            let k = mac.finalize().into_bytes();
            DirectionKey(HmacSha256::new_from_slice(&k).expect("HMAC takes any key length"))
        };
        (derive(b"lb-sync 1 writer"), derive(b"lb-sync 1 reader"))
    }
}

/// The key of one direction of one connection, ready to tag frames.
#[derive(Clone)]
pub struct DirectionKey(HmacSha256);

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKey")
    }
}

impl DirectionKey {
    /// The tag of `frame` (header and body).
    pub fn tag(&self, frame: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(frame);
        mac.finalize().into_bytes().into()
    }

    /// Checks `tag` against the header and body, in constant time.
    pub fn verify(&self, header: &[u8], body: &[u8], tag: &[u8]) -> Result<(), WireError> {
        let mut mac = self.0.clone();
        mac.update(header);
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| WireError::BadTag)
    }
}

/// `n` random bytes from the kernel (challenges, instance numbers).
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the kernel's random source");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::wire::{decode, encode, Message};
    use std::{fs, os::unix::fs::PermissionsExt};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-sync-key-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        dir
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_a_root_only_regular_file_is_a_key() {
        let dir = scratch("files");
        let good = dir.join("good");
        write(&good, "  00112233445566778899aabbccddeeff\n", 0o600);
        let key = Key::load(&good).unwrap();
        assert_eq!(key.0, b"00112233445566778899aabbccddeeff");
        write(&good, "00112233445566778899aabbccddeeff", 0o400);
        Key::load(&good).unwrap();

        let refused = |path: &Path| Key::load(path).unwrap_err().to_string();
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            write(&good, "00112233445566778899aabbccddeeff", mode);
            let e = refused(&good);
            assert!(
                e.contains("group and others must have no access"),
                "{mode:o}: {e}"
            );
        }
        write(&good, "00112233445566778899aabbccddeeff", 0o600);
        let link = dir.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(refused(&link).contains("symbolic link"));
        assert!(refused(&dir).contains("not a regular file"));
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(refused(&fifo).contains("not a regular file"));
        assert!(refused(&dir.join("missing")).contains("No such file"));
        let short = dir.join("short");
        write(&short, "tooshort\n", 0o600);
        assert!(refused(&short).contains("is 8 bytes"));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&good, Some(65534), None).unwrap();
            assert!(refused(&good).contains("owned by uid 65534, not by root"));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    fn key(text: &[u8]) -> Key {
        Key::from_bytes(text.to_vec()).unwrap()
    }

    #[test]
    fn tags_need_the_key_the_connection_and_the_direction() {
        let k = key(b"the right key, 32 bytes at least");
        let (w, r) = k.session(&[1; 64], &[2; 64]);
        let mut frame = Vec::new();
        encode(&Message::Keepalive, 1, Some(&w), &mut frame);
        assert!(decode(&frame, 1, Some(&w)).unwrap().is_some());
        // The other direction's key.
        assert_eq!(decode(&frame, 1, Some(&r)).unwrap_err(), WireError::BadTag);
        // The same connection under a wrong key.
        let (wrong, _) = key(b"the wrong key, 32 bytes at least").session(&[1; 64], &[2; 64]);
        assert_eq!(
            decode(&frame, 1, Some(&wrong)).unwrap_err(),
            WireError::BadTag
        );
        // The right key, another connection (another reader challenge).
        let (other, _) = k.session(&[3; 64], &[2; 64]);
        assert_eq!(
            decode(&frame, 1, Some(&other)).unwrap_err(),
            WireError::BadTag
        );
        // A changed writer HELLO changes the key too.
        let (other, _) = k.session(&[1; 64], &[4; 64]);
        assert_eq!(
            decode(&frame, 1, Some(&other)).unwrap_err(),
            WireError::BadTag
        );
        // Replayed within the connection: the sequence no longer follows.
        assert_eq!(
            decode(&frame, 2, Some(&w)).unwrap_err(),
            WireError::Sequence {
                expected: 2,
                got: 1
            }
        );
        // Tampered: every byte is covered.
        for i in 0..frame.len() {
            let mut t = frame.clone();
            t[i] ^= 0x40;
            assert!(decode(&t, 1, Some(&w)).is_err(), "byte {i}");
        }
    }

    #[test]
    fn random_bytes_differ() {
        assert_ne!(random::<32>(), random::<32>());
    }
}
