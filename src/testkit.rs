//! Throwaway database servers for the integration tests and the benchmark: PostgreSQL (with
//! `wal_level=logical`) and MariaDB (with ROW binlog) started from the installed server binaries
//! in a temporary data directory on a free 127.0.0.1 port, as the unprivileged `postgres` user
//! when running as root. A watchdog process stops each server and removes its directory when the
//! process that started it exits, however it exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::db::{connect, ConnectOptions, DbUrl};
use crate::error::{Error, Result};

fn fail(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("test server: {what}: {detail}"))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| fail("find a free port", e))?
        .port())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| fail(what, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            what,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

/// Starts `sh -c script` in the background once this process has exited.
fn watchdog(script: &str) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; {script}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn wait_until(deadline: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

fn fresh_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    )
}

/// Creates a database with a new name through the server at `admin_url`; `url_of` gives the
/// new database's URL.
async fn fresh_database(admin_url: &str, url_of: impl Fn(&str) -> String) -> Result<DbUrl> {
    let name = fresh_name("t");
    let admin = connect(&DbUrl::parse(admin_url)?, ConnectOptions::default()).await?;
    admin
        .execute(&format!("CREATE DATABASE {name}"), &[])
        .await?;
    DbUrl::parse(&url_of(&name))
}

/// A PostgreSQL server of its own.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PgServer {
    /// The newest installed PostgreSQL's bin directory.
    pub fn bin_dir() -> Result<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| fail("find PostgreSQL (install the postgresql package)", e))?
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, b)| b).ok_or_else(|| {
            fail(
                "find PostgreSQL",
                "no initdb under /usr/lib/postgresql/*/bin",
            )
        })
    }

    /// Initializes and starts a server.
    pub fn start() -> Result<Self> {
        let bin = Self::bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("tidemark-pg.")
            .tempdir()
            .map_err(|e| fail("create data directory", e))?
            .keep();
        if is_root() {
            run(
                Command::new("chown").arg("-R").arg("postgres:").arg(&dir),
                "chown data directory",
            )?;
        }
        let mut server = PgServer { dir, bin, port: 0 };
        run(
            server
                .as_owner(&server.bin.join("initdb"))
                .arg("-D")
                .arg(server.dir.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
            "initdb",
        )?;
        watchdog(&format!(
            "{} ; rm -rf '{}'",
            server.stop_command(),
            server.dir.display()
        ));
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| fail("start PostgreSQL", "gave up")))
    }

    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn stop_command(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let prefix = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{prefix}{} -D '{}' -m immediate -w stop >/dev/null 2>&1",
            pg_ctl.display(),
            self.dir.join("data").display()
        )
    }

    /// Starts the (stopped) server again on its port.
    pub fn start_again(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
             -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off \
             -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        run(
            self.as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "30", "-o", &opts, "start"]),
            "start PostgreSQL",
        )
    }

    /// Stops the server at once (as a crash or an outage would).
    pub fn stop(&self) -> Result<()> {
        run(
            Command::new("sh").arg("-c").arg(self.stop_command()),
            "stop PostgreSQL",
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh empty database and returns its URL.
    pub async fn fresh_database(&self) -> Result<DbUrl> {
        fresh_database(&self.url("postgres"), |name| self.url(name)).await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB server of its own.
pub struct MariaDbServer {
    dir: PathBuf,
    port: u16,
    child: std::process::Child,
}

impl MariaDbServer {
    /// Initializes and starts a server.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-my.")
            .tempdir()
            .map_err(|e| fail("create data directory", e))?
            .keep();
        let data = dir.join("data");
        run(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ]),
            "mariadb-install-db (install the mariadb-server package)",
        )?;
        let port = free_port()?;
        let daemon = ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| fail("find mariadbd", "not in /usr/sbin"))?;
        let child = Command::new(daemon)
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            // Its own temporary directory: other programs may clean /tmp under it.
            .arg(format!("--tmpdir={}", dir.display()))
            .arg(format!("--log-bin={}", data.join("binlog").display()))
            .args([
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--server-id=1",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--skip-name-resolve",
                "--max-connections=300",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail("start mariadbd", e))?;
        watchdog(&format!(
            "kill -9 {} 2>/dev/null; sleep 0.5; rm -rf '{}'",
            child.id(),
            dir.display()
        ));
        let server = MariaDbServer { dir, port, child };
        let sock = server.dir.join("sock");
        let up = wait_until(Duration::from_secs(60), || {
            sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let log = std::fs::read_to_string(server.dir.join("err.log")).unwrap_or_default();
            return Err(fail("MariaDB did not start", log));
        }
        Ok(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh empty database and returns its URL.
    pub async fn fresh_database(&self) -> Result<DbUrl> {
        fresh_database(&self.url("mysql"), |name| self.url(name)).await
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh SQLite database file in a temporary directory that lives as long as the value.
pub struct SqliteFile {
    pub dir: tempfile::TempDir,
    pub url: DbUrl,
}

impl SqliteFile {
    /// Creates the directory; the file is created by the first connection that asks for it.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| fail("create temporary directory", e))?;
        let url = DbUrl::parse(&format!(
            "sqlite://{}",
            dir.path().join("test.db").display()
        ))?;
        Ok(SqliteFile { dir, url })
    }
}
