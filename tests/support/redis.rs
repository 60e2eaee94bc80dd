//! `RedisServer` and `RedisCluster`: real `redis-server` processes on free
//! ports, plus a tiny RESP client so tests can inspect them without a Redis
//! crate.

use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::net::{free_port, localhost, POLL_INTERVAL};
use super::process::{log_file, read_log, run_command, ChildProcess, CommandOutput};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Time limit for one RESP command (connect, send, read the reply).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// `cluster-node-timeout` of cluster nodes: short, so tests that kill a node
/// see the cluster react within a few seconds.
const CLUSTER_NODE_TIMEOUT_MS: u32 = 3000;

/// A `redis-server` on 127.0.0.1:<free port>, without persistence, in its
/// own temp dir. Killed (SIGKILL) when dropped.
pub struct RedisServer {
    dir: TempDir,
    port: u16,
    /// Arguments beyond the common ones (cluster settings).
    extra_args: Vec<String>,
    /// `None` while killed.
    child: Option<ChildProcess>,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers `PING`.
    pub async fn start() -> Self {
        Self::start_with_args(Vec::new()).await
    }

    async fn start_with_args(extra_args: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-redis-")
            .tempdir()
            .expect("cannot create the Redis temp dir");
        let mut server = Self {
            dir,
            port: free_port(),
            extra_args,
            child: None,
        };
        server.start_again().await;
        server
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, or `None` while killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildProcess::pid)
    }

    /// The server's log so far (its stdout).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Kills the server with SIGKILL, as in a crash. Its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill))
    /// and waits until it answers `PING`.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let dir = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--logfile", ""])
            .arg("--dir")
            .arg(dir)
            .args(&self.extra_args)
            .current_dir(dir)
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&dir.join("redis.stderr.log")));
        let child = ChildProcess::spawn(&mut cmd, "redis-server")
            .unwrap_or_else(|e| panic!("cannot run redis-server (is it installed?): {e}"));
        self.child = Some(child);
        self.wait_until_ready().await;
    }

    /// Kills the server and starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(ChildProcess::try_wait) {
                panic!(
                    "redis-server on port {} exited during startup ({status}):\n{}",
                    self.port,
                    self.log()
                );
            }
            if let Ok(Resp::Simple(pong)) = self.try_command(&["PING"]).await {
                if pong == "PONG" {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {STARTUP_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends one command and returns the reply; panics on connection errors.
    /// A Redis error reply is returned as [`Resp::Error`], not a panic.
    pub async fn command(&self, args: &[&str]) -> Resp {
        self.try_command(args)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?} on port {} failed: {e}", self.port))
    }

    /// Like [`command`](Self::command) but returns connection errors.
    pub async fn try_command(&self, args: &[&str]) -> io::Result<Resp> {
        redis_command(localhost(self.port), args).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` masters (no
/// replicas), each a [`RedisServer`] with its own port, bus port and dir.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3), joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    pub async fn start(masters: usize) -> Self {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let args = vec![
                "--cluster-enabled".to_string(),
                "yes".to_string(),
                "--cluster-config-file".to_string(),
                "nodes.conf".to_string(),
                "--cluster-node-timeout".to_string(),
                CLUSTER_NODE_TIMEOUT_MS.to_string(),
                // An explicit bus port: the default (port + 10000) may not
                // be free, or may not even exist for ports above 55535.
                "--cluster-port".to_string(),
                free_port().to_string(),
            ];
            nodes.push(RedisServer::start_with_args(args).await);
        }
        let cluster = Self { nodes };

        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        cmd.args(cluster.addresses());
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let output: CommandOutput = run_command(cmd, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"))
            .into();
        assert!(
            output.success(),
            "redis-cli --cluster create failed:\n{output}"
        );

        cluster.wait_until_ok(STARTUP_TIMEOUT).await;
        cluster
    }

    /// Polls `CLUSTER INFO` on every running node until each reports
    /// `cluster_state:ok`; panics after `timeout`.
    pub async fn wait_until_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
            loop {
                let info = node.try_command(&["CLUSTER", "INFO"]).await;
                let ok = matches!(&info, Ok(Resp::Bulk(Some(text))) if text.contains("cluster_state:ok"));
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "Redis Cluster node {} not ok within {timeout:?}: {info:?}\n{}",
                        node.address(),
                        node.log()
                    );
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }

    /// The nodes, in the order given to `redis-cli --cluster create`.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, e.g. to [`kill`](RedisServer::kill) or restart it.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// `127.0.0.1:<port>` of every node.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::address).collect()
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A reply in the Redis protocol (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5 hello`; `None` is the nil bulk string.
    Bulk(Option<String>),
    /// `*2 ...`; `None` is the nil array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a simple or bulk string reply.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

/// Sends one command to the Redis server at `addr` on a new connection and
/// reads one reply.
pub async fn redis_command(addr: SocketAddr, args: &[&str]) -> io::Result<Resp> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).await?;
        read_reply(&mut BufReader::new(stream)).await
    };
    tokio::time::timeout(COMMAND_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply from {addr} within {COMMAND_TIMEOUT:?}"),
            ))
        })
}

async fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad RESP line {line:?}"),
        )
    };
    let (kind, rest) = line.split_at_checked(1).ok_or_else(invalid)?;
    let number = || rest.parse::<i64>().map_err(|_| invalid());
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2]; // payload and CRLF
                reader.read_exact(&mut data).await?;
                data.truncate(len);
                Resp::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Resp::Array(None),
            Ok(len) => {
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(Box::pin(read_reply(reader)).await?);
                }
                Resp::Array(Some(items))
            }
        },
        _ => return Err(invalid()),
    })
}
