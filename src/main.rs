//! The `tollgate` command line.

use clap::{Parser, Subcommand};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// jemalloc with a background thread that purges dirty pages.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: purge unused pages in the background after a second.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Edge API gateway on Pingora")]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "conf/tollgate.yaml"
    )]
    config: PathBuf,
    /// Take the listening sockets over from a running instance (graceful upgrade): start the
    /// new binary with -u, then send SIGQUIT to the old one.
    #[arg(short = 'u', long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration file and print every problem.
    Check,
    /// Run only the admin API (the `admin:` section of the configuration).
    Admin,
    /// Ask the running instance to reload its configuration (sends SIGHUP to the pid in the
    /// configured pid file).
    Reload,
    /// Apply pending database migrations (the gateway also does this at start) and exit.
    Migrate,
    /// API-key tools.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Exit 0 when a health endpoint answers 2xx, else 1 with the reason (for container
    /// HEALTHCHECKs and probes: the image has no curl).
    Health {
        /// The endpoint: a plain http:// URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/health")]
        url: String,
        /// Deadline for the whole exchange.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run a demo upstream that echoes each request as JSON.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        #[arg(long, default_value = "demo")]
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Generate a key; print it once, with the hash line to paste under a consumer's `keys:`.
    New {
        /// Id of the key in the config (default: its display prefix).
        #[arg(long)]
        id: Option<String>,
        /// Environment variable holding the pepper (must match the gateway's).
        #[arg(long, default_value = tollgate::config::DEFAULT_PEPPER_ENV)]
        pepper_env: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.config);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match tollgate::server::run(&cli.config, cli.upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("cannot start: {e}");
                eprintln!("tollgate: cannot start: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check => match tollgate::config::load_file(&cli.config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    cli.config.display(),
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Admin => match tollgate::server::run_admin(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("cannot start: {e}");
                eprintln!("tollgate: cannot start: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Reload => reload(&cli.config),
        Command::Migrate => migrate(&cli.config),
        Command::Key {
            action: KeyAction::New { id, pepper_env },
        } => new_key(id, &pepper_env),
        Command::Health { url, timeout } => match tollgate::health_probe::probe(&url, timeout) {
            Ok(status) => {
                println!("{url}: {status}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tollgate health: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Echo { listen, name } => tollgate::echo::run(&listen, &name),
    }
}

fn reload(config: &Path) -> ExitCode {
    let pid_file = match tollgate::config::load_file(config) {
        Ok(c) => c.server.pid_file,
        Err(e) => {
            eprintln!("{e}\nnot reloading: fix the file first");
            return ExitCode::FAILURE;
        }
    };
    let pid: i32 = match std::fs::read_to_string(&pid_file).map(|s| s.trim().parse()) {
        Ok(Ok(pid)) => pid,
        _ => {
            eprintln!(
                "no running tollgate: cannot read a pid from {}",
                pid_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: kill(2) with a pid read from our own pid file and a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    println!("reload requested (SIGHUP sent to pid {pid})");
    ExitCode::SUCCESS
}

fn migrate(config: &Path) -> ExitCode {
    let settings = match tollgate::config::load_file(config) {
        Ok(c) => match c.database {
            Some(d) => d,
            None => {
                eprintln!(
                    "{}: no database section: nothing to migrate",
                    config.display()
                );
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match tollgate::persistence::Persistence::start(&settings) {
        Ok((_, report)) => {
            println!(
                "database at schema version {} ({} migrations applied now)",
                report.current,
                report.applied.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migration failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn new_key(id: Option<String>, pepper_env: &str) -> ExitCode {
    use tollgate::auth::api_key::{generate, KeyHasher};
    let pepper = match std::env::var(pepper_env) {
        Ok(p) if p.len() >= 16 => p,
        _ => {
            eprintln!("set ${pepper_env} to the gateway's pepper (at least 16 bytes) first");
            return ExitCode::FAILURE;
        }
    };
    let key = match generate(&ring::rand::SystemRandom::new()) {
        Ok(k) => k,
        Err(_) => {
            eprintln!("the system random source failed");
            return ExitCode::FAILURE;
        }
    };
    let hash = KeyHasher::new(pepper.as_bytes()).hash(&key.secret).to_hex();
    println!(
        "API key (shown once; give it to the client, it is stored nowhere):\n\n  {}\n",
        key.secret
    );
    println!("Add under the consumer's keys:\n");
    println!("      - id: {}", id.as_deref().unwrap_or(&key.prefix));
    println!("        prefix: {}", key.prefix);
    println!("        hash: {hash}");
    ExitCode::SUCCESS
}

/// `RUST_LOG` wins; otherwise the config's `server.log_level` (default `info`).
fn init_logging(config: &Path) {
    let mut builder = env_logger::Builder::new();
    builder.format_timestamp_millis();
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
        builder.init();
        return;
    }
    let level = tollgate::config::load_file(config)
        .ok()
        .and_then(|c| c.server.log_level)
        .unwrap_or(log::LevelFilter::Info);
    // Accept everything at the logger and gate with the global maximum, which a reload can
    // change (see reload::LiveConfig).
    builder.filter_level(log::LevelFilter::Trace).init();
    log::set_max_level(level);
}
