//! The `leaseline` command: parse arguments, set up logging, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use leaseline::clock::SystemClock;
use leaseline::config::{fmt_duration, Config, LogFormat, TariffUnit};
use leaseline::startup::{shutdown_signal, Application};

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
    },
    /// Validate a config and print what it would serve.
    Check {
        #[arg(long, default_value = "pool.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("pool.toml"),
    });
    match command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => serve(&config),
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
    println!(
        "listen {}, data in {}",
        c.server.listen,
        c.server.data_dir.display()
    );
    for p in &c.pools {
        let s = &p.spec.settings;
        let tariff = p.tariff.as_ref().map_or(String::new(), |t| {
            let unit = match t.unit {
                TariffUnit::PerCall => "call",
                TariffUnit::PerMinute => "minute",
            };
            format!(", {} {} per {unit}", t.amount, t.currency)
        });
        println!(
            "pool {}: {} numbers, ttl {}, max_ttl {}, grace {}, quarantine {}{tariff}",
            p.spec.name,
            p.spec.numbers.len(),
            fmt_duration(s.ttl),
            fmt_duration(s.max_ttl),
            fmt_duration(s.grace),
            fmt_duration(s.quarantine),
        );
    }
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

fn serve(path: &std::path::Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    init_logging(config.server.log_format);
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
        let app = Application::build(&config, Arc::new(SystemClock)).await?;
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
