use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use zpxe::config::{Config, PortRange};

/// zpxe: proxyDHCP/PXE, TFTP and HTTP network-boot server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve PXE clients.
    Serve(ServeArgs),
    /// Validate a configuration file and print every problem with its position, warnings too.
    /// Exit status 2 when there is a problem.
    Check {
        /// Default: /etc/zpxe/zpxe.toml (%ProgramData%\zpxe\zpxe.toml on Windows).
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Which rule decided and the exact reply zpxe gives a client ("why won't it PXE?").
    Explain(zpxe::explain::ExplainArgs),
    /// Reload a running `zpxe serve` (as SIGHUP does) and print its answer: every problem with
    /// its position when the new configuration is refused, the keys that need a restart.
    /// Exit status: 0 reloaded, 2 refused (the old configuration keeps serving), 3 reloaded
    /// but some changed keys need a restart, 1 no answer.
    Reload {
        /// The server's control socket (`zpxe serve --control`); default /run/zpxe/control.sock,
        /// else zpxe/control.sock in the temporary directory. On Windows a named pipe, default
        /// \\.\pipe\zpxe-control (the service's; from an elevated prompt).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// The machine registry of a running zpxe (its API): list, add, rm, import FILE.csv.
    Machines(zpxe::machines_cli::MachinesArgs),
    /// Serve a generated image set on loopback and boot a storm of simulated clients through it.
    Demo(zpxe::demo::DemoArgs),
    /// The boot-storm simulator (same as `zpxe-loadgen`; `zpxe loadgen --help`).
    #[command(disable_help_flag = true)]
    Loadgen {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Firewall rules for the configuration: print them for any firewall (and on Windows,
    /// create or remove them).
    Firewall {
        #[command(subcommand)]
        command: zpxe::firewall::FirewallCommand,
    },
    /// The Windows service: install, uninstall, start, stop (and `run`, its entry point).
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        command: zpxe::winservice::ServiceCommand,
    },
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// TOML configuration file (default: /etc/zpxe/zpxe.toml, or %ProgramData%\zpxe\zpxe.toml
    /// on Windows, when it exists), with the `conf.d/*.toml` beside it.
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory to serve (overrides server.root).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Address to listen on; repeat for several (default: all IPv4 addresses).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<std::net::IpAddr>,
    #[arg(long, value_name = "PORT")]
    dhcp_port: Option<u16>,
    #[arg(long, value_name = "PORT")]
    pxe_port: Option<u16>,
    #[arg(long, value_name = "PORT")]
    tftp_port: Option<u16>,
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    #[arg(long, value_name = "PORT")]
    web_port: Option<u16>,
    /// Ports for TFTP transfers, LO-HI.
    #[arg(long, value_name = "LO-HI", value_parser = parse_range)]
    tftp_port_range: Option<PortRange>,
    /// Answer every TFTP transfer from the TFTP port itself (for NAT and firewalls).
    #[arg(long)]
    tftp_single_port: bool,
    #[arg(long)]
    no_dhcp: bool,
    #[arg(long)]
    no_tftp: bool,
    #[arg(long)]
    no_http: bool,
    #[arg(long)]
    no_web: bool,
    /// Event loops; 0 = one per core.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Send TFTP windows one datagram per send instead of with UDP GSO.
    #[arg(long)]
    no_gso: bool,
    /// Where boots are recorded (overrides database.url): sqlite:///path/file.db or
    /// postgres://user@host/db.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Record no boots (database.enabled = false; wins over --database-url).
    #[arg(long)]
    no_database: bool,
    /// The control socket `zpxe reload` talks to (default: $RUNTIME_DIRECTORY/control.sock,
    /// else /run/zpxe/control.sock, else zpxe/control.sock in the temporary directory). On
    /// Windows a named pipe (default \\.\pipe\zpxe-control).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    PortRange::parse(s)
}

impl ServeArgs {
    /// No `--config`: the default file, when it exists (else built-in defaults and flags).
    fn resolve_config(&mut self) {
        if self.config.is_none() {
            let default = zpxe::config::default_path();
            self.config = default.is_file().then_some(default);
        }
    }

    fn into_config(mut self) -> anyhow::Result<Config> {
        self.resolve_config();
        // Flags override the file; the whole result is validated once, after.
        let (mut config, text) = match &self.config {
            Some(file) => Config::read(file).map_err(|p| anyhow::anyhow!("{p}"))?,
            None => (Config::default(), String::new()),
        };
        if let Some(root) = self.root {
            config.server.root = toml::Spanned::new(0..0, root);
        }
        if !self.listen.is_empty() {
            config.server.listen = self
                .listen
                .iter()
                .map(|a| toml::Spanned::new(0..0, a.to_string()))
                .collect();
        }
        let ports = &mut config.ports;
        for (flag, port) in [
            (self.dhcp_port, &mut ports.dhcp),
            (self.pxe_port, &mut ports.pxe),
            (self.tftp_port, &mut ports.tftp),
            (self.http_port, &mut ports.http),
            (self.web_port, &mut ports.web),
        ] {
            if let Some(p) = flag {
                *port = p;
            }
        }
        if let Some(r) = self.tftp_port_range {
            ports.tftp_range = Some(toml::Spanned::new(0..0, r.into()));
        }
        if self.tftp_single_port {
            config.tftp.single_port = true;
        }
        let services = &mut config.services;
        services.dhcp &= !self.no_dhcp;
        services.tftp &= !self.no_tftp;
        services.http &= !self.no_http;
        services.web &= !self.no_web;
        if let Some(t) = self.threads {
            config.server.threads = t;
        }
        if self.no_gso {
            config.server.udp_gso = false;
        }
        if let Some(url) = self.database_url {
            config.database.url = toml::Spanned::new(0..0, url);
            config.database.enabled = true;
        }
        if self.no_database {
            config.database.enabled = false;
        }
        let problems = config.validate(
            self.config.as_deref().unwrap_or("command line".as_ref()),
            &text,
        );
        if !problems.is_empty() {
            anyhow::bail!("{}", zpxe::config::Problems(problems));
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Loadgen { args } = cli.command {
        let argv = std::iter::once(std::ffi::OsString::from("zpxe loadgen")).chain(args);
        return zpxe_loadgen::cli::main_with_args(argv);
    }
    // The service logs to its own file: the service manager gives it no console.
    #[cfg(windows)]
    if let Command::Service { command } = cli.command {
        return zpxe::winservice::main(command);
    }
    // The demo prints a report; per-request logs would drown it.
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    // `serve` logs as its configuration says (`[log]`), once it is read.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(default_level);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Reload { control } => return reload(control),
        Command::Check { config } => return check(config),
        Command::Explain(args) => explain(args),
        Command::Demo(args) => zpxe::demo::run(args).context("demo"),
        Command::Firewall { command } => zpxe::firewall::run(command),
        Command::Machines(args) => return zpxe::machines_cli::main(args),
        Command::Loadgen { .. } => Ok(()),
        #[cfg(windows)]
        Command::Service { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zpxe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `zpxe serve`, reloadable: a reload reads the file again and applies the same flags.
fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    args.resolve_config();
    let config = args.clone().into_config()?;
    // `log.file`, relative to the configuration file's directory; unset, stderr.
    let dir = args
        .config
        .as_deref()
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new("."));
    let _log = zpxe::logging::init("info", config.log.format, config.log.rotation(dir).as_ref())
        .context("log.file")?;
    for w in config.warnings() {
        tracing::warn!(problem = %w, "configuration");
    }
    let control = args.control.clone();
    let source = zpxe::serve::ConfigSource::new(move || args.clone().into_config());
    serve_until_signalled(config, source, control)
}

/// `zpxe reload`: asks the server on the control socket (a named pipe on Windows) and prints
/// its answer.
fn reload(control: Option<PathBuf>) -> ExitCode {
    use zpxe::serve::control::Answer;
    #[cfg(unix)]
    let answer = {
        use zpxe::serve::control;
        control::request(&control.unwrap_or_else(control::default_client_path))
    };
    #[cfg(windows)]
    let answer = zpxe::winservice::control_request(control.as_deref());
    match answer {
        Ok(Answer::Reloaded(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Answer::RestartNeeded(text)) => {
            print!("{text}");
            ExitCode::from(3)
        }
        Ok(Answer::Refused(text)) => {
            eprint!("{text}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("zpxe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `zpxe serve`: runs until SIGTERM or SIGINT, then drains ([`zpxe::serve::Stop::drain`]) for
/// at most `server.drain-timeout-ms`; a second signal, or the timeout, stops at once. SIGHUP
/// and `zpxe reload` (the control socket) reload ([`zpxe::serve::Reloader`]).
fn serve_until_signalled(
    config: Config,
    source: zpxe::serve::ConfigSource,
    control: Option<PathBuf>,
) -> anyhow::Result<()> {
    let drain_for = std::time::Duration::from_millis(config.server.drain_timeout_ms);
    // Before any thread starts: the event loops inherit the blocked mask, so only the waiting
    // thread below ever takes the signals.
    let signals =
        zpxe_platform::signals::Terminations::block().context("blocking SIGTERM and SIGINT")?;
    zpxe::firewall::at_start(&config);
    let stop = zpxe::serve::Stop::new();
    let handle = zpxe::serve::start_reloadable(config, stop.clone(), Some(source))?;
    let reloader = handle.reloader();
    #[cfg(unix)]
    let _control = {
        use zpxe::serve::control;
        let path = control.clone().unwrap_or_else(control::default_server_path);
        match control::listen(&path, reloader.clone()) {
            Ok(socket) => Some(socket),
            // Asked for by name: a socket the admin cannot reach is a failed start.
            Err(e) if control.is_some() => {
                handle.stop();
                let _ = handle.join();
                anyhow::bail!("control socket {}: {e}", path.display());
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "no control socket: `zpxe reload` cannot reach this server (SIGHUP still \
                     reloads; choose a path with --control)"
                );
                None
            }
        }
    };
    // Windows: a named pipe only Administrators and SYSTEM may open.
    #[cfg(windows)]
    let _control = match zpxe::winservice::control_listen(control.as_deref(), reloader.clone()) {
        Ok(pipe) => Some(pipe),
        Err(e) if control.is_some() => {
            handle.stop();
            let _ = handle.join();
            return Err(e.context("control pipe"));
        }
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "no control pipe: `zpxe reload` cannot reach this server (choose a pipe with \
                 --control)"
            );
            None
        }
    };
    std::thread::Builder::new()
        .name("zpxe-signals".into())
        .spawn(move || {
            // SIGHUP reloads (the reload logs its outcome) and waits on, also while draining.
            let next = || loop {
                match signals.wait() {
                    Ok("SIGHUP") => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        let _ = reloader.reload();
                    }
                    other => return other,
                }
            };
            let Ok(first) = next() else { return };
            tracing::info!(
                signal = first,
                timeout_ms = drain_for.as_millis() as u64,
                "draining: no new transfers, those under way may finish"
            );
            if let Err(e) = zpxe_platform::notify::stopping() {
                tracing::warn!(error = %e, "could not notify systemd");
            }
            stop.drain();
            let timer = stop.clone();
            let _ = std::thread::Builder::new()
                .name("zpxe-drain-timer".into())
                .spawn(move || {
                    std::thread::sleep(drain_for);
                    if !timer.stopped() {
                        tracing::warn!("drain timeout: cutting the transfers still under way");
                        timer.stop();
                    }
                });
            if let Ok(second) = next() {
                tracing::warn!(signal = second, "second signal: stopping now");
                stop.stop();
            }
        })
        .context("starting the signal thread")?;
    handle.join()?;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(default_level: &str) {
    let _ = zpxe::logging::init(default_level, zpxe::logging::LogFormat::Text, None);
}

/// `zpxe check`: every problem (exit status 2) and every warning, with positions.
fn check(file: Option<PathBuf>) -> ExitCode {
    let file = file.unwrap_or_else(zpxe::config::default_path);
    let config = match Config::read(&file) {
        Ok((config, _)) => config,
        Err(problems) => {
            eprint!("{problems}");
            return ExitCode::from(2);
        }
    };
    let problems = config.validate(&file, "");
    let mut warnings = config.warnings();
    if problems.is_empty() {
        warnings.extend(config.registry_warnings());
    }
    for p in problems.iter().chain(&warnings) {
        eprintln!("{p}");
    }
    if !problems.is_empty() {
        return ExitCode::from(2);
    }
    let files: Vec<String> = config
        .sources
        .files()
        .map(|f| f.display().to_string())
        .collect();
    println!(
        "{}: ok{}",
        files.join(", "),
        match warnings.len() {
            0 => String::new(),
            n => format!(" ({n} warning{})", if n == 1 { "" } else { "s" }),
        }
    );
    ExitCode::SUCCESS
}

/// `zpxe explain`: the configuration `serve` would read, then the engine's answer.
fn explain(args: zpxe::explain::ExplainArgs) -> anyhow::Result<()> {
    let file = args.config.clone().or_else(|| {
        let d = zpxe::config::default_path();
        d.is_file().then_some(d)
    });
    let config = match &file {
        Some(f) => Config::load(f).map_err(|p| anyhow::anyhow!("{p}"))?,
        None => Config::default(),
    };
    if args.client.server.is_none() && zpxe::explain::default_server(&config).is_none() {
        anyhow::bail!(
            "the reply names the address a request arrives on: give --server ADDR (or set \
             server.advertise or server.listen)"
        );
    }
    let e = zpxe::explain::explain(&config, &args.client);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", zpxe::explain::render_text(&e));
    }
    Ok(())
}
