//! `brownout-sim`: serves a script as an Anthropic/OpenAI-compatible upstream over
//! HTTP/1.1, or runs the outage scenario runner on it. See the crate docs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use brownout_sim::{runner, Api, Runner, Script, Sim, SimServer, SimTls, Stack};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// An overloaded Anthropic/OpenAI-compatible upstream with scripted faults.
///
/// Without a subcommand, serves the script over HTTP/1.1 (or TLS, with --tls-cert or
/// --tls-self-signed): POST /v1/messages and POST /v1/chat/completions.
#[derive(Parser)]
#[command(name = "brownout-sim", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// The script (TOML); the shipped outage script when absent.
    #[arg(long)]
    script: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Overrides the script's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    /// HTTP/2 is offered by ALPN, HTTP/1.1 otherwise.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate for localhost, 127.0.0.1 and ::1 made now, signed
    /// by a CA made now whose certificate is written to this file (PEM): give it to
    /// clients as their CA file (`ca_file` in the gateway).
    #[arg(long, value_name = "CA_FILE")]
    tls_self_signed: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the naive client (one attempt per request) against the script and prints
    /// what its callers saw. `brownout-gateway demo` compares it with a retry-only
    /// client and brownout's pipeline.
    Run(RunArgs),
    /// Prints the shipped outage script.
    Script,
}

#[derive(Args)]
struct RunArgs {
    /// The script (TOML); the shipped outage script when absent.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Client requests to send [default: the script's, else 100].
    #[arg(long)]
    requests: Option<u64>,
    /// Client requests in flight at most [default: the script's, else 10].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Spread request starts over this long, e.g. 10m [default: the script's].
    #[arg(long, value_parser = duration)]
    over: Option<Duration>,
    /// Send requests as fast as the workers allow, ignoring the script's spread.
    #[arg(long, conflicts_with = "over")]
    no_spread: bool,
    /// The model requested [default: the script's, else its first model].
    #[arg(long)]
    model: Option<String>,
    /// The API the requests speak [default: the script's, else anthropic].
    #[arg(long, value_enum)]
    endpoint: Option<ApiArg>,
    /// Ask for streamed answers.
    #[arg(long)]
    stream: bool,
    /// Overrides the script's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// How long the caller waits for one answer, e.g. 60s [default: the script's, else 60s].
    #[arg(long, value_parser = duration)]
    timeout: Option<Duration>,
    /// Run on the wall clock instead of in virtual time (a ten-minute script then
    /// takes ten minutes).
    #[arg(long)]
    real_time: bool,
    /// Print the reports as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ApiArg {
    Anthropic,
    Openai,
}

fn duration(text: &str) -> Result<Duration, String> {
    brownout_core::classify::parse_go_duration(text)
        .ok_or_else(|| format!("`{text}` is not a duration such as 800ms, 60s or 10m"))
}

fn load(path: Option<&PathBuf>, seed: Option<u64>) -> Result<Script, String> {
    let script = match path {
        Some(path) => Script::from_file(path).map_err(|e| e.to_string())?,
        None => Script::outage(),
    };
    Ok(match seed {
        Some(seed) => script.seed(seed),
        None => script,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Script) => {
            print!("{}", brownout_sim::OUTAGE_TOML);
            Ok(())
        }
        Some(Command::Run(args)) => run(args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("brownout-sim: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let script = load(args.script.as_ref(), args.seed)?;
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_self_signed) {
        (Some(cert), Some(key), _) => {
            Some(SimTls::from_files(cert, key).map_err(|e| e.to_string())?)
        }
        (_, _, Some(ca_file)) => {
            let tls = SimTls::self_signed().map_err(|e| e.to_string())?;
            tls.write_ca(ca_file)
                .map_err(|e| format!("cannot write the CA to {}: {e}", ca_file.display()))?;
            println!(
                "brownout-sim: CA certificate written to {}",
                ca_file.display()
            );
            Some(tls)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let server = SimServer::bind(args.listen, Sim::new(script))
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let (server, scheme) = match tls {
            Some(tls) => (server.tls(tls), "https"),
            None => (server, "http"),
        };
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        let name = args
            .script
            .as_ref()
            .map_or_else(|| "the outage script".to_owned(), |p| p.display().to_string());
        println!("brownout-sim: serving {name} on {scheme}://{addr} (POST /v1/messages, POST /v1/chat/completions)");
        server.serve().await;
        Ok(())
    })
}

fn run(args: RunArgs) -> Result<(), String> {
    let script = load(args.script.as_ref(), args.seed)?;
    let mut runner = Runner::new(script).stream(args.stream);
    if let Some(requests) = args.requests {
        runner = runner.requests(requests);
    }
    if let Some(concurrency) = args.concurrency {
        runner = runner.concurrency(concurrency);
    }
    if let Some(over) = args.over {
        runner = runner.spread_over(over);
    }
    if args.no_spread {
        runner = runner.no_spread();
    }
    if let Some(model) = args.model {
        runner = runner.model(model);
    }
    if let Some(endpoint) = args.endpoint {
        runner = runner.api(match endpoint {
            ApiArg::Anthropic => Api::AnthropicMessages,
            ApiArg::Openai => Api::OpenAiChat,
        });
    }
    if let Some(timeout) = args.timeout {
        runner = runner.timeout(timeout);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(!args.real_time)
        .build()
        .map_err(|e| e.to_string())?;
    let reports = runtime.block_on(runner.compare(&[Stack::naive()]));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", runner::table(&reports));
    }
    Ok(())
}
