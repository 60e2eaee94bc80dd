//! `Postgres`: a throw-away PostgreSQL server with a `tollgate` database.
//!
//! PostgreSQL refuses to run as root, so `initdb` and `postgres` run as the
//! `postgres` system user: the child switches user itself (`setuid`/`setgid`
//! between fork and exec) rather than through `runuser`/`su`, which would
//! fork again. That keeps the postmaster our direct child, so signals,
//! `Drop` and the parent-death signal all reach it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::LeafCert;
use super::net::free_port;
use super::process::{log_file, read_log, run_command, ChildProcess, CommandOutput};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Set this to a PostgreSQL `bin` directory to override the search under
/// `/usr/lib/postgresql/*/bin`.
const BIN_DIR_ENV: &str = "TOLLGATE_TEST_PG_BIN";

/// The database created for tests.
pub const DATABASE: &str = "tollgate";

/// A PostgreSQL server on 127.0.0.1:<free port> (trust auth, user
/// `postgres`, fsync off) with a database named `tollgate`. Its data lives in
/// a temp dir that is removed, after an immediate shutdown, on drop.
pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    /// The postmaster; `None` while stopped.
    child: Option<ChildProcess>,
}

impl Postgres {
    /// Runs `initdb`, starts the server, waits until it accepts connections
    /// and creates the `tollgate` database.
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// Like [`start`](Self::start), but TLS only: `ssl = on` with `cert` as
    /// the server certificate, and TCP connections are accepted over TLS only
    /// (a `hostssl` line and no `host` line in pg_hba.conf), so a plain
    /// client is refused. The client programs (`psql`, ...) use TLS by
    /// default (`sslmode=prefer`), so every helper keeps working.
    pub async fn start_with_tls(cert: &LeafCert) -> Self {
        Self::start_inner(Some(cert)).await
    }

    async fn start_inner(tls: Option<&LeafCert>) -> Self {
        let bin = bin_dir();
        let (uid, gid) = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("tollgate-postgres-")
            .tempdir()
            .expect("cannot create the PostgreSQL temp dir");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .expect("cannot give the PostgreSQL temp dir to the postgres user");

        let mut postgres = Self {
            dir,
            bin,
            port: free_port(),
            uid,
            gid,
            child: None,
        };

        let mut initdb = postgres.command_as_postgres("initdb");
        initdb
            .arg("-D")
            .arg(postgres.data_dir())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"]);
        postgres.run_ok(initdb, Duration::from_secs(120)).await;
        if let Some(cert) = tls {
            postgres.require_tls(cert);
        }

        postgres.start_again().await;

        let mut createdb = Command::new(postgres.bin.join("createdb"));
        createdb.args(postgres.connection_args()).arg(DATABASE);
        postgres.run_ok(createdb, Duration::from_secs(30)).await;
        postgres
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/tollgate`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The postmaster's process id, or `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildProcess::pid)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Runs `sql` with `psql` in the `tollgate` database and returns its
    /// unaligned, tuples-only output (trimmed); panics if psql fails.
    pub async fn psql(&self, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(self.connection_args()).args([
            "-d",
            DATABASE,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        self.run_ok(cmd, Duration::from_secs(30))
            .await
            .stdout
            .trim()
            .to_string()
    }

    /// Stops the server with a fast shutdown (SIGINT): clients are
    /// disconnected, data is kept, the port is closed.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(libc::SIGINT, SHUTDOWN_TIMEOUT).await;
        }
    }

    /// Starts the server again on the same port and data directory (after
    /// [`stop`](Self::stop)) and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let mut cmd = self.command_as_postgres("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.dir.path().join("postgres.stderr.log")));
        let child = ChildProcess::spawn(&mut cmd, "postgres")
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.join("postgres").display()));
        self.child = Some(child);
        self.wait_until_ready().await;
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(ChildProcess::try_wait) {
                panic!(
                    "postgres exited during startup ({status}):\n{}{}",
                    self.log(),
                    read_log(&self.dir.path().join("postgres.stderr.log"))
                );
            }
            let mut isready = Command::new(self.bin.join("pg_isready"));
            isready
                .args(self.connection_args())
                .args(["-d", "postgres", "-t", "1"]);
            if let Ok(output) = run_command(isready, Duration::from_secs(5)).await {
                if output.status.success() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "postgres did not accept connections within {STARTUP_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Copies `cert` and its key into the data dir (owned by the postgres
    /// user; the key with mode 0600, as PostgreSQL insists), turns `ssl` on
    /// with them and replaces pg_hba.conf so TCP clients need TLS.
    fn require_tls(&self, cert: &LeafCert) {
        let data = self.data_dir();
        for (name, pem, mode) in [
            ("server.crt", &cert.cert_pem, 0o644),
            ("server.key", &cert.key_pem, 0o600),
        ] {
            let path = data.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .and_then(|mut f| f.write_all(pem.as_bytes()))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            std::os::unix::fs::chown(&path, Some(self.uid), Some(self.gid))
                .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
        }
        let conf = data.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| {
                f.write_all(
                    b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
                )
            })
            .unwrap_or_else(|e| panic!("cannot append to {}: {e}", conf.display()));
        let hba = data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", hba.display()));
    }

    /// `-h 127.0.0.1 -p <port> -U postgres`, for the client programs.
    fn connection_args(&self) -> Vec<String> {
        vec![
            "-h".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            self.port.to_string(),
            "-U".to_string(),
            "postgres".to_string(),
        ]
    }

    /// A command for `program` from the PostgreSQL bin dir that runs as the
    /// postgres user inside the temp dir.
    fn command_as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env("HOME", self.dir.path());
        cmd
    }

    /// Runs a short command and panics, with its output, unless it succeeds.
    async fn run_ok(&self, cmd: Command, timeout: Duration) -> CommandOutput {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let output: CommandOutput = run_command(cmd, timeout)
            .await
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
            .into();
        assert!(output.success(), "{program} failed:\n{output}");
        output
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the postmaster stops its backends and
            // releases shared memory; SIGKILL only if that hangs.
            child.stop_blocking(libc::SIGQUIT, SHUTDOWN_TIMEOUT);
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding a `postgres`
/// binary, unless overridden by `TOLLGATE_TEST_PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root).unwrap_or_else(|e| {
        panic!(
            "cannot list {} (is PostgreSQL installed?): {e}",
            root.display()
        )
    });
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| {
            panic!(
                "no {}/<version>/bin/postgres found; set {BIN_DIR_ENV}",
                root.display()
            )
        })
}

/// The uid and gid of the `postgres` system user, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("cannot read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() != Some(&"postgres") || fields.len() < 4 {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        })
        .expect("no `postgres` user in /etc/passwd (is PostgreSQL installed?)")
}
