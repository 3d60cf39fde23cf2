//! `cloudrun-launch` entry point: parse, set up logging, run, map the outcome to an exit code.

use std::io::IsTerminal;

use cloudrun_launch::{cli::Cli, error_chain, run, Context};

fn main() {
    let cli = Cli::parse_normalized();
    let level = match cli.global.verbose {
        0 => "warn,cloudrun=info,cloudrun_launch=info",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a pipe or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();

    let env = |k: &str| std::env::var(k).ok();
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let default_agent = std::env::current_exe().ok().and_then(|p| {
        p.parent()
            .map(|d| d.join(cloudrun::layout::AGENT_BINARY_NAME))
    });
    let ctx = Context {
        env: &env,
        cwd,
        default_agent,
        tokens: None,
        progress: std::io::stderr().is_terminal(),
        terminal: std::io::stdout().is_terminal(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(cloudrun_launch::EXIT_FAILURE);
        }
    };
    let mut stdout = std::io::stdout();
    let code = match runtime.block_on(run(cli, &ctx, &mut stdout)) {
        Ok(code) => code,
        // The reader closed stdout (`status | head`): nothing left to say, and no one to
        // say it to; end at once and quietly, as coreutils do under `head`.
        Err(e) if e.is_broken_pipe() => 0,
        Err(e) => {
            let err = anyhow::Error::new(e);
            eprintln!("error: {}", error_chain(err.as_ref()));
            err.downcast_ref::<cloudrun_launch::Error>()
                .map(cloudrun_launch::Error::exit_code)
                .unwrap_or(cloudrun_launch::EXIT_FAILURE)
        }
    };
    std::process::exit(code);
}
