//! The `leaseline` command: parse arguments, set up logging, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use leaseline::clock::SteadyClock;
use leaseline::config::{fmt_duration, parse_duration, Config, LogFormat};
use leaseline::core::OnExhausted;
use leaseline::plan::{parse_blocking, parse_rate, Plan};
use leaseline::startup::{shutdown_signal, Application};

/// jemalloc instead of glibc's malloc: the request path makes many short-lived allocations
/// (glibc spent ~18% of the server's CPU in malloc/free under load, `perf record`), and a
/// million leases are many small objects that jemalloc packs in size classes.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit statuses (README, "Command line"): 0 done, 1 failed (start-up, the store, a run that
/// stopped on an error, an export the server refused), 2 a command-line mistake (clap's own),
/// 78 the configuration cannot be read or is invalid (`EX_CONFIG` of sysexits.h: the unit's
/// `RestartPreventExitStatus`, since restarting cannot fix it).
const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "leaseline",
    version,
    about = "Leases phone numbers to website visitors and attributes their calls.",
    after_help = "Without a subcommand, serves (as `leaseline serve`).\n\
                  Exit status: 0 done, 1 failed, 2 a command-line mistake, 78 the configuration \
                  cannot be read or is invalid."
)]
struct Cli {
    /// The configuration file, for every subcommand (relative paths in it, such as data_dir,
    /// are resolved against its folder).
    #[arg(
        long,
        global = true,
        env = "LEASELINE_CONFIG",
        default_value = "pool.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
    /// Serving without a subcommand takes `serve`'s options (`leaseline --accept-wall-clock`).
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
struct ServeArgs {
    /// Start although the wall clock is behind the last time Leaseline ran by more than
    /// [server] max_clock_rewind, trusting the wall clock: leases over by then, or made
    /// while the clock was ahead, end at once; no lease is revived.
    #[arg(long)]
    accept_wall_clock: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Validate the configuration and print what it would serve.
    Check,
    /// Size a pool before buying numbers: the load a request rate offers, and the numbers
    /// Erlang-B says keep blocking under a target. Offline: reads no config, asks no server.
    Plan {
        /// Requests for a new number at the busiest hour: "120/min", "2/s", "5000/h".
        #[arg(long, value_parser = parse_rate)]
        rate: f64,
        /// How long a lease lasts on average (its ttl, or less if pages release early).
        #[arg(long, value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// How long a number rests after its lease ends.
        #[arg(long, value_parser = parse_duration)]
        quarantine: std::time::Duration,
        /// Share of requests allowed to find no number: "1%" or "0.01".
        #[arg(long, default_value = "1%", value_parser = parse_blocking)]
        blocking: f64,
        /// Also say what this many numbers would block.
        #[arg(long)]
        numbers: Option<u64>,
    },
    /// Export records from a running Leaseline (for billing reconciliation).
    Export {
        #[command(subcommand)]
        what: Export,
    },
}

#[derive(Subcommand)]
enum Export {
    /// The call journal, newest first, as CSV on stdout. Without --url, asks the server at
    /// the configuration's `listen` address.
    Calls {
        /// Ask this base URL instead (http:// or https://, e.g. https://leaseline.example.com).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Also trust the certificate authorities in this PEM file for https:// (a private CA,
        /// a proxy's self-signed certificate), besides the bundled Mozilla roots.
        #[arg(long, env = "LEASELINE_CA_FILE", value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// An admin key's token (or set LEASELINE_ADMIN_KEY, which keeps it out of `ps`).
        #[arg(long, env = "LEASELINE_ADMIN_KEY", hide_env_values = true)]
        key: String,
        /// Calls started at or after this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Calls started before this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only this pool's calls.
        #[arg(long, value_name = "NAME")]
        pool: Option<String>,
        /// The output format (CSV only, for now).
        #[arg(long, default_value = "csv", value_parser = ["csv"])]
        format: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    let command = cli.command.unwrap_or(Command::Serve {
        args: ServeArgs {
            accept_wall_clock: false,
        },
    });
    if cli.serve.accept_wall_clock && !matches!(command, Command::Serve { .. }) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--accept-wall-clock is an option of `serve` only",
            )
            .exit();
    }
    if !matches!(command, Command::Serve { .. }) {
        // A report piped into `head` ends quietly when the reader leaves, as other commands
        // do, instead of panicking on a closed stdout. The server keeps SIGPIPE ignored.
        // SAFETY: no other thread runs yet; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match command {
        Command::Check => check(&config),
        Command::Plan {
            rate,
            ttl,
            quarantine,
            blocking,
            numbers,
        } => {
            let plan = Plan {
                rate,
                ttl,
                quarantine,
                blocking,
                numbers,
            };
            if let Err(e) = plan.check() {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            print!("{}", plan.render());
            ExitCode::SUCCESS
        }
        Command::Serve { args } => serve(
            &config,
            args.accept_wall_clock || cli.serve.accept_wall_clock,
        ),
        Command::Export {
            what:
                Export::Calls {
                    url,
                    ca_file,
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
                    Ok(c) => format!("http://{}", c.server.listen),
                    Err(code) => return code,
                },
            };
            match export_calls(&base, ca_file.as_deref(), &key, since, until, pool) {
                Ok(n) => {
                    eprintln!("exported {n} calls");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
    }
}

/// Pages through `GET /v1/calls?format=csv`, writing one header and every row to stdout.
fn export_calls(
    base: &str,
    ca_file: Option<&std::path::Path>,
    key: &str,
    since: Option<String>,
    until: Option<String>,
    pool: Option<String>,
) -> Result<usize, String> {
    use std::io::Write;
    let agent = leaseline::client::agent(ca_file, std::time::Duration::from_secs(60))?;
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
            Err(e) => {
                let hint = if e.to_string().contains("certificate") {
                    " (a private CA or a self-signed certificate: name it with --ca-file or \
                     LEASELINE_CA_FILE)"
                } else {
                    ""
                };
                return Err(format!("cannot reach {base}: {e}{hint}"));
            }
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

/// The configuration, or the exit status for one that cannot be used (its reason printed).
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
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
    if let Some(cl) = &c.cluster {
        println!(
            "cluster: node {} at {}, etcd {}, lease_ttl {}, keys under {}",
            cl.node,
            cl.advertise,
            cl.etcd.join(" "),
            fmt_duration(cl.lease_ttl),
            cl.prefix
        );
    }
    for w in &c.webhooks {
        let events: Vec<&str> = w.events().map(|e| e.as_str()).collect();
        println!(
            "webhook {}: {} ({}), {}, retried up to {}",
            w.name,
            w.url,
            events.join(", "),
            w.tenant
                .as_ref()
                .map_or("every tenant".to_string(), |t| format!(
                    "tenant {}",
                    t.as_str()
                )),
            fmt_duration(w.max_age)
        );
    }
    ExitCode::SUCCESS
}

fn serve(path: &std::path::Path, accept_wall_clock: bool) -> ExitCode {
    let mut config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    config.server.accept_wall_clock = accept_wall_clock;
    init_logging(config.server.log_format);
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %file.display(),
        "leaseline starting"
    );
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = rt.block_on(async {
        if let Some(cluster) = config.cluster.clone() {
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let clock = Arc::new(SteadyClock::start());
            return leaseline::cluster::run(config, cluster, clock, listener, shutdown_signal())
                .await;
        }
        let app = Application::build(&config, Arc::new(SteadyClock::start()))
            .await?
            .reloading(path.to_owned(), config.clone());
        app.run_until_stopped(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Logged once, by the logger already writing to stderr (as JSON lines if so configured).
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Logs to stderr; colours only when it is a terminal and `NO_COLOR` is unset or empty
/// (no-color.org), so a file, a pipe or journald gets plain text.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASELINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
