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
    /// Further `-c name=value` server options (TLS).
    extra: String,
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
        Self::start_with(None)
    }

    /// Initializes and starts a server that speaks TLS only, with the certificate `ca` made
    /// for 127.0.0.1 and localhost: `hostssl` lines alone in pg_hba.conf, so a connection
    /// without TLS is refused. Every user is trusted except [`PgServer::PASSWORD_USER`], who
    /// must give a password (SCRAM); the tests create that role.
    pub fn start_tls(ca: &TestCa) -> Result<Self> {
        Self::start_with(Some(ca))
    }

    /// The role that must authenticate with a password on a [`PgServer::start_tls`] server.
    pub const PASSWORD_USER: &'static str = "tidemark_pw";

    fn start_with(tls: Option<&TestCa>) -> Result<Self> {
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
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            extra: String::new(),
        };
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
        if let Some(ca) = tls {
            server.enable_tls(ca)?;
        }
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

    /// Copies the server certificate and key into the data directory (the key 0600, owned by
    /// the server's user, as PostgreSQL demands), turns `ssl` on and allows TLS connections only.
    fn enable_tls(&mut self, ca: &TestCa) -> Result<()> {
        let data = self.dir.join("data");
        let cert = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::copy(&ca.server_cert, &cert).map_err(|e| fail("copy server certificate", e))?;
        std::fs::copy(&ca.server_key, &key).map_err(|e| fail("copy server key", e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail("chmod server key", e))?;
        }
        if is_root() {
            run(
                Command::new("chown").arg("postgres:").arg(&cert).arg(&key),
                "chown server certificate",
            )?;
        }
        let hba = format!(
            "local all all trust\n\
             hostssl all {user} 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n",
            user = Self::PASSWORD_USER
        );
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| fail("write pg_hba.conf", e))?;
        self.extra = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        Ok(())
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
             -c full_page_writes=off -c max_connections=200{}",
            self.port,
            self.dir.display(),
            self.extra
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
        Self::start_with(None)
    }

    /// Initializes and starts a server with the certificate `ca` made for 127.0.0.1 and
    /// localhost that refuses TCP connections without TLS (`--require-secure-transport=ON`).
    pub fn start_tls(ca: &TestCa) -> Result<Self> {
        Self::start_with(Some(ca))
    }

    fn start_with(tls: Option<&TestCa>) -> Result<Self> {
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
        let mut tls_args = Vec::new();
        if let Some(ca) = tls {
            tls_args.push(format!("--ssl-cert={}", ca.server_cert.display()));
            tls_args.push(format!("--ssl-key={}", ca.server_key.display()));
            tls_args.push(format!("--ssl-ca={}", ca.ca_cert.display()));
            tls_args.push("--require-secure-transport=ON".to_string());
        }
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
            .args(&tls_args)
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

/// A certificate authority of its own and a server certificate it signed for `127.0.0.1` and
/// `localhost`, made with `openssl` (Debian package `openssl`) in a temporary directory that
/// lives as long as the value.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA's certificate (PEM): what a client names in `sslrootcert`/`ssl-ca`.
    pub ca_cert: PathBuf,
    /// The server's certificate (PEM), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub server_key: PathBuf,
}

impl TestCa {
    /// Makes a new CA (P-256 keys, valid for two days) and a server certificate.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-ca.")
            .tempdir()
            .map_err(|e| fail("create CA directory", e))?;
        // World-readable, so that a server running as another user can read what it needs.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| fail("chmod CA directory", e))?;
        }
        let p = |name: &str| dir.path().join(name);
        let write = |name: &str, text: &str| {
            std::fs::write(p(name), text).map_err(|e| fail("write openssl config", e))
        };
        // A name of its own: another TestCa is another issuer, not a forgery of this one.
        write(
            "ca.cnf",
            &format!(
                "[req]\ndistinguished_name=dn\nx509_extensions=v3_ca\nprompt=no\n\
             [dn]\nCN=tidemark test CA {}\n\
             [v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\n",
                rand::random::<u32>()
            ),
        )?;
        write(
            "server.ext",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )?;
        let openssl = |args: &[&str], what: &str| {
            run(
                Command::new("openssl").current_dir(dir.path()).args(args),
                &format!("openssl {what} (install the openssl package)"),
            )
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509", "-config", "ca.cnf", "-days", "2"];
        ca_args.extend(ec);
        ca_args.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(&ca_args, "make CA")?;
        let mut csr_args = vec!["req", "-new", "-subj", "/CN=localhost"];
        csr_args.extend(ec);
        csr_args.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&csr_args, "make server key")?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
            "sign server certificate",
        )?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p("server.key"), std::fs::Permissions::from_mode(0o644))
                .map_err(|e| fail("chmod server key", e))?;
        }
        Ok(TestCa {
            ca_cert: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            dir,
        })
    }
}

/// A NATS server with JetStream of its own (`nats-server -js`, Debian package `nats-server`),
/// its store in a throwaway directory; stopped and removed when dropped or, by a watchdog,
/// when the process that started it exits however it exits.
pub struct NatsServer {
    dir: PathBuf,
    port: u16,
    child: std::process::Child,
}

fn nats_bin() -> Result<&'static str> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| fail("find nats-server", "install the nats-server package"))
}

/// Starts nats-server with JetStream on `port`, its store under `dir`, watched.
fn spawn_nats(dir: &Path, port: u16) -> Result<std::process::Child> {
    let child = Command::new(nats_bin()?)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("js"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail("start nats-server", e))?;
    watchdog(&format!(
        "kill -9 {} 2>/dev/null; sleep 0.5; rm -rf '{}'",
        child.id(),
        dir.display()
    ));
    if !wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        return Err(fail("nats-server did not start", port));
    }
    Ok(child)
}

impl NatsServer {
    /// Starts a server on a free 127.0.0.1 port and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-nats.")
            .tempdir()
            .map_err(|e| fail("create store directory", e))?
            .keep();
        let port = free_port()?;
        let child = spawn_nats(&dir, port)?;
        let server = NatsServer { dir, port, child };
        Ok(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (as a crash would), keeping its store.
    pub fn stop(&mut self) -> Result<()> {
        self.child.kill().map_err(|e| fail("stop nats-server", e))?;
        self.child.wait().map_err(|e| fail("stop nats-server", e))?;
        Ok(())
    }

    /// Starts the stopped server again on the same port and store.
    pub fn start_again(&mut self) -> Result<()> {
        self.child = spawn_nats(&self.dir, self.port)?;
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`, with `/STREAM` when `stream` is given.
    pub fn url(&self, stream: Option<&str>) -> String {
        match stream {
            Some(s) => format!("nats://127.0.0.1:{}/{s}", self.port),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
