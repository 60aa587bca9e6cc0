//! `brownout-gateway`: the resilient proxy, its configuration check, and the outage
//! demo. See the library's docs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

#[cfg(feature = "demo")]
use brownout_gateway::demo::Demo;
use brownout_gateway::{shutdown_signal, Config, Gateway, Observers};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// A proxy for LLM provider APIs that keeps answering through an outage, and its demo.
///
/// Without a subcommand, runs the outage demo (or serves, with --config). The demo
/// is built with the `demo` feature only.
#[derive(Parser)]
#[command(
    name = "brownout-gateway",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Serve with this configuration (the same as `serve --config FILE`).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs naive, retry-only and brownout stacks against a simulated outage and prints
    /// what their callers saw (in simulated time: it takes seconds).
    Demo(DemoArgs),
    /// Runs the proxy until SIGTERM or ctrl-c.
    Serve(ServeArgs),
    /// Checks a configuration, environment variables included, and exits.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Prints availability per model from an `[observe] sqlite` log.
    Report(ReportArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// The log file (the `[observe] sqlite` of the configuration).
    #[arg(long)]
    db: PathBuf,
    /// How far back: a duration such as 5m, 1h, 7d, or `all` for the whole log.
    #[arg(long, default_value = "1h", value_parser = parse_window)]
    window: Window,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// `--window`: a duration, or the whole log.
#[derive(Clone, Copy)]
struct Window(Option<Duration>);

fn parse_window(text: &str) -> Result<Window, String> {
    if text.trim() == "all" {
        return Ok(Window(None));
    }
    brownout::observe::report::parse_window(text).map(|d| Window(Some(d)))
}

#[derive(Args)]
struct ServeArgs {
    /// The configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Listen here instead of the configuration's `listen` (e.g. 127.0.0.1:0).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The least severe log level shown.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Log lines as text, or as one JSON object each (with the request's span).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Default)]
struct DemoArgs {
    /// A brownout-sim script (TOML) instead of the shipped outage script.
    #[arg(long)]
    script: Option<PathBuf>,
    /// A gateway configuration for the brownout stack instead of the example.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Requests per stack [default: the script's, 600 for the shipped one].
    #[arg(long)]
    requests: Option<u64>,
    /// Requests in flight at most [default: the script's, 8 for the shipped one].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Ask for streamed answers.
    #[arg(long)]
    stream: bool,
    /// Print the reports as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// A failure, and the exit status it gets: 2 for a configuration the gateway refuses,
/// 1 for anything else.
struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    fn config(error: impl std::fmt::Display) -> Self {
        Failure {
            message: error.to_string(),
            status: 2,
        }
    }

    fn runtime(error: impl std::fmt::Display) -> Self {
        Failure {
            message: error.to_string(),
            status: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Demo(args)), _) => demo(args),
        (Some(Command::Serve(args)), _) => serve(args),
        (Some(Command::Check { config }), _) => check(&config),
        (Some(Command::Report(args)), _) => report(&args),
        (None, Some(config)) => serve(ServeArgs {
            config,
            listen: None,
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
        }),
        (None, None) => demo(DemoArgs::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("brownout-gateway: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))
}

fn check(path: &PathBuf) -> Result<(), Failure> {
    // Inside a runtime, as `serve` does: the layers read tokio's clock when built.
    runtime()?.block_on(async {
        let config = Config::from_file(path).map_err(Failure::config)?;
        let routes: Vec<&str> = [
            config.messages().map(|_| "POST /v1/messages"),
            config
                .chat_completions()
                .map(|_| "POST /v1/chat/completions"),
            config.responses().map(|_| "POST /v1/responses"),
        ]
        .into_iter()
        .flatten()
        .collect();
        println!(
            "{}: ok ({} provider(s); routes: {})",
            path.display(),
            config.providers().len(),
            routes.join(", "),
        );
        // Every layer, outermost first: on or off, and whether the file set it.
        for layer in config.layers() {
            println!(
                "  {:<9} {:<4} {}",
                layer.name,
                if layer.on { "on" } else { "off" },
                if layer.set { "set" } else { "default" }
            );
        }
        // The rate limits, one line an entry.
        for entry in config.rate_limits().map_or(&[][..], |l| l.entries()) {
            println!("    limit {entry}");
        }
        // `[observe]`: the availability log and the alert rules.
        if let Some(log) = config.observe_log().sqlite() {
            println!("  sqlite log {}", log.path().display());
        }
        for rule in config.observe_log().alerts().map_or(&[][..], |a| a.rules()) {
            println!("    alert {} ({})", rule.name(), rule.condition().as_str());
        }
        // `[state]`: where the shared state is (the address only, never a password).
        if let Some(state) = config.state() {
            println!("  state     redis {:?}", state.redis());
        }
        Ok(())
    })
}

fn report(args: &ReportArgs) -> Result<(), Failure> {
    let report =
        brownout::observe::Report::read(&args.db, args.window.0).map_err(Failure::runtime)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let level = match args.log_level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    // Logs go to stderr; no layer or the gateway ever logs a header value or a body.
    let logs = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    runtime()?.block_on(async {
        let mut config = Config::from_file(&args.config).map_err(Failure::config)?;
        if let Some(listen) = args.listen {
            config = config.with_listen(listen);
        }
        for provider in config.providers() {
            tracing::info!(
                provider = provider.name(),
                api = provider.family().as_str(),
                base_url = %provider.base_url(),
                key = ?provider.key(),
                "brownout-gateway: upstream"
            );
        }
        // `[observe]`: the availability log and the alerts, started before listening;
        // closed (the log's last rows written) when this block ends, however it ends.
        let observers = Observers::new(&config).map_err(Failure::runtime)?;
        // The pipeline feeds them every request's record and every attempt's.
        let config = config.with_observers(&observers);
        let _observers = observers.close_on_drop();
        let listener = tokio::net::TcpListener::bind(config.listen())
            .await
            .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", config.listen())))?;
        let addr = listener.local_addr().map_err(Failure::runtime)?;
        // Built before saying so: the clients load their trust roots here, once, not
        // on the first request.
        let gateway = Gateway::new(&config);
        // On stdout, for whoever started the gateway (and the tests) to read.
        println!("brownout-gateway: listening on http://{addr}");
        let stopped = gateway
            .serve(listener, shutdown_signal())
            .await
            .map_err(Failure::runtime)?;
        if !stopped.drained {
            return Err(Failure::runtime(format!(
                "the shutdown grace of {:?} cut off {} connection(s) with requests in flight",
                config.shutdown_grace(),
                stopped.cut
            )));
        }
        Ok(())
    })
}

#[cfg(not(feature = "demo"))]
fn demo(_: DemoArgs) -> Result<(), Failure> {
    Err(Failure::config(
        "this build has no demo: build with `--features demo` \
         (cargo run -p brownout-gateway --features demo -- demo), or serve with --config FILE",
    ))
}

#[cfg(feature = "demo")]
fn demo(args: DemoArgs) -> Result<(), Failure> {
    let mut demo = Demo::new().stream(args.stream);
    if let Some(path) = &args.script {
        let script = brownout_sim::Script::from_file(path).map_err(Failure::config)?;
        demo = demo.script(script, path.display().to_string());
    }
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::config(format!("{}: cannot read: {e}", path.display())))?;
        demo = demo.config(text, path.display().to_string());
    }
    if let Some(requests) = args.requests {
        demo = demo.requests(requests);
    }
    if let Some(concurrency) = args.concurrency {
        demo = demo.concurrency(concurrency);
    }
    let started = std::time::Instant::now();
    let report = demo.run().map_err(Failure::config)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
        println!(
            "\n(ran in {:.1} s of wall-clock time)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
