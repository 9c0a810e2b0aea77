//! `partnerstack-sim`: serve the PartnerStack v2 stand-in until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use partnerstack_sim::Options;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "A local PartnerStack v2 stand-in: seeded data, faults, lossy webhooks"
)]
struct Cli {
    /// The API public key the stand-in accepts (HTTP Basic user name).
    #[arg(long, env = "PARTNERSTACK_PUBLIC_KEY", hide_env_values = true, value_parser = secret)]
    public_key: SecretString,
    /// The API secret key the stand-in accepts (HTTP Basic password).
    #[arg(long, env = "PARTNERSTACK_SECRET_KEY", hide_env_values = true, value_parser = secret)]
    secret_key: SecretString,
    #[command(flatten)]
    options: Options,
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.trim().to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("partnerstack-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.options.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cli.options.listen))?;
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            trigger.cancel();
        });
        partnerstack_sim::run(
            cli.options,
            &cli.public_key,
            &cli.secret_key,
            listener,
            shutdown,
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("partnerstack-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}
