//! The `leaseline` command: parse arguments, set up logging, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use leaseline::clock::SteadyClock;
use leaseline::config::{fmt_duration, Config, LogFormat};
use leaseline::core::OnExhausted;
use leaseline::startup::{shutdown_signal, Application};

/// jemalloc instead of glibc's malloc: the request path makes many short-lived allocations
/// (glibc spent ~18% of the server's CPU in malloc/free under load, `perf record`), and a
/// million leases are many small objects that jemalloc packs in size classes.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "leaseline",
    version,
    about = "Leases phone numbers to website visitors and attributes their calls."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve {
        #[arg(long, default_value = "pool.toml")]
        config: PathBuf,
        /// Start although the wall clock is behind the last time Leaseline ran by more than
        /// [server] max_clock_rewind, trusting the wall clock: leases over by then, or made
        /// while the clock was ahead, end at once; no lease is revived.
        #[arg(long)]
        accept_wall_clock: bool,
    },
    /// Validate a config and print what it would serve.
    Check {
        #[arg(long, default_value = "pool.toml")]
        config: PathBuf,
    },
    /// Export records from a running Leaseline (for billing reconciliation).
    Export {
        #[command(subcommand)]
        what: Export,
    },
}

#[derive(Subcommand)]
enum Export {
    /// The call journal, oldest page last (newest first), as CSV on stdout.
    Calls {
        /// The server's config: its `listen` address is where to ask.
        #[arg(long, default_value = "pool.toml")]
        config: PathBuf,
        /// Ask this base URL instead (e.g. http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
        /// An admin key's token (or set LEASELINE_ADMIN_KEY).
        #[arg(long, env = "LEASELINE_ADMIN_KEY", hide_env_values = true)]
        key: String,
        /// Calls started at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Calls started before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, default_value = "csv", value_parser = ["csv"])]
        format: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("pool.toml"),
        accept_wall_clock: false,
    });
    match command {
        Command::Check { config } => check(&config),
        Command::Serve {
            config,
            accept_wall_clock,
        } => serve(&config, accept_wall_clock),
        Command::Export {
            what:
                Export::Calls {
                    config,
                    url,
                    key,
                    since,
                    until,
                    pool,
                    format: _,
                },
        } => {
            let base = match url {
                Some(u) => u,
                None => match load(&config) {
                    Some(c) => format!("http://{}", c.server.listen),
                    None => return ExitCode::FAILURE,
                },
            };
            match export_calls(&base, &key, since, until, pool) {
                Ok(n) => {
                    eprintln!("exported {n} calls");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Pages through `GET /v1/calls?format=csv`, writing one header and every row to stdout.
fn export_calls(
    base: &str,
    key: &str,
    since: Option<String>,
    until: Option<String>,
    pool: Option<String>,
) -> Result<usize, String> {
    use std::io::Write;
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(60))
        .build();
    let mut out = std::io::stdout().lock();
    let mut cursor: Option<String> = None;
    let mut rows = 0;
    loop {
        let mut req = agent
            .get(&format!("{}/v1/calls", base.trim_end_matches('/')))
            .set("authorization", &format!("Bearer {key}"))
            .query("format", "csv")
            .query("limit", "1000");
        for (k, v) in [
            ("since", &since),
            ("until", &until),
            ("pool", &pool),
            ("cursor", &cursor),
        ] {
            if let Some(v) = v {
                req = req.query(k, v);
            }
        }
        let res = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                return Err(format!("the server answered {code}: {body}"));
            }
            Err(e) => return Err(format!("cannot reach {base}: {e}")),
        };
        let next = res.header("x-next-cursor").map(str::to_owned);
        let body = res.into_string().map_err(|e| e.to_string())?;
        let mut lines = body.lines();
        let header = lines.next().unwrap_or_default();
        if cursor.is_none() {
            writeln!(out, "{header}").map_err(|e| e.to_string())?;
        }
        for line in lines {
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
            rows += 1;
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(rows),
        }
    }
}

fn load(path: &std::path::Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let Some(c) = load(path) else {
        return ExitCode::FAILURE;
    };
    println!("{}: OK", path.display());
    for w in &c.warnings {
        println!("warning: {w}");
    }
    println!(
        "listen {}, data in {}",
        c.server.listen,
        c.server.data_dir.display()
    );
    for p in &c.pools {
        let s = &p.spec.settings;
        let tariff = p
            .spec
            .tariff
            .as_ref()
            .map_or(String::new(), |t| format!(", {}", t.describe()));
        let exhausted = match &p.spec.on_exhausted {
            OnExhausted::Reject => "when exhausted: reject (503)".to_string(),
            OnExhausted::Shared { number, code_ttl } => format!(
                "when exhausted: shared number {number} with codes valid {}",
                fmt_duration(*code_ttl)
            ),
        };
        let fallback = p
            .spec
            .fallback
            .as_ref()
            .map_or(String::new(), |t| format!(", fallback {t}"));
        let share = p.spec.limits.page_share;
        let codes = match p.spec.on_exhausted {
            OnExhausted::Shared { .. } => format!(
                " and {} codes",
                share.of(usize::from(leaseline::core::Code::SPACE))
            ),
            OnExhausted::Reject => String::new(),
        };
        let pages = format!(
            "pages may hold {} numbers{codes}, each for {} at most",
            share.of(p.spec.numbers.len()),
            fmt_duration(s.page_max_ttl)
        );
        let voice = match p.voice.overridden() {
            0 => format!("voice {}", p.voice.locale()),
            1 => format!("voice {} (1 prompt of its own)", p.voice.locale()),
            n => format!("voice {} ({n} prompts of its own)", p.voice.locale()),
        };
        println!(
            "pool {}: {} numbers, ttl {}, max_ttl {}, grace {}, quarantine {}, return window {}{tariff}; {exhausted}{fallback}; {pages}; {voice}",
            p.spec.name,
            p.spec.numbers.len(),
            fmt_duration(s.ttl),
            fmt_duration(s.max_ttl),
            fmt_duration(s.grace),
            fmt_duration(s.quarantine),
            fmt_duration(p.spec.return_window),
        );
    }
    let l = &c.limits;
    println!(
        "page allocations a minute: per address {}, per /24 or /56 {}, per session {}; renewals a minute without a site key: per lease {}, per address {}",
        l.publishable_per_ip,
        l.publishable_per_prefix,
        l.publishable_per_session,
        l.renews_per_lease,
        l.renews_per_ip
    );
    let (r, rp) = (&l.redeem_per_client, &l.redeem_per_prefix);
    println!(
        "wrong access codes: {} free per address and client, {} per /24 or /56, then a wait from {} doubling up to {}; forgotten {} after the last",
        r.free,
        rp.free,
        fmt_duration(r.first_delay),
        fmt_duration(r.max_delay),
        fmt_duration(r.forget)
    );
    let cl = &c.server.connections;
    let cap = |n: usize| match n {
        0 => "no cap".to_string(),
        n => n.to_string(),
    };
    println!(
        "connections: {} at once, per address {}, per /24 or /56 {}; event streams per lease {}, per address {}",
        cl.max_connections,
        cap(cl.max_connections_per_ip),
        cap(cl.max_connections_per_prefix),
        l.event_streams_per_lease,
        l.event_streams_per_ip
    );
    let proxies: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "client addresses: {}",
        if proxies.is_empty() {
            "the socket's peer (no trusted_proxies)".to_string()
        } else {
            format!(
                "from X-Forwarded-For behind {}, else the peer",
                proxies.join(", ")
            )
        }
    );
    for k in &c.keys {
        let pools = k
            .pools
            .as_ref()
            .map_or("all pools".to_string(), |p| p.join(", "));
        println!(
            "key {}: role {}, tenant {}, {pools}",
            k.name,
            k.role.as_str(),
            k.tenant.as_str()
        );
    }
    ExitCode::SUCCESS
}

fn serve(path: &std::path::Path, accept_wall_clock: bool) -> ExitCode {
    let Some(mut config) = load(path) else {
        return ExitCode::FAILURE;
    };
    config.server.accept_wall_clock = accept_wall_clock;
    init_logging(config.server.log_format);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let app = Application::build(&config, Arc::new(SteadyClock::start())).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASELINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
