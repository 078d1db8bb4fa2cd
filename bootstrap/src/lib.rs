//! How both binaries start: the command line parsed (or one clear line and exit 2), and
//! logging set up in the chosen format.

/// Log output format, `--log-format` of both binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses the command line, or says in one line what is wrong and exits 2 (`--help` and
/// `--version` print and exit 0). One clear line, not clap's usage block: both binaries
/// run unattended in pods, where the first line of the log is what people see.
pub fn parse_args_or_exit<T: clap::Parser>(program: &str) -> T {
    match T::try_parse() {
        Ok(parsed) => parsed,
        Err(error)
            if matches!(
                error.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            std::process::exit(0);
        }
        Err(error) => {
            let text = error.to_string();
            let message = text.split("\n\n").next().unwrap_or("invalid configuration");
            let words: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            exit_invalid(program, words.join(" ").trim_start_matches("error: "))
        }
    }
}

/// A setting that cannot work: one line on stderr, exit 2, before anything starts.
pub fn exit_invalid(program: &str, problem: &str) -> ! {
    eprintln!("{program}: {problem}");
    std::process::exit(2)
}

/// Sets up `tracing` to stderr in the chosen format; `RUST_LOG` (`debug`, or directives
/// such as `pod_reloaded_sidecar=debug,info`) overrides the `info` level. Parsed by
/// `Targets`, not `EnvFilter`: no regular-expression engine in a sidecar that runs in
/// every opted-in pod.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    // Colour only on a terminal: in a pod or a log file the escapes are noise.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(filter))
            .init(),
    }
}

/// An error with its causes, `: `-separated: an HTTP client's top-level message hides
/// what went wrong (refused, a TLS failure, ...).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
