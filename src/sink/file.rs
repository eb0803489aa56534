//! Files that appear only complete: written under a hidden temporary name in the destination
//! directory while a SHA-256 of the bytes is kept, flushed and synced, then published under
//! their final name without ever replacing an existing file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The prefix of every temporary file tidemark writes.
pub const TMP_PREFIX: &str = ".tidemark-tmp-";

struct Hashing {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A file being written aside. Dropped before [`AtomicFile::finish`] (an error, or an export
/// abandoned at shutdown), it removes its temporary file.
pub struct AtomicFile {
    tmp: PathBuf,
    out: Option<BufWriter<Hashing>>,
}

/// A finished temporary file, synced to disk but not yet published.
#[derive(Debug, Clone)]
pub struct Written {
    pub tmp: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

impl AtomicFile {
    /// Starts a temporary file in `dir` for a file to be called `name`.
    pub fn create(dir: &Path, name: &str) -> Result<Self> {
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}-{name}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = File::create_new(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        Ok(AtomicFile {
            out: Some(BufWriter::with_capacity(
                256 * 1024,
                Hashing {
                    file,
                    hasher: Sha256::new(),
                    bytes: 0,
                },
            )),
            tmp,
        })
    }

    /// The temporary path.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes and syncs the file; it stays under its temporary name.
    pub fn finish(mut self) -> Result<Written> {
        let tmp = self.tmp.clone();
        let Some(out) = self.out.take() else {
            return Err(Error::Runtime(format!(
                "{} was already finished",
                tmp.display()
            )));
        };
        let finished = out
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))
            .and_then(|inner| {
                inner
                    .file
                    .sync_all()
                    .map_err(|e| Error::io("sync", &tmp, e))?;
                Ok(inner)
            });
        let inner = match finished {
            Ok(inner) => inner,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        Ok(Written {
            tmp,
            sha256: hex::encode(inner.hasher.finalize()),
            bytes: inner.bytes,
        })
    }

    /// Removes the temporary file (after a failure).
    pub fn discard(self) {
        drop(self)
    }

    fn out(&mut self) -> io::Result<&mut BufWriter<Hashing>> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("file already finished"))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            drop(out.into_parts());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

/// Writes `bytes` to `dir/name` atomically (small files such as manifests); returns the
/// temporary file, not yet published.
pub fn write_aside(dir: &Path, name: &str, bytes: &[u8]) -> Result<Written> {
    let mut f = AtomicFile::create(dir, name)?;
    if let Err(e) = f.write_all(bytes) {
        let tmp = f.tmp_path().to_path_buf();
        f.discard();
        return Err(Error::io("write", tmp, e));
    }
    f.finish()
}

/// Gives `tmp` its final name `dest`; fails if `dest` exists (never replaces a file).
pub fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::hard_link(tmp, dest).map_err(|e| Error::io("publish", dest, e))?;
    std::fs::remove_file(tmp).map_err(|e| Error::io("remove", tmp, e))?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Syncs a directory so that renames in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("sync directory", d, e))
}

/// `dir/stem.ext`, or `dir/stem_N.ext` with the smallest N ≥ 1 whose name (and whose
/// `.manifest.json` companion) is free.
pub fn free_name(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let taken = |p: &Path| {
        p.exists() || {
            let mut m = p.as_os_str().to_owned();
            m.push(".manifest.json");
            Path::new(&m).exists()
        }
    };
    let first = dir.join(format!("{stem}.{ext}"));
    if !taken(&first) {
        return first;
    }
    (1u32..)
        .map(|n| dir.join(format!("{stem}_{n}.{ext}")))
        .find(|p| !taken(p))
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_aside_then_published_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(dir.path(), "a.csv").unwrap();
        f.write_all(b"hello").unwrap();
        let w = f.finish().unwrap();
        assert_eq!(w.bytes, 5);
        assert_eq!(
            w.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let dest = dir.path().join("a.csv");
        assert!(!dest.exists());
        publish(&w.tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(!w.tmp.exists());
        let again = write_aside(dir.path(), "a.csv", b"other").unwrap();
        assert!(
            publish(&again.tmp, &dest).is_err(),
            "must not replace a file"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert_eq!(
            free_name(dir.path(), "a", "csv"),
            dir.path().join("a_1.csv")
        );
    }
}
