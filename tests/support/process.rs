//! Child-process hygiene shared by every server the harness starts.
//!
//! Two layers make sure no test leaves a process behind:
//!
//! * [`ChildProcess`] kills (SIGKILL) and reaps its child when dropped, which
//!   also happens while a panicking test unwinds.
//! * Every child is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel
//!   kills it if the thread that spawned it dies without running destructors
//!   (the test binary was killed, or aborted).
//!
//! Caveat of the second layer: Linux ties the death signal to the *thread*
//! that spawned the child, not to the process. Spawn servers from the test's
//! own thread (the normal case: `#[tokio::test]` runs the test body there),
//! never from `spawn_blocking`, whose threads exit when idle.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How often the polling loops in this module look at a child.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Makes `cmd` deliver SIGKILL to its child when the spawning thread dies.
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe functions prctl(2) and getppid(2); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Opens `path` for writing (truncating it) as a child's stdout or stderr.
pub fn log_file(path: &Path) -> Stdio {
    let file = File::create(path)
        .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", path.display()));
    Stdio::from(file)
}

/// Reads a log file written by a child; a missing file reads as empty.
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A long-running child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    what: String,
    /// Set once the child has been reaped; after that its pid may be reused,
    /// so it must never be signalled again.
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `cmd` (stdin closed) with the parent-death signal set.
    /// `what` names the process in error messages.
    pub fn spawn(cmd: &mut Command, what: &str) -> io::Result<Self> {
        set_parent_death_signal(cmd);
        let child = cmd.stdin(Stdio::null()).spawn()?;
        Ok(Self {
            child,
            what: what.to_string(),
            status: None,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the child unless it has already been reaped.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has already exited", self.what),
            ));
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the pid belongs
        // to our unreaped child, so it cannot have been reused.
        if unsafe { libc::kill(self.pid() as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Returns the exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.what));
        }
        self.status
    }

    /// Waits (asynchronously, by polling) up to `timeout` for the child to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Like [`wait_timeout`](Self::wait_timeout) but blocks the thread; for `Drop`.
    pub fn wait_timeout_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the child with SIGKILL (if still running) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // Ignore errors: the child may have exited on its own already.
        let _ = self.signal(libc::SIGKILL);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {}: {e}", self.what));
        self.status = Some(status);
        status
    }

    /// Asks the child to stop with `signal`, waits up to `grace`, then
    /// falls back to SIGKILL. Always reaps the child.
    pub fn stop_blocking(&mut self, signal: libc::c_int, grace: Duration) -> ExitStatus {
        if self.signal(signal).is_ok() {
            if let Some(status) = self.wait_timeout_blocking(grace) {
                return status;
            }
        }
        self.kill()
    }

    /// Async version of [`stop_blocking`](Self::stop_blocking).
    pub async fn stop(&mut self, signal: libc::c_int, grace: Duration) -> ExitStatus {
        if self.signal(signal).is_ok() {
            if let Some(status) = self.wait_timeout(grace).await {
                return status;
            }
        }
        self.kill()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a short-lived command to completion, capturing its output.
///
/// The command is killed if it runs longer than `timeout` (an error is
/// returned then) or if the test dies meanwhile.
pub async fn run_command(cmd: Command, timeout: Duration) -> io::Result<Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    set_parent_death_signal(cmd.as_std_mut());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(output) => output,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{program} did not finish within {timeout:?}"),
        )),
    }
}

/// Output of a finished command, as text.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// The exit code; `None` if the process was ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<Output> for CommandOutput {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}
