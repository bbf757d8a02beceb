use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use supd::config::{Config, LogFormat, Overrides, StoreBackend};

/// jemalloc instead of glibc's malloc: with tens of thousands of agent
/// streams glibc kept ~90 MiB more resident at 16,384 nodes (BENCHMARKS.md),
/// and freed memory returns to the kernel without a trim pass. Its options
/// (decay, background thread) are set at build time: `.cargo/config.toml`.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// supd: the sup supervisor. Keeps the node registry, decides, and serves
/// agents (gRPC), supctl (gRPC) and the dashboard and metrics (HTTP).
#[derive(Debug, Parser)]
#[command(name = "supd", version)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(long, env = "SUPD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for durable state (default /var/lib/sup).
    #[arg(long, env = "SUPD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address for agents and supctl (default 127.0.0.1:7070).
    #[arg(long, env = "SUPD_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Address for the dashboard, /metrics and /api (default 127.0.0.1:7080).
    #[arg(long, env = "SUPD_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    #[arg(long, env = "SUPD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Serve gRPC without TLS (no authentication: anyone who reaches the
    /// port can register as any node and change anything). For loopback
    /// trials and tests; the shipped config uses mutual TLS.
    #[arg(long, env = "SUPD_PLAINTEXT")]
    plaintext: bool,
    /// Where the durable state lives: "sled" (embedded in the data dir, the
    /// default) or "etcd" (store.etcd_endpoints / --etcd-endpoints).
    #[arg(long, env = "SUPD_STORE_BACKEND", value_enum)]
    store_backend: Option<StoreBackend>,
    /// etcd client URLs, comma-separated: http://HOST:PORT,http://HOST:PORT,...
    #[arg(long, env = "SUPD_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// This replica's name in the leader election and the status (default:
    /// the host name).
    #[arg(long = "id", env = "SUPD_ID", value_name = "NAME")]
    replica_id: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Goodput simulator: run the policy engine over a failure trace (Llama 3
    /// rates by default) and compare spare counts and checkpoint intervals.
    /// Offline: touches no state and no network.
    Simulate(Box<supd::sim::cli::SimArgs>),
    /// Write the durable state (nodes, cordons, jobs and generations, the
    /// breaker, events, request ids) of the configured store to FILE as
    /// JSON: a backup, or the first half of moving from sled to etcd. A
    /// sled store must not be in use (stop supd first).
    Export {
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Fill the configured store, which must be empty, from an export.
    Import {
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

fn main() -> ExitCode {
    #[cfg(not(target_env = "msvc"))]
    supd::memory::jemalloc_installed();
    let args = Args::parse();
    if let Some(Sub::Simulate(sim)) = &args.command {
        return match supd::sim::cli::run_cli(sim) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("supd simulate: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::load(
        args.config.as_deref(),
        Overrides {
            data_dir: args.data_dir,
            grpc_addr: args.grpc_addr,
            http_addr: args.http_addr,
            log_format: args.log_format,
            plaintext: args.plaintext,
            store_backend: args.store_backend,
            etcd_endpoints: args.etcd_endpoints,
            replica_id: args.replica_id,
        },
    ) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("supd: {e}");
            return ExitCode::from(2);
        }
    };
    match &args.command {
        Some(Sub::Export { to }) => {
            let now = sup_proto::time::now_unix_ms();
            return report("export", supd::backup::export(&config, to, now));
        }
        Some(Sub::Import { from }) => {
            return report("import", supd::backup::import(&config, from));
        }
        Some(Sub::Simulate(_)) | None => {}
    }
    supd::init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("supd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supd::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("supd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(what: &str, outcome: anyhow::Result<String>) -> ExitCode {
    match outcome {
        Ok(summary) => {
            println!("supd {what}: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("supd {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
