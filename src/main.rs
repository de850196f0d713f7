//! The `wheresmyfox` binary: command line → config → tracing → bind → `server::run`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tikv_jemallocator::Jemalloc;
use tracing::info;
use tracing_subscriber::EnvFilter;

use wheresmyfox::config::{Flags, LogFormat};
use wheresmyfox::{Config, Gateway, server};

mod simulate;

// jemalloc returns the memory of idle parked connections to the system far better than
// glibc's malloc (6.9 KB against 14.6 KB per parked poll, measured in docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: Jemalloc = Jemalloc;

/// Find, ring, lock and wipe lost phones in real time: the Where's My Fox gateway.
///
/// With no subcommand, `serve` runs with the embedded defaults: listening on 127.0.0.1:8080,
/// keeping data in ./data.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Manage owner accounts (for servers with sign-up closed).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Read the whole data directory and report its state, without changing anything.
    /// Exits non-zero if start-up would refuse it. Stop the server first.
    CheckData(CommonArgs),
    /// Make a damaged data directory usable again: set a damaged snapshot aside (nothing is
    /// lost while the older snapshot's journal is there), or cut a damaged journal at the
    /// damage (what follows is kept aside in a .damaged file). Stop the server first.
    Repair(CommonArgs),
    /// Print the effective configuration (file, then WHERESMYFOX_<SECTION>__<KEY> environment
    /// variables, then flags), secrets redacted; or the error naming the key at fault. Exits
    /// non-zero when the server would refuse to start with it.
    CheckConfig(ServeArgs),
    /// A pretend phone: registers with a running server as the given owner, reports a
    /// position that moves, and prints and acknowledges every command it receives.
    SimulateDevice(SimulateArgs),
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The server's address (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// The owner's email (the account must exist: sign up on the page first).
    #[arg(long, requires = "password")]
    email: Option<String>,
    /// The owner's password.
    #[arg(long, requires = "email")]
    password: Option<String>,
    /// An owner's bearer token instead of email and password.
    #[arg(long, conflicts_with_all = ["email", "password"])]
    token: Option<String>,
    /// The name the owner sees.
    #[arg(long, default_value = "Simulated phone")]
    name: String,
    /// Seconds between position reports.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
    every: u64,
    /// Latitude to start walking from.
    #[arg(long, default_value_t = 48.8566, allow_hyphen_values = true)]
    lat: f64,
    /// Longitude to start walking from.
    #[arg(long, default_value_t = 2.3522, allow_hyphen_values = true)]
    lon: f64,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from standard input.
    Add {
        /// The owner's email address.
        email: String,
        /// Read the password from standard input (the only way: it never appears in `ps`).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// A TOML config file; every key is documented in config/wheresmyfox.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where state is kept (overrides server.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on, e.g. 127.0.0.1:8080 or [::]:8080 (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::User {
            command:
                UserCommand::Add {
                    email,
                    password_stdin: _,
                    common,
                },
        }) => user_add(&email, common),
        Some(Command::CheckData(common)) => check_data(common),
        Some(Command::Repair(common)) => repair(common),
        Some(Command::CheckConfig(args)) => check_config(args),
        Some(Command::SimulateDevice(args)) => simulate_device(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wheresmyfox: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(common: &CommonArgs) -> anyhow::Result<Config> {
    layered_config(common, None)
}

/// File, then environment, then flags, then validation (see `Config::layered`).
fn layered_config(common: &CommonArgs, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    // Variables that are not Unicode cannot be config values; they are left to others.
    let env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let flags = Flags {
        listen,
        data_dir: common.data_dir.clone(),
    };
    Ok(Config::layered(common.config.as_deref(), env, &flags)?)
}

fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match config.log.format {
        LogFormat::Human => builder.with_ansi(ansi).init(),
        // One object per line, with the request span's fields (client, device, owner) in it.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = layered_config(&args.common, args.listen)?;
    init_tracing(&config);
    runtime()?.block_on(async move {
        let listen = config.server.listen;
        let metrics_listen = config.metrics.listen;
        let gateway = Gateway::open(config)?;
        gateway
            .metrics
            .register(std::sync::Arc::new(wheresmyfox::metrics::JemallocStats));
        let listener =
            server::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        if let Some(addr) = metrics_listen {
            let metrics = server::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
            info!(addr = %metrics.local_addr()?, "metrics listening");
            tokio::spawn(server::serve_metrics(metrics, gateway.clone()));
        }
        info!(
            addr = %listener.local_addr()?,
            data_dir = %gateway.config.server.data_dir.display(),
            "wheresmyfox {} listening",
            env!("CARGO_PKG_VERSION")
        );
        server::run(listener, gateway, stop_signal()).await;
        info!("stopped");
        Ok(())
    })
}

fn user_add(email: &str, common: CommonArgs) -> anyhow::Result<()> {
    let config = load_config(&common)?;
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password on standard input");
    }
    runtime()?.block_on(async move {
        let userid = wheresmyfox::admin::add_user(&config, email, password).await?;
        println!("{userid}");
        Ok(())
    })
}

fn check_config(args: ServeArgs) -> anyhow::Result<()> {
    let config = layered_config(&args.common, args.listen)?;
    print!("{}", config.to_redacted_toml());
    if std::env::var_os("WHERESMYFOX_SEAL_KEY").is_some_and(|k| !k.is_empty()) {
        println!("# storage.seal_key is set by WHERESMYFOX_SEAL_KEY (not shown)");
    }
    eprintln!("ok: the configuration is valid");
    Ok(())
}

fn check_data(common: CommonArgs) -> anyhow::Result<()> {
    let config = load_config(&common)?;
    let sealer = wheresmyfox::store::seal::Sealer::new(config.seal_key().as_deref());
    let report = wheresmyfox::store::check(&config, &sealer)?;
    match &report.snapshot {
        Some(path) => println!("snapshot: {} (good)", path.display()),
        None => println!("snapshot: none yet"),
    }
    for journal in &report.journals {
        println!("journal:  {} (good)", journal.display());
    }
    println!("records:  {} replayed without error", report.records);
    if report.torn_bytes > 0 {
        println!(
            "note:     the last journal ends with a torn record ({} bytes, never acknowledged); start-up cuts it",
            report.torn_bytes
        );
    }
    println!(
        "ok: the server can start from {}",
        config.server.data_dir.display()
    );
    Ok(())
}

fn repair(common: CommonArgs) -> anyhow::Result<()> {
    let config = load_config(&common)?;
    let sealer = wheresmyfox::store::seal::Sealer::new(config.seal_key().as_deref());
    let done = wheresmyfox::store::repair(&config, &sealer)?;
    if done.is_empty() {
        println!(
            "nothing to repair: {} is readable",
            config.server.data_dir.display()
        );
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}

fn simulate_device(args: SimulateArgs) -> anyhow::Result<()> {
    if !(-90.0..=90.0).contains(&args.lat) || !(-180.0..=180.0).contains(&args.lon) {
        bail!("--lat must be from -90 to 90 and --lon from -180 to 180");
    }
    let simulation = simulate::Simulation {
        server: args.server,
        email: args.email,
        password: args.password,
        token: args.token,
        name: args.name,
        every_secs: args.every,
        lat: args.lat,
        lon: args.lon,
    };
    runtime()?.block_on(simulate::run(simulation))
}

/// Resolves on SIGTERM (how service managers stop us) or SIGINT (Ctrl-C in a terminal).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
