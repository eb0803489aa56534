//! Write failures as users meet them: a full disk and an output directory that cannot be
//! written, through `tidemark export` and through `tidemark serve` jobs, on every database.
//! Each must end promptly with exit 1 (a failed job), an error naming the file, no file and no
//! temporary file left, the watermark where it was, and the next export into a good directory
//! must deliver everything. And a `kill -9` in the middle of a large export never leaves a file
//! that a loader's `*.csv` glob would read.
//!
//! The output directory is a small tmpfs the test mounts (the tests run as root). Without the
//! right to mount, a full disk is a file size limit (`RLIMIT_FSIZE`) of the process under test
//! and an unwritable directory is one without write permission (which only binds non-root
//! users); a case that cannot be made is skipped with a printed reason.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{all_files, tidemark_cmd, TestDb, MARGIN};
use serde_json::Value;
use tidemark::db::DbKind;
use tidemark::export::{manifest, replay};
use tidemark::ident::{ConsumerId, Ident};
use tidemark::seed::{apply_burst, Burst};
use tidemark::state::Position;

/// Rows in the table: a full export is ~2.7 MB, far more than the room left on a full disk.
const ROWS: u64 = 30_000;
/// Free bytes left on a "full" disk, and the file size limit without tmpfs.
const ROOM: u64 = 64 * 1024;
/// How long a failing export may take.
const PROMPT: Duration = Duration::from_secs(15);

/// The output directory of a test, on a tmpfs of its own when mounting is permitted.
struct Disk {
    root: tempfile::TempDir,
    /// The output directory (inside the mount).
    out: PathBuf,
    tmpfs: bool,
    /// Full: a filler file (tmpfs) or a file size limit for the processes started now.
    full: bool,
}

impl Disk {
    fn new(size: &str) -> Disk {
        let root = tempfile::tempdir().expect("temp dir");
        // TIDEMARK_TEST_NO_TMPFS=1 tries the fallback where mounting works.
        let mounted = if std::env::var_os("TIDEMARK_TEST_NO_TMPFS").is_some() {
            Command::new("false").output()
        } else {
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(root.path())
                .output()
        };
        let tmpfs = match mounted {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!(
                    "cannot mount a tmpfs ({}); using a file size limit and permissions",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                false
            }
            Err(e) => {
                eprintln!("cannot run mount ({e}); using a file size limit and permissions");
                false
            }
        };
        let out = root.path().join("out");
        std::fs::create_dir(&out).expect("out dir");
        Disk {
            root,
            out,
            tmpfs,
            full: false,
        }
    }

    fn out(&self) -> &str {
        self.out.to_str().expect("UTF-8 path")
    }

    fn filler(&self) -> PathBuf {
        self.root.path().join("filler")
    }

    /// Leaves only [`ROOM`] bytes free (tmpfs), or limits the size of files the processes
    /// started from now on may write.
    fn fill(&mut self) {
        self.full = true;
        if !self.tmpfs {
            return;
        }
        // SAFETY: statvfs on a NUL-terminated path into a zeroed struct.
        let free = unsafe {
            let path = std::ffi::CString::new(self.root.path().to_str().unwrap()).unwrap();
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0, "statvfs");
            st.f_bavail as u64 * st.f_frsize as u64
        };
        let filler = std::fs::File::create(self.filler()).expect("filler");
        let mut left = free.saturating_sub(ROOM);
        let block = vec![0u8; 1 << 20];
        use std::io::Write;
        let mut w = std::io::BufWriter::new(filler);
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            w.write_all(&block[..n]).expect("fill the disk");
            left -= n as u64;
        }
        w.flush().expect("fill the disk");
    }

    fn unfill(&mut self) {
        self.full = false;
        let _ = std::fs::remove_file(self.filler());
    }

    /// Makes the output directory unwritable (or writable again); false when this cannot be
    /// done here (root without the right to mount).
    fn read_only(&self, ro: bool) -> bool {
        if self.tmpfs {
            let opt = if ro { "remount,ro" } else { "remount,rw" };
            let o = Command::new("mount")
                .args(["-o", opt])
                .arg(self.root.path())
                .output()
                .expect("mount");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            return true;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return false;
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = if ro { 0o555 } else { 0o755 };
        std::fs::set_permissions(&self.out, std::fs::Permissions::from_mode(mode)).unwrap();
        true
    }

    /// `cmd` as the disk's state requires: under a file size limit when full without tmpfs.
    fn prepare(&self, cmd: &mut Command) {
        if self.full && !self.tmpfs {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    // A write past the limit then fails with EFBIG instead of killing.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: ROOM,
                        rlim_max: ROOM,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }

    /// The words a full disk is reported with.
    fn full_words(&self) -> &'static str {
        if self.tmpfs {
            "no space left on device writing"
        } else {
            "file size limit exceeded writing"
        }
    }

    fn files(&self) -> Vec<String> {
        all_files(&self.out)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.tmpfs {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.root.path())
                .output();
        } else {
            self.read_only(false);
        }
    }
}

/// Runs `tidemark export` of `consumer` into the disk; fails the test if it does not end
/// within [`PROMPT`] (the SQLite export into a full disk used to hang forever).
fn export(t: &TestDb, disk: &Disk, consumer: &str, mode: &str) -> (Output, Duration) {
    let mut cmd = tidemark_cmd(&[
        "export",
        "--consumer",
        consumer,
        "--mode",
        mode,
        "--out",
        disk.out(),
        "--margin-ms",
        &MARGIN.as_millis().to_string(),
        "--source",
        t.url.as_str(),
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    disk.prepare(&mut cmd);
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("run tidemark");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if t0.elapsed() > PROMPT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {mode} export did not end within {PROMPT:?}", t.kind);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (out, t0.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn watermark(t: &TestDb, consumer: &str) -> Option<Position> {
    t.state()
        .await
        .watermark(&ConsumerId::new(consumer).unwrap(), &users())
        .await
        .expect("watermark")
        .map(|w| w.position)
}

fn users() -> tidemark::ident::TableName {
    tidemark::ident::TableName::parse("users").unwrap()
}

/// Changes of an application, old enough to be past any capture bound when the exports that
/// must carry them run: this test is about write failures, not about read-your-writes.
async fn changes(t: &TestDb, seed: u64) {
    apply_burst(
        t.db.as_ref(),
        &Burst {
            inserts: 20,
            updates: 50,
            soft_deletes: 10,
            seed,
        },
    )
    .await
    .expect("changes");
}

/// The manifests of `dir` verify and replaying `consumer`'s files gives the live table.
async fn assert_replay_equals_table(t: &TestDb, dir: &Path, consumer: &str) {
    let report = manifest::verify(dir).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let key = [Ident::new("id").unwrap()];
    let replayed =
        replay::replay(dir, &ConsumerId::new(consumer).unwrap(), &users(), &key).expect("replay");
    let live = replay::table_image(t.db.as_ref(), &t.state().await, &users())
        .await
        .expect("table image");
    let diff = replay::differences(&live, &replayed, 10);
    assert!(diff.is_empty(), "{} replay differs: {diff:#?}", t.kind);
    assert!(!live.rows.is_empty());
}

/// Asserts a failed CLI export: exit 1 promptly, one line naming the file with `words`, the
/// directory as it was, the watermark unmoved.
async fn assert_failed(
    t: &TestDb,
    disk: &Disk,
    (out, took): (Output, Duration),
    words: &str,
    files: &[String],
    mark: &Option<Position>,
) {
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}: {err}", t.kind);
    assert!(took < PROMPT, "{}: took {took:?}", t.kind);
    assert!(
        err.contains(words),
        "{}: expected {words:?} in {err}",
        t.kind
    );
    assert!(
        err.contains(disk.out()),
        "{}: no file named in {err}",
        t.kind
    );
    assert!(err.trim().lines().count() <= 2, "not one clear line: {err}");
    assert_eq!(disk.files(), files, "{}: files left behind", t.kind);
    assert_eq!(
        &watermark(t, "c1").await,
        mark,
        "{}: watermark moved",
        t.kind
    );
}

async fn cli_write_failures(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users(ROWS).await;
    let mut disk = Disk::new("32m");
    let ok = export(&t, &disk, "c1", "full").0;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let files = disk.files();
    assert_eq!(files.len(), 2, "{files:?}");
    let mark = watermark(&t, "c1").await;
    assert!(mark.is_some());
    changes(&t, 1).await;

    // A full disk: the full export needs ~2.7 MB and has 64 KB.
    disk.fill();
    let failed = export(&t, &disk, "c1", "full");
    let want = format!("{} {}/full_c1_", disk.full_words(), disk.out());
    assert_failed(&t, &disk, failed, &want, &files, &mark).await;
    disk.unfill();

    // An output directory that cannot be written.
    if disk.read_only(true) {
        let failed = export(&t, &disk, "c1", "delta");
        let words = if disk.tmpfs {
            "read-only file system"
        } else {
            "permission denied"
        };
        assert_failed(&t, &disk, failed, words, &files, &mark).await;
        disk.read_only(false);
    } else {
        eprintln!("skipped the unwritable directory: root cannot be kept out without a mount");
    }

    // The same directory, writable again: the next export delivers everything.
    let next = export(&t, &disk, "c1", "delta").0;
    assert!(next.status.success(), "{}", stderr(&next));
    assert_ne!(watermark(&t, "c1").await, mark);
    assert_replay_equals_table(&t, &disk.out, "c1").await;
}
on_each_db!(cli_write_failures);

/// A running `tidemark serve` on the disk; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(t: &TestDb, disk: &Disk) -> Server {
        let mut cmd = tidemark_cmd(&["--source", t.url.as_str(), "serve", "--listen"]);
        cmd.arg("127.0.0.1:0")
            .args(["--out", disk.out()])
            .args(["--margin-ms", &MARGIN.as_millis().to_string()])
            .stderr(Stdio::null());
        disk.prepare(&mut cmd);
        let (child, base) = common::spawn_serve(&mut cmd, None);
        Server { child, base }
    }

    /// Starts an export job and waits for its end; returns its record and how long it took.
    async fn job(&self, mode: &str, consumer: &str) -> (Value, Duration) {
        let c = reqwest::Client::new();
        let t0 = Instant::now();
        let started: Value = c
            .post(format!("{}/exports/{mode}", self.base))
            .header("X-Consumer-ID", consumer)
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("JSON");
        let id = started["jobId"].as_str().expect("jobId").to_string();
        loop {
            let job: Value = c
                .get(format!("{}/exports/{id}", self.base))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("JSON");
            if matches!(job["status"].as_str(), Some("completed" | "failed")) {
                return (job, t0.elapsed());
            }
            assert!(t0.elapsed() < PROMPT, "job never ended: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        common::kill_and_wait(&mut self.child);
    }
}

async fn assert_job_failed(
    t: &TestDb,
    disk: &Disk,
    (job, took): (Value, Duration),
    words: &str,
    files: &[String],
    mark: &Option<Position>,
) {
    assert_eq!(job["status"], "failed", "{}: {job}", t.kind);
    assert!(took < PROMPT, "{}: took {took:?}", t.kind);
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(words),
        "{}: expected {words:?}: {job}",
        t.kind
    );
    assert!(
        error.contains(disk.out()),
        "{}: no file named: {job}",
        t.kind
    );
    assert_eq!(disk.files(), files, "{}: files left behind", t.kind);
    assert_eq!(
        &watermark(t, "c1").await,
        mark,
        "{}: watermark moved",
        t.kind
    );
}

async fn serve_write_failures(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users(ROWS).await;
    let mut disk = Disk::new("32m");
    let first = Server::start(&t, &disk).job("full", "c1").await.0;
    assert_eq!(first["status"], "completed", "{first}");
    let files = disk.files();
    let mark = watermark(&t, "c1").await;
    assert!(mark.is_some());
    changes(&t, 2).await;

    if disk.tmpfs || kind != DbKind::Sqlite {
        disk.fill();
        let server = Server::start(&t, &disk);
        let failed = server.job("full", "c1").await;
        let want = format!("{} {}/full_c1_", disk.full_words(), disk.out());
        assert_job_failed(&t, &disk, failed, &want, &files, &mark).await;
        drop(server);
        disk.unfill();
    } else {
        // The limit would bind the server's writes to the (larger) database file as well.
        eprintln!("skipped the full disk of serve on SQLite: a file size limit needs a tmpfs");
    }

    let server = Server::start(&t, &disk);
    if disk.read_only(true) {
        let failed = server.job("delta", "c1").await;
        let words = if disk.tmpfs {
            "read-only file system"
        } else {
            "permission denied"
        };
        assert_job_failed(&t, &disk, failed, words, &files, &mark).await;
        disk.read_only(false);
    } else {
        eprintln!("skipped the unwritable directory: root cannot be kept out without a mount");
    }

    // The same server and directory, writable again: the next job delivers everything.
    let next = server.job("delta", "c1").await.0;
    assert_eq!(next["status"], "completed", "{next}");
    assert_ne!(watermark(&t, "c1").await, mark);
    assert_replay_equals_table(&t, &disk.out, "c1").await;
}
on_each_db!(serve_write_failures);

/// The names in `dir` that the shell glob `pattern` (one `*`, dotglob on) matches.
fn glob(dir: &Path, pattern: &str) -> Vec<String> {
    let (head, tail) = pattern.split_once('*').expect("one *");
    all_files(dir)
        .into_iter()
        .filter(|n| n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail))
        .collect()
}

/// `kill -9` while a large full export writes: a loader globbing the directory for `*.csv`
/// (or any output pattern) finds only complete, published exports; the next export removes
/// the dead process's temporary file and delivers everything.
async fn killed_export_leaves_nothing_a_loader_reads(kind: DbKind) {
    let t = TestDb::new(kind).await;
    t.users(40_000).await;
    let out = t.out.path().to_path_buf();
    let run = |mode: &str| {
        tidemark_cmd(&["export", "--consumer", "c1", "--mode", mode, "--out"])
            .arg(&out)
            .args(["--margin-ms", &MARGIN.as_millis().to_string()])
            .args(["--source", t.url.as_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tidemark")
    };
    let first = run("full").wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let published = glob(&out, "*.csv");
    assert_eq!(published.len(), 1, "{published:?}");
    changes(&t, 3).await;

    // Kill the next full export once its file holds 256 KB (of ~3.5 MB).
    let mut child = run("full");
    let deadline = Instant::now() + PROMPT;
    let partial = loop {
        let growing = std::fs::read_dir(&out).unwrap().flatten().find(|e| {
            tidemark::sink::file::is_temporary(&e.file_name().to_string_lossy())
                && e.metadata().is_ok_and(|m| m.len() >= 256 << 10)
        });
        if let Some(e) = growing {
            break e.file_name().to_string_lossy().into_owned();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{kind}: the export ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "{kind}: no export streaming");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        all_files(&out).contains(&partial),
        "{kind}: the partial file should still be there"
    );
    for pattern in ["*.csv", "*.jsonl", "*.parquet", "*.json", "*.manifest.json"] {
        let matched = glob(&out, pattern);
        assert!(
            !matched.contains(&partial),
            "{kind}: {pattern} matches the partial {partial}"
        );
    }
    assert_eq!(
        glob(&out, "*.csv"),
        published,
        "{kind}: only complete exports"
    );
    let report = manifest::verify(&out).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let next = run("delta").wait_with_output().unwrap();
    assert!(next.status.success(), "{}", stderr(&next));
    assert!(
        !all_files(&out)
            .iter()
            .any(|f| tidemark::sink::file::is_temporary(f)),
        "{kind}: temporary file not swept: {:?}",
        all_files(&out)
    );
    assert_replay_equals_table(&t, &out, "c1").await;
}
on_each_db!(killed_export_leaves_nothing_a_loader_reads);
