//! The `tessera` command line. Every subcommand loads and validates the configuration first;
//! a configuration problem ends the process with one line naming the key.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::startup::{AppState, Application};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera: multi-tenant AI inference platform")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (applies migrations first when database.migrate_on_start is true).
    Serve,
    /// Apply the embedded database migrations and exit.
    Migrate,
    /// Print the OpenAPI 3.1 document.
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the effective configuration and print it with secrets redacted.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tessera: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|error| {
        eprintln!("tessera: {error}");
        ExitCode::from(2)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Openapi { output } => {
            let text = crate::http::openapi::spec_json();
            match output {
                Some(path) => std::fs::write(&path, text)?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check } => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            print!("{}", settings.redacted());
            eprintln!("tessera: configuration OK ({})", settings.environment.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let _telemetry = crate::telemetry::init(&settings.telemetry)?;
            actix_web::rt::System::new().block_on(async {
                let pool = crate::db::connect_lazy(&settings.database)?;
                crate::db::migrate(&pool).await?;
                tracing::info!("migrations applied");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let settings = match load_settings() {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let _telemetry = crate::telemetry::init(&settings.telemetry)?;
            actix_web::rt::System::new().block_on(serve(settings))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let migrate = settings.database.migrate_on_start;
    let scheme = if settings.server.tls.enabled { "https" } else { "http" };
    let host = settings.server.host.clone();
    let state = AppState::new(settings)?;
    if migrate {
        crate::db::migrate(&state.db).await?;
    }
    let app = Application::build(state)?;
    let shown_host = if host == "0.0.0.0" { "127.0.0.1".to_owned() } else { host };
    tracing::info!(port = app.port(), "serving");
    println!("Tessera is serving at {scheme}://{shown_host}:{}  (API docs: /docs)", app.port());
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(())
}
