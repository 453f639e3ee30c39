//! The `ringpush` binary: parses the command line and hands over to the
//! library. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The API thread allocates every message and the shard threads free them:
// glibc malloc spent 15% of the API thread in _int_malloc and consolidation
// on that cross-thread pattern; mimalloc frees to the owning thread's heap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ringpush::config::Config;

#[derive(Parser)]
#[command(name = "ringpush", version, about = "Push gateway daemon")]
struct Cli {
    /// Configuration file; without it the embedded defaults are used.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print the effective configuration.
    CheckConfig { file: PathBuf },
    /// Truncate each shard's message log at its first damaged record, so
    /// that the daemon starts again. Records after the damage are lost: run
    /// it only when startup refuses with "corrupt log record", with the
    /// daemon stopped, on the same --config.
    Repair,
    /// Print the public key (PEM) that verifies the delivery receipts signed
    /// with receipts.signing_key_file of --config; give it to the receivers.
    ReceiptPublicKey,
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load_or_default(path.as_deref())?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => {
            Config::load(&file).map_err(anyhow::Error::from).and_then(|c| {
                // Secrets serialize as "<redacted>".
                print!("{}", toml::to_string_pretty(&c)?);
                Ok(())
            })
        }
        Some(Command::Repair) => load(cli.config).and_then(|config| {
            ringpush::daemon::init_logging(&config.log);
            for (dir, kept) in ringpush::store::repair(&config)? {
                println!("{}: {kept} records kept", dir.display());
            }
            Ok(())
        }),
        Some(Command::ReceiptPublicKey) => load(cli.config).and_then(|config| {
            let path = config.receipts.signing_key_file.ok_or_else(|| {
                anyhow::anyhow!("receipts.signing_key_file is not set in the configuration")
            })?;
            print!("{}", ringpush::receipts::Signer::load(&path)?.public_key_pem());
            Ok(())
        }),
        None => load(cli.config.clone()).and_then(|config| {
            ringpush::daemon::init_logging(&config.log);
            ringpush::daemon::run(config, cli.config)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpush: {e:#}");
            ExitCode::FAILURE
        }
    }
}
