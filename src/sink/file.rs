//! Files that appear only complete: written under a hidden temporary name in the destination
//! directory while a SHA-256 of the bytes is kept, flushed and synced, then published under
//! their final name without ever replacing an existing file.
//!
//! A temporary name is `.{final name}.{pid}-{random}.tidemark-tmp`: hidden, and ending in
//! neither `.csv`, `.jsonl`, `.parquet` nor `.manifest.json`, so no loader that globs a
//! directory for one of those (`read_csv('out/*.csv')`, Spark, a shell with dotglob) ever reads
//! a partial file, even one a killed process left behind.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The suffix of every temporary file tidemark writes.
pub const TMP_SUFFIX: &str = ".tidemark-tmp";

/// The prefix of the temporary files of tidemark versions before the names above
/// (`.tidemark-tmp-{pid}-{random}-{final name}`); they are still swept.
pub const LEGACY_TMP_PREFIX: &str = ".tidemark-tmp-";

/// The temporary name of a file to be called `name`, written by process `pid`.
pub fn tmp_name(name: &str, pid: u32, tag: u32) -> String {
    format!(".{name}.{pid}-{tag}{TMP_SUFFIX}")
}

/// True when `name` is the name of a temporary file of tidemark (of this or an older version).
pub fn is_temporary(name: &str) -> bool {
    (name.starts_with('.') && name.ends_with(TMP_SUFFIX)) || name.starts_with(LEGACY_TMP_PREFIX)
}

/// The process that writes (or wrote) the temporary file `name`; `None` when `name` is not a
/// temporary file name.
pub fn temporary_writer(name: &str) -> Option<u32> {
    let pid_text = if let Some(rest) = name.strip_prefix(LEGACY_TMP_PREFIX) {
        rest.split('-').next()
    } else {
        let rest = name.strip_prefix('.')?.strip_suffix(TMP_SUFFIX)?;
        let (_, tag) = rest.rsplit_once('.')?;
        tag.split('-').next()
    };
    pid_text?.parse().ok()
}

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
    /// The name it is published under; errors name it.
    dest: PathBuf,
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
        let tmp = dir.join(tmp_name(name, std::process::id(), rand::random::<u32>()));
        let dest = dir.join(name);
        let file = File::create_new(&tmp).map_err(|e| Error::write(&dest, e))?;
        Ok(AtomicFile {
            dest,
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

    /// The path it is to be published under.
    pub fn dest(&self) -> &Path {
        &self.dest
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
        let dest = &self.dest;
        let finished = out
            .into_inner()
            .map_err(|e| Error::write(dest, e.into_error()))
            .and_then(|inner| {
                inner.file.sync_all().map_err(|e| Error::write(dest, e))?;
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
        let dest = f.dest().to_path_buf();
        f.discard();
        return Err(Error::write(dest, e));
    }
    f.finish()
}

/// Gives `tmp` its final name `dest`; fails if `dest` exists (never replaces a file).
pub fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::hard_link(tmp, dest).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            Error::io("publish", dest, e)
        } else {
            Error::write(dest, e)
        }
    })?;
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

    #[test]
    fn temporary_names_match_no_output_pattern() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "full_c1_20261128T211900Z.csv",
            "full_c1_20261128T211900Z.csv.manifest.json",
            "delta_c1_t_20261128T211900Z_3.jsonl",
            "full_c1_20261128T211900Z.parquet",
        ] {
            let f = AtomicFile::create(dir.path(), name).unwrap();
            let tmp = file_name_of(f.tmp_path());
            assert!(tmp.starts_with('.'), "{tmp}");
            for ext in [".csv", ".jsonl", ".parquet", ".json", ".manifest.json"] {
                assert!(!tmp.ends_with(ext), "{tmp} ends with {ext}");
            }
            assert!(is_temporary(&tmp), "{tmp}");
            assert_eq!(temporary_writer(&tmp), Some(std::process::id()), "{tmp}");
            assert!(!is_temporary(name));
            assert_eq!(temporary_writer(name), None);
        }
        assert_eq!(
            temporary_writer(".tidemark-tmp-77-123-full_c1_x.csv"),
            Some(77)
        );
        assert_eq!(temporary_writer(".a.b.csv.12-34.tidemark-tmp"), Some(12));
        assert_eq!(temporary_writer(".x.tidemark-tmp"), None);
    }

    fn file_name_of(p: &Path) -> String {
        p.file_name().unwrap().to_string_lossy().into_owned()
    }
}
