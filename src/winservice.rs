//! zpxe as a Windows service: `zpxe service install|uninstall|start|stop|configure`, and the
//! entry point the service control manager (SCM) starts (`zpxe service run`).
//!
//! SCM stop and shutdown drain as SIGTERM does on Linux ([`Stop::drain`]): no new transfers,
//! those under way finish, for at most `server.drain-timeout-ms`. While draining the service
//! reports STOP_PENDING, moving its checkpoint every second with a wait hint, so the SCM
//! knows it is alive.
//!
//! A parameter change (`sc control zpxe paramchange`, or `zpxe service reload`) reloads the
//! configuration as SIGHUP does on Linux ([`Reloader::reload`], run on the service's main
//! thread, never on an event loop). `zpxe reload` asks the same over the named pipe
//! [`CONTROL_PIPE`] (Administrators and SYSTEM only) and prints the answer with the same exit
//! codes as on Linux: 0 reloaded, 3 reloaded but some keys need a restart, 2 refused, 1 no
//! answer. A console `zpxe serve` listens on the pipe too.
//!
//! The service writes its events to the Application event log under the source `zpxe`
//! (registered by `zpxe service install` and by the MSI): started, draining, stopped, reloads
//! and configuration problems. Its log goes to `logs\zpxe.log` beside its configuration
//! (`log.file` to move it), rotated by size (`log.max-size`, `log.keep`).
//!
//! The service runs as NT AUTHORITY\LocalService: Windows needs no privilege for ports below
//! 1024, so that account serves 67, 69 and 4011. It cannot change the firewall, so the rules
//! are made when the service is installed (elevated): by `zpxe service install`, or by the
//! MSI through `zpxe service configure`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};
use zpxe_platform::windows_eventlog::{self as eventlog, EventSource, Level};
use zpxe_platform::windows_pipe::{self, PipeServer};

use crate::config::Config;
use crate::firewall;
use crate::logging::{LogGuard, Rotation};
use crate::serve::control::{self, Answer};
use crate::serve::{ConfigSource, Reloader, Stop};

/// The service's name (`sc query zpxe`).
pub const SERVICE_NAME: &str = "zpxe";
const DISPLAY_NAME: &str = "zpxe network-boot server";
const DESCRIPTION: &str = "proxyDHCP/PXE, TFTP and HTTP for network boot";
/// A least-privilege built-in account: enough for every port zpxe binds on Windows.
pub const ACCOUNT: &str = r"NT AUTHORITY\LocalService";
/// How often a draining service moves its STOP_PENDING checkpoint.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The wait hint sent with each checkpoint: the SCM gives up on a service whose checkpoint
/// does not move within it.
const WAIT_HINT: Duration = Duration::from_secs(10);
/// Service-specific exit codes (the SCM shows them; recovery actions restart on them).
const EXIT_BAD_CONFIG: u32 = 2;
const EXIT_FAILED: u32 = 1;
/// The pipe `zpxe reload` talks to by default.
pub const CONTROL_PIPE: &str = r"\\.\pipe\zpxe-control";

/// Event ids in the Application log (source `zpxe`).
const EVENT_STARTED: u32 = 1;
const EVENT_STOPPED: u32 = 2;
const EVENT_DRAINING: u32 = 3;
const EVENT_CONFIG: u32 = 4;
const EVENT_RELOADED: u32 = 5;
const EVENT_FAILED: u32 = 6;

/// `zpxe service`.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Register the service (elevated prompt): starts at boot as LocalService, restarts on
    /// failure; creates the firewall rules unless firewall.manage = false.
    Install {
        /// Configuration the service serves (default %ProgramData%\zpxe\zpxe.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Stop (draining) and remove the service, and remove zpxe's firewall rules.
    Uninstall,
    /// Start the service.
    Start,
    /// Stop the service: it drains, as `serve` does on SIGTERM.
    Stop,
    /// Send the service a parameter change (as `sc control zpxe paramchange`): it reloads its
    /// configuration. The outcome goes to its log and the event log; `zpxe reload` prints it.
    Reload,
    /// What the MSI removes at uninstall: zpxe's firewall rules and its event log source.
    #[command(hide = true)]
    Cleanup,
    /// Recovery actions, the event log source and firewall rules for a service registered by
    /// the MSI.
    Configure {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The entry point the service control manager starts (not for a prompt).
    #[command(hide = true)]
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log file (appended; default logs\zpxe.log beside the configuration file).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
}

/// %ProgramData%\zpxe (C:\ProgramData\zpxe when the variable is missing).
pub fn data_dir() -> PathBuf {
    std::env::var_os("ProgramData")
        .map_or_else(|| PathBuf::from(r"C:\ProgramData"), PathBuf::from)
        .join("zpxe")
}

/// Where the service logs unless told: `logs\zpxe.log` beside its configuration
/// (%ProgramData%\zpxe\logs\zpxe.log for the installed one). Not from %ProgramData% itself:
/// a service's environment is its account's (Wine gives LocalService C:\users\Public there).
fn default_log(config: &Path) -> PathBuf {
    let dir = config.parent().unwrap_or(Path::new("."));
    dir.join("logs").join("zpxe.log")
}

/// Runs `zpxe service ...`; it sets up its own logging (the service has no console).
pub fn main(command: ServiceCommand) -> std::process::ExitCode {
    let result = match command {
        ServiceCommand::Run { config, log } => {
            let events = Events::open();
            // The log's place and size come from the configuration when it reads; a broken one
            // is reported (log and event log) once the service runs.
            let section = Config::load(&config).map(|c| c.log).unwrap_or_default();
            let dir = config.parent().unwrap_or(Path::new("."));
            let rotation = match log {
                Some(file) => section.rotation_to(file),
                None => section
                    .rotation(dir)
                    .unwrap_or_else(|| section.rotation_to(default_log(&config))),
            };
            let guard = init_file_logging(&rotation, section.format, &events);
            let result = run(config, events);
            drop(guard);
            result
        }
        command => {
            init_console_logging();
            manage(command)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zpxe: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_console_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .try_init();
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Logs to the rotated file; without a writable file the service runs with the event log
/// only, rather than not at all (and says so there).
fn init_file_logging(
    rotation: &Rotation,
    format: crate::logging::LogFormat,
    events: &Events,
) -> LogGuard {
    match crate::logging::init("info", format, Some(rotation)) {
        Ok(guard) => guard,
        Err(e) => {
            events.report(
                Level::Warning,
                EVENT_CONFIG,
                &format!("zpxe runs without a log file: {e}"),
            );
            LogGuard::default()
        }
    }
}

/// The service's events in the Application log; a failure to write one goes to the log file.
#[derive(Debug)]
pub struct Events(Option<EventSource>);

impl Events {
    fn open() -> Self {
        Self(EventSource::open(SERVICE_NAME).ok())
    }

    fn report(&self, level: Level, id: u32, text: &str) {
        match &self.0 {
            Some(source) => {
                if let Err(e) = source.report(level, id, text) {
                    tracing::warn!(error = %e, id, "could not write to the event log");
                }
            }
            None => tracing::warn!(id, "could not write to the event log: no event source"),
        }
    }
}

/// The pipe `name` names: a full `\\.\pipe\...` path, or a bare name below it.
fn pipe_name(name: Option<&Path>) -> String {
    let name = name.map_or_else(
        || CONTROL_PIPE.to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    if name.starts_with(r"\\") {
        name
    } else {
        format!(r"\\.\pipe\{name}")
    }
}

/// Answers `zpxe reload` on the pipe `name` (default [`CONTROL_PIPE`]) with `reloader`.
pub fn control_listen(name: Option<&Path>, reloader: Reloader) -> anyhow::Result<PipeServer> {
    listen(name, move |line| control::reply(&reloader, line))
}

fn listen(
    name: Option<&Path>,
    answer: impl Fn(&str) -> String + Send + 'static,
) -> anyhow::Result<PipeServer> {
    let name = pipe_name(name);
    let pipe = windows_pipe::serve(&name, "zpxe-control", move |request| {
        answer(&String::from_utf8_lossy(request)).into_bytes()
    })
    .with_context(|| format!("control pipe {name}"))?;
    tracing::info!(pipe = %name, "control pipe: `zpxe reload` reloads");
    Ok(pipe)
}

/// `zpxe reload` on Windows: asks the server on the pipe `name` (default [`CONTROL_PIPE`]).
pub fn control_request(name: Option<&Path>) -> std::io::Result<Answer> {
    let name = pipe_name(name);
    let reply = windows_pipe::request(&name, b"reload\n").map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot reach zpxe's control pipe {name}: {e} (is the service or `zpxe serve` \
                 running? the pipe is open to Administrators only: use an elevated prompt)"
            ),
        )
    })?;
    control::parse(&String::from_utf8_lossy(&reply), &name)
}

fn manage(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Install { config } => install(config),
        ServiceCommand::Uninstall => uninstall(),
        ServiceCommand::Start => start(),
        ServiceCommand::Stop => stop(),
        ServiceCommand::Reload => {
            eventlog::param_change(SERVICE_NAME)
                .context("sending the service a parameter change (elevated prompt?)")?;
            println!(
                "service {SERVICE_NAME}: reloading; the outcome is in its log and the event log \
                 (`zpxe reload` prints it)"
            );
            Ok(())
        }
        ServiceCommand::Configure { config } => {
            let (config, _) = load(config)?;
            let manager =
                ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
                    .context("opening the service control manager")?;
            let service = manager
                .open_service(SERVICE_NAME, ServiceAccess::CHANGE_CONFIG)
                .context("opening the zpxe service")?;
            set_recovery(&service)?;
            eventlog::register_source(SERVICE_NAME).context("registering the event log source")?;
            println!("registered the event log source {SERVICE_NAME} (Application log)");
            firewall_at_install(&config)
        }
        ServiceCommand::Cleanup => {
            // Both are tried; either failing fails the command.
            let rules =
                firewall::remove(&mut firewall::SystemNetsh).context("removing the firewall rules");
            let source =
                eventlog::deregister_source(SERVICE_NAME).context("removing the event log source");
            if rules.is_ok() {
                println!("removed zpxe's Windows Firewall rules");
            }
            if source.is_ok() {
                println!("removed the event log source {SERVICE_NAME}");
            }
            rules.and(source)
        }
        ServiceCommand::Run { .. } => Ok(()),
    }
}

/// The configuration file (absolute: the service's working directory is system32) and its
/// contents, validated.
fn load(config: Option<PathBuf>) -> anyhow::Result<(Config, PathBuf)> {
    let path = config.unwrap_or_else(|| data_dir().join("zpxe.toml"));
    let path = std::path::absolute(&path).unwrap_or(path);
    let config = Config::load(&path).map_err(|p| anyhow::anyhow!("{p}"))?;
    Ok((config, path))
}

fn install(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, path) = load(config)?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("opening the service control manager (run from an elevated prompt)")?;
    let exe = std::env::current_exe().context("finding zpxe.exe")?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            path.clone().into_os_string(),
        ],
        dependencies: Vec::new(),
        account_name: Some(ACCOUNT.into()),
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG)
        .context("creating the zpxe service")?;
    service
        .set_description(DESCRIPTION)
        .context("describing the service")?;
    set_recovery(&service)?;
    eventlog::register_source(SERVICE_NAME).context("registering the event log source")?;
    firewall_at_install(&config)?;
    println!(
        "installed service {SERVICE_NAME} ({ACCOUNT}, starts at boot) serving {}; start it with \
         `zpxe service start`",
        path.display()
    );
    Ok(())
}

/// Restart after 5 s, 10 s, then 60 s; the count resets after a day without failure. A stop
/// with an error code (a bad configuration, a bind failure) counts as a failure too.
fn set_recovery(service: &windows_service::service::Service) -> anyhow::Result<()> {
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(5), restart(10), restart(60)]),
        })
        .context("setting the recovery actions")?;
    // Without this flag only a crash restarts the service. Wine 8.0 refuses the flag
    // (ERROR_INVALID_LEVEL); Windows has it since Vista. Missing it weakens recovery but must
    // not fail an installation.
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        tracing::warn!(
            error = %e,
            "recovery actions apply to crashes only: could not extend them to stops with an error"
        );
    }
    Ok(())
}

fn firewall_at_install(config: &Config) -> anyhow::Result<()> {
    if !config.firewall.manage() {
        println!("firewall.manage = false: no firewall rules created");
        return Ok(());
    }
    let rules = firewall::rules(config);
    firewall::apply(
        &rules,
        &firewall::this_program(),
        &mut firewall::SystemNetsh,
    )
    .context("creating the firewall rules")?;
    println!("created {} Windows Firewall rules (zpxe ...)", rules.len());
    Ok(())
}

fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("opening the service control manager")?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .context("opening the zpxe service (run from an elevated prompt)")?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        println!("stopping: transfers under way may finish");
        service.stop().context("stopping the service")?;
        wait_for(&service, ServiceState::Stopped, Duration::from_secs(120))?;
    }
    service.delete().context("deleting the service")?;
    println!("removed service {SERVICE_NAME}");
    eventlog::deregister_source(SERVICE_NAME).context("removing the event log source")?;
    firewall::remove(&mut firewall::SystemNetsh).context("removing the firewall rules")?;
    println!("removed zpxe's Windows Firewall rules");
    Ok(())
}

fn start() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .context("opening the zpxe service")?;
    service.start::<&str>(&[]).context("starting the service")?;
    wait_for(&service, ServiceState::Running, Duration::from_secs(60))?;
    println!("service {SERVICE_NAME} running");
    Ok(())
}

fn stop() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
        )
        .context("opening the zpxe service")?;
    service.stop().context("stopping the service")?;
    println!("draining: transfers under way may finish");
    wait_for(&service, ServiceState::Stopped, Duration::from_secs(600))?;
    println!("service {SERVICE_NAME} stopped");
    Ok(())
}

/// Waits until the service reaches `want`; fails if it stops instead of running.
fn wait_for(
    service: &windows_service::service::Service,
    want: ServiceState,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = service.query_status()?;
        if status.current_state == want {
            return Ok(());
        }
        if want == ServiceState::Running && status.current_state == ServiceState::Stopped {
            anyhow::bail!(
                "the service stopped ({:?}); its log is logs\\zpxe.log beside its configuration",
                status.exit_code
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!("the service is still {:?}", status.current_state);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The configuration `service run` was given, for the service's main function (the SCM
/// passes it the start parameters, not the command line).
static CONFIG_FILE: OnceLock<PathBuf> = OnceLock::new();
/// The service's event source, opened by `service run`.
static EVENTS: OnceLock<Events> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// `zpxe service run`: hands this thread to the SCM's dispatcher until the service stops.
fn run(config: PathBuf, events: Events) -> anyhow::Result<()> {
    let _ = CONFIG_FILE.set(config);
    let _ = EVENTS.set(events);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)
        .context("connecting to the service control manager (this is the service's entry point, started by the SCM)")
}

fn service_main(_arguments: Vec<OsString>) {
    let events = EVENTS.get_or_init(Events::open);
    if events.0.is_some() {
        tracing::info!(
            source = SERVICE_NAME,
            "events go to the Application event log"
        );
    }
    if let Err(e) = run_service(events) {
        tracing::error!("service: {e:#}");
    }
}

/// What the SCM asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Stop,
    Shutdown,
    /// SERVICE_CONTROL_PARAMCHANGE: reload the configuration.
    Reload,
}

/// Reloads and reports the outcome in the event log (the reload logs it too).
fn reload_reporting(reloader: &Reloader, events: &Events) {
    match reloader.reload() {
        Ok(r) if r.restart_needed.is_empty() => events.report(
            Level::Information,
            EVENT_RELOADED,
            &format!(
                "configuration reloaded: generation {} serves new requests",
                r.generation
            ),
        ),
        Ok(r) => events.report(
            Level::Warning,
            EVENT_RELOADED,
            &format!(
                "configuration reloaded: generation {} serves new requests; these changed keys \
                 need a restart and keep their running values: {}",
                r.generation,
                r.restart_needed.join(", ")
            ),
        ),
        Err(e) => events.report(
            Level::Error,
            EVENT_CONFIG,
            &format!("reload refused; the previous configuration keeps serving:\n{e}"),
        ),
    }
}

fn run_service(events: &'static Events) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let reload_tx = tx.clone();
    // The handler reports STOP_PENDING itself before it returns: the SCM hands the status at
    // that moment to whoever sent the stop (`sc stop` prints it), and the main thread may not
    // have woken yet.
    let registered: std::sync::Arc<OnceLock<service_control_handler::ServiceStatusHandle>> =
        std::sync::Arc::default();
    let in_handler = std::sync::Arc::clone(&registered);
    let stopping = move |request: Request| {
        if let Some(status) = in_handler.get() {
            let _ = status.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: ServiceState::StopPending,
                controls_accepted: ServiceControlAccept::empty(),
                exit_code: ServiceExitCode::NO_ERROR,
                checkpoint: 0,
                wait_hint: WAIT_HINT,
                process_id: None,
            });
        }
        let _ = tx.send(request);
        ServiceControlHandlerResult::NoError
    };
    let handler = move |control| match control {
        ServiceControl::Stop => stopping(Request::Stop),
        ServiceControl::Shutdown => stopping(Request::Shutdown),
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        // The main thread reloads: the handler must return at once.
        ServiceControl::ParamChange => {
            tracing::info!("parameter change: reloading the configuration");
            let _ = reload_tx.send(Request::Reload);
            ServiceControlHandlerResult::NoError
        }
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = service_control_handler::register(SERVICE_NAME, handler)
        .context("registering the service control handler")?;
    let _ = registered.set(status);
    let report = |state, accept, exit_code, checkpoint, wait_hint| {
        let s = ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accept,
            exit_code,
            checkpoint,
            wait_hint,
            process_id: None,
        };
        if let Err(e) = status.set_service_status(s) {
            tracing::warn!(error = %e, ?state, "could not report the service status");
        }
    };
    let none = ServiceControlAccept::empty();
    let stopped_with = |code: u32| {
        report(
            ServiceState::Stopped,
            none,
            ServiceExitCode::ServiceSpecific(code),
            0,
            Duration::ZERO,
        )
    };
    report(
        ServiceState::StartPending,
        none,
        ServiceExitCode::NO_ERROR,
        1,
        WAIT_HINT,
    );

    let Some(path) = CONFIG_FILE.get() else {
        stopped_with(EXIT_BAD_CONFIG);
        anyhow::bail!("no configuration file given");
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            events.report(
                Level::Error,
                EVENT_CONFIG,
                &format!("zpxe did not start: configuration problems:\n{problems}"),
            );
            stopped_with(EXIT_BAD_CONFIG);
            anyhow::bail!("configuration problems:\n{problems}");
        }
    };
    for w in config.warnings() {
        tracing::warn!(problem = %w, "configuration");
    }
    let drain_for = Duration::from_millis(config.server.drain_timeout_ms);
    let stop = Stop::new();
    // A reload reads the same file again.
    let source = {
        let path = path.clone();
        ConfigSource::new(move || Config::load(&path).map_err(|p| anyhow::anyhow!("{p}")))
    };
    let handle = match crate::serve::start_reloadable(config, stop.clone(), Some(source)) {
        Ok(h) => h,
        Err(e) => {
            events.report(
                Level::Error,
                EVENT_FAILED,
                &format!("zpxe did not start: {e:#}"),
            );
            stopped_with(EXIT_FAILED);
            return Err(e.context("starting"));
        }
    };
    let reloader = handle.reloader();
    // `zpxe reload`: the same reload, its answer printed by the caller. Without the pipe
    // (its name taken), a parameter change still reloads.
    let _pipe = {
        let reloader = reloader.clone();
        match listen(None, move |line| {
            let answer = control::reply(&reloader, line);
            let (status, rest) = answer.split_once('\n').unwrap_or((&answer, ""));
            let (level, id) = match status {
                "reloaded" => (Level::Information, EVENT_RELOADED),
                "restart-needed" => (Level::Warning, EVENT_RELOADED),
                _ => (Level::Error, EVENT_CONFIG),
            };
            events.report(level, id, rest.trim_end());
            answer
        }) {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                let text = format!(
                    "no control pipe: `zpxe reload` cannot reach the service ({e:#}); \
                     `zpxe service reload` still reloads"
                );
                tracing::warn!("{text}");
                events.report(Level::Warning, EVENT_FAILED, &text);
                None
            }
        }
    };
    let (done_tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("zpxe-service-join".into())
        .spawn(move || {
            let _ = done_tx.send(handle.join());
        })
        .context("starting the join thread")?;
    report(
        ServiceState::Running,
        ServiceControlAccept::STOP
            | ServiceControlAccept::SHUTDOWN
            | ServiceControlAccept::PARAM_CHANGE,
        ServiceExitCode::NO_ERROR,
        0,
        Duration::ZERO,
    );
    tracing::info!(service = SERVICE_NAME, "service running");
    events.report(
        Level::Information,
        EVENT_STARTED,
        &format!("zpxe started, serving {}", path.display()),
    );

    // Wait for the SCM, or for the loops to end by themselves (a fatal error).
    let early = loop {
        match rx.recv_timeout(PROGRESS_EVERY) {
            Ok(Request::Reload) => reload_reporting(&reloader, events),
            Ok(request) => {
                tracing::info!(
                    ?request,
                    timeout_ms = drain_for.as_millis() as u64,
                    "draining: no new transfers, those under way may finish"
                );
                events.report(
                    Level::Information,
                    EVENT_DRAINING,
                    &format!(
                        "zpxe is draining ({request:?}): no new transfers, those under way may \
                         finish within {} ms",
                        drain_for.as_millis()
                    ),
                );
                break None;
            }
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {
                if let Ok(result) = done.try_recv() {
                    break Some(result);
                }
            }
        }
    };
    let result = match early {
        Some(result) => result,
        None => drain(&stop, &done, drain_for, |checkpoint| {
            report(
                ServiceState::StopPending,
                none,
                ServiceExitCode::NO_ERROR,
                checkpoint,
                WAIT_HINT,
            )
        }),
    };
    match &result {
        Ok(()) => {
            tracing::info!("stopped");
            events.report(Level::Information, EVENT_STOPPED, "zpxe stopped");
            report(
                ServiceState::Stopped,
                none,
                ServiceExitCode::NO_ERROR,
                0,
                Duration::ZERO,
            );
        }
        Err(e) => {
            tracing::error!("stopped: {e:#}");
            events.report(
                Level::Error,
                EVENT_FAILED,
                &format!("zpxe stopped with an error: {e:#}"),
            );
            stopped_with(EXIT_FAILED);
        }
    }
    result
}

/// Drains the server: reports progress (`progress(checkpoint)`, checkpoints 1, 2, ...) at
/// once and every [`PROGRESS_EVERY`] until the loops end (`done`); after `drain_for` the
/// transfers still under way are cut.
fn drain(
    stop: &Stop,
    done: &Receiver<anyhow::Result<()>>,
    drain_for: Duration,
    mut progress: impl FnMut(u32),
) -> anyhow::Result<()> {
    let deadline = Instant::now() + drain_for;
    let mut checkpoint = 1;
    progress(checkpoint);
    stop.drain();
    loop {
        match done.recv_timeout(PROGRESS_EVERY) {
            Ok(result) => return result,
            Err(RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the server's threads ended without a result")
            }
            Err(RecvTimeoutError::Timeout) => {
                checkpoint += 1;
                progress(checkpoint);
                if Instant::now() >= deadline && !stop.stopped() {
                    tracing::warn!("drain timeout: cutting the transfers still under way");
                    stop.stop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drain asks the server to drain, moves the checkpoint while it runs, and returns
    /// when the server ends.
    #[test]
    fn drain_reports_progress_until_the_server_ends() {
        let stop = Stop::new();
        let (tx, rx) = mpsc::channel();
        let watched = stop.clone();
        let server = std::thread::spawn(move || {
            while !watched.draining() {
                std::thread::sleep(Duration::from_millis(10));
            }
            // A transfer under way takes a while to finish.
            std::thread::sleep(Duration::from_millis(2500));
            let _ = tx.send(Ok(()));
        });
        let mut seen = Vec::new();
        drain(&stop, &rx, Duration::from_secs(60), |c| seen.push(c)).expect("drained");
        server.join().expect("server thread");
        assert!(stop.draining() && !stop.stopped());
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
        assert_eq!(seen[0], 1);
    }

    /// Past the drain timeout the transfers still under way are cut.
    #[test]
    fn drain_cuts_at_the_timeout() {
        let stop = Stop::new();
        let (tx, rx) = mpsc::channel();
        let watched = stop.clone();
        let server = std::thread::spawn(move || {
            while !watched.stopped() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = tx.send(Ok(()));
        });
        let started = Instant::now();
        drain(&stop, &rx, Duration::from_millis(100), |_| {}).expect("drained");
        server.join().expect("server thread");
        assert!(stop.stopped());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
