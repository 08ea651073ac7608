//! Live reload: a new configuration for new requests, without dropping a boot.
//!
//! A reload reads and checks the whole configuration first, with the same code as `zpxe serve`
//! and `zpxe check` (the file, then the same command-line overrides as at start, then every
//! check). Anything wrong and nothing changes: the problems, each as file:line:column, go to the
//! log and back to whoever asked. Otherwise the keys a reload can apply ([`LIVE`]: boot policy,
//! menu, the advertised address, the TLS certificate and key, re-read from disk) replace the
//! running ones in one atomic store, and every other key that changed is named as needing a
//! restart and keeps its running value: sockets, loops, image stores and the database are
//! bound to them at start.
//!
//! Readers never wait: the data path loads the current [`Settings`] through an `ArcSwap` (no
//! lock), each request or connection once. A reload runs on its caller's thread (the signal
//! thread for SIGHUP, the control socket's thread for `zpxe reload`), never on an event loop,
//! so reading files and certificates delays no boot. Transfers and responses under way keep
//! what they started with.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use zpxe_engine::dhcp::ProxyDhcpConfig;
use zpxe_engine::http::BootMenu;

use crate::config::Config;

/// Keys a reload applies, as `section` (all of it) or `section.key`. Everything else that
/// changes needs a restart.
pub(crate) const LIVE: &[&str] = &[
    "boot",
    "menu",
    "server.advertise",
    "tls.cert",
    "tls.key",
    // `[[machine]]` records ([`Reloader::on_reload`], src/serve/mod.rs).
    "machine",
    // The web service's token and allow list ([`Reloader::on_reload`], src/web.rs).
    "web",
];

/// A reload hook's first half: checks the new configuration and returns what applies it
/// (run once every check passed), or an error that refuses the reload.
type Hook = Box<dyn Fn(&Config) -> anyhow::Result<Box<dyn FnOnce() + Send>> + Send + Sync>;

/// What new requests are served with. Replaced whole by a reload.
#[derive(Debug)]
pub(crate) struct Settings {
    /// 1 at start, one more per applied reload.
    pub(crate) generation: u64,
    /// The configuration in force: the running one with the [`LIVE`] keys of the last reload.
    pub(crate) config: Arc<Config>,
    pub(crate) menu: Arc<BootMenu>,
    pub(crate) proxy: ProxyDhcpConfig,
    /// Present while HTTPS runs (it is turned on or off only by a restart).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl Settings {
    fn new(generation: u64, config: Config, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            generation,
            menu: Arc::new(config.menu.clone()),
            proxy: super::proxy_config(&config),
            config: Arc::new(config),
            tls,
        }
    }
}

/// How a reload gets its new configuration: for `zpxe serve`, the file read again with the
/// same command-line overrides as at start, checked.
pub struct ConfigSource {
    load: Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
}

impl ConfigSource {
    /// `load` reads and checks the configuration; its error lists every problem, one per line,
    /// each `file:line:column: message`.
    pub fn new(load: impl Fn() -> anyhow::Result<Config> + Send + Sync + 'static) -> Self {
        Self {
            load: Box::new(load),
        }
    }
}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSource").finish_non_exhaustive()
    }
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The generation now serving new requests.
    pub generation: u64,
    /// Keys that changed but keep their running value until a restart, in key order.
    pub restart_needed: Vec<String>,
}

/// A reload that was refused: the previous configuration keeps serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError {
    /// Every problem found, one line each (`file:line:column: message` where it has a place).
    pub problems: Vec<String>,
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ReloadError {}

/// Reloads a running server; cheap to clone, usable from any thread (SIGHUP, the control
/// socket, a service manager's parameter change, a web request's worker).
#[derive(Clone)]
pub struct Reloader(Arc<Inner>);

struct Inner {
    current: ArcSwap<Settings>,
    /// `current`'s generation, for a per-datagram check without loading the settings.
    generation: AtomicU64,
    /// The configuration the server started with: what its sockets, loops and services are
    /// bound to.
    running: Arc<Config>,
    source: Option<ConfigSource>,
    /// One reload at a time. Never taken on the data path.
    serial: Mutex<()>,
    /// Other holders of live keys ([`Reloader::on_reload`]).
    hooks: Mutex<Vec<Hook>>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.generation())
            .field("source", &self.0.source)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(
        running: Config,
        tls: Option<Arc<rustls::ServerConfig>>,
        source: Option<ConfigSource>,
    ) -> Self {
        let settings = Settings::new(1, running.clone(), tls);
        Self(Arc::new(Inner {
            current: ArcSwap::from_pointee(settings),
            generation: AtomicU64::new(1),
            running: Arc::new(running),
            source,
            serial: Mutex::new(()),
            hooks: Mutex::default(),
        }))
    }

    /// `hook` takes part in every later reload: it checks the new configuration after the
    /// reload's own checks (an error refuses the reload, naming it), and what it returns runs
    /// when the reload is applied.
    pub fn on_reload(
        &self,
        hook: impl Fn(&Config) -> anyhow::Result<Box<dyn FnOnce() + Send>> + Send + Sync + 'static,
    ) {
        self.0
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// The settings new requests get.
    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.0.current.load_full()
    }

    /// The generation of [`Reloader::settings`]: 1 at start, one more per applied reload.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    /// The menu for a new script request.
    pub(crate) fn menu(&self) -> Arc<BootMenu> {
        Arc::clone(&self.0.current.load().menu)
    }

    /// The TLS configuration for a new HTTPS connection (the certificate last loaded).
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.current.load().tls.clone()
    }

    /// Reads and checks the configuration, then applies it to new requests, or keeps the
    /// running one and returns every problem. Logs the outcome either way. Blocks its caller
    /// on disk (the configuration, the certificate), so never call it on an event loop.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(r) => {
                tracing::info!(generation = r.generation, "configuration reloaded");
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        keys = %r.restart_needed.join(", "),
                        "these changed keys need a restart; they keep their running values"
                    );
                }
            }
            Err(e) => {
                tracing::error!(
                    generation = self.generation(),
                    "reload refused; the previous configuration keeps serving"
                );
                for p in &e.problems {
                    tracing::error!("{p}");
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.0.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let refuse = |problems: Vec<String>| ReloadError { problems };
        let Some(source) = &self.0.source else {
            return Err(refuse(vec![
                "this server was started without a configuration file to reload from".into(),
            ]));
        };
        let new = (source.load)().map_err(|e| {
            refuse(
                format!("{e:#}")
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        })?;
        let running = &self.0.running;
        let old = self.settings();
        let mut restart = restart_keys(running, &new);
        let mut effective = (**running).clone();
        let tls = match (&old.tls, &new.tls.cert, &new.tls.key) {
            (Some(_), Some(cert), Some(key)) => {
                let loaded =
                    // The checks read these files too; this fails only if they changed since.
                    super::https::load_config(cert.get_ref(), key.get_ref()).map_err(|e| {
                        let at = new.sources.position(&cert.span());
                        refuse(vec![format!("{at}: tls: {e:#}")])
                    })?;
                effective.tls.cert = Some(cert.clone());
                effective.tls.key = Some(key.clone());
                Some(loaded)
            }
            // HTTPS listens or not from the start: turning it on or off rebinds.
            (Some(running_tls), _, _) => {
                restart.extend(["tls.cert".to_owned(), "tls.key".to_owned()]);
                Some(Arc::clone(running_tls))
            }
            (None, Some(_), Some(_)) => {
                restart.extend(["tls.cert".to_owned(), "tls.key".to_owned()]);
                None
            }
            (None, _, _) => None,
        };
        let applies = self
            .0
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|h| h(&new))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| refuse(vec![format!("{e:#}")]))?;
        restart.sort();
        restart.dedup();
        effective.web = new.web.clone();
        effective.boot = new.boot;
        effective.menu = new.menu;
        effective.machine = new.machine;
        effective.server.advertise = new.server.advertise;
        let generation = old.generation + 1;
        self.0
            .current
            .store(Arc::new(Settings::new(generation, effective, tls)));
        self.0.generation.store(generation, Ordering::Release);
        for apply in applies {
            apply();
        }
        Ok(Reloaded {
            generation,
            restart_needed: restart,
        })
    }
}

/// Every key whose value differs between `running` and `new` and that a reload cannot apply.
fn restart_keys(running: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (keys(running), keys(new));
    let mut out: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .filter(|k| !is_live(k))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_live(key: &str) -> bool {
    LIVE.iter().any(|l| {
        key == *l
            || key
                .strip_prefix(l)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Each `section.key` of a configuration's document (as written, includes merged) with its
/// TOML value; positions are not part of a value, so moving a line changes nothing. Every key
/// written is compared without being listed here, and counts as needing a restart until it is
/// added to [`LIVE`]. A key written in one file and left out of the other counts as changed,
/// even when written with its default value.
fn keys(config: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    for (section, value) in config.sources.document() {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    out.insert(format!("{section}.{key}"), value.clone());
                }
            }
            other => {
                out.insert(section.clone(), other.clone());
            }
        }
    }
    out
}

/// `zpxe reload` talks to `zpxe serve` over a Unix socket the server creates (mode 0600, so
/// only its user and root may reload): the client sends `reload`, the server answers with a
/// status line (`reloaded`, `restart-needed` or `refused`) and then one line per message.
/// On Windows the same request and answer go over a named pipe (src/winservice.rs).
pub mod control {
    use std::io;
    #[cfg(unix)]
    use std::io::{BufRead, BufReader, Read, Write};
    #[cfg(unix)]
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    #[cfg(unix)]
    use std::os::unix::net::{UnixListener, UnixStream};
    #[cfg(unix)]
    use std::path::{Path, PathBuf};
    #[cfg(unix)]
    use std::sync::Arc;
    #[cfg(unix)]
    use std::sync::atomic::{AtomicBool, Ordering};
    #[cfg(unix)]
    use std::time::Duration;

    use super::Reloader;

    /// The socket's name in its directory.
    #[cfg(unix)]
    const NAME: &str = "control.sock";

    /// How long either side waits for the other's bytes (a reload itself takes milliseconds).
    #[cfg(unix)]
    const IO_TIMEOUT: Duration = Duration::from_secs(30);

    /// The longest request line read.
    #[cfg(unix)]
    const MAX_REQUEST: u64 = 64;

    /// Where `zpxe serve` puts the socket by default: systemd's `RuntimeDirectory`
    /// (`$RUNTIME_DIRECTORY`), else /run/zpxe (beside the port locks) when it can be made,
    /// else zpxe/ in the temporary directory.
    #[cfg(unix)]
    pub fn default_server_path() -> PathBuf {
        if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|d| std::env::split_paths(&d).next())
            .filter(|d| !d.as_os_str().is_empty())
        {
            return dir.join(NAME);
        }
        let run = Path::new(zpxe_platform::instance_lock::RUN_DIR);
        if std::fs::create_dir_all(run).is_ok() && writable(run) {
            return run.join(NAME);
        }
        std::env::temp_dir().join("zpxe").join(NAME)
    }

    /// Where `zpxe reload` looks by default: /run/zpxe when a socket is there, else the
    /// temporary directory's zpxe/.
    #[cfg(unix)]
    pub fn default_client_path() -> PathBuf {
        let run = Path::new(zpxe_platform::instance_lock::RUN_DIR).join(NAME);
        if run.exists() {
            return run;
        }
        std::env::temp_dir().join("zpxe").join(NAME)
    }

    #[cfg(unix)]
    fn writable(dir: &Path) -> bool {
        tempfile::tempfile_in(dir).is_ok()
    }

    /// The listening socket, served by a thread of its own; removed when dropped.
    #[cfg(unix)]
    #[derive(Debug)]
    pub struct ControlSocket {
        path: PathBuf,
        /// The socket file's identity, so a successor's file is never removed.
        id: (u64, u64),
        closed: Arc<AtomicBool>,
    }

    #[cfg(unix)]
    impl ControlSocket {
        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    #[cfg(unix)]
    impl Drop for ControlSocket {
        fn drop(&mut self) {
            self.closed.store(true, Ordering::Release);
            // Wakes the thread out of `accept`.
            let _ = UnixStream::connect(&self.path);
            if let Ok(m) = std::fs::symlink_metadata(&self.path)
                && (m.dev(), m.ino()) == self.id
            {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Creates the socket at `path` and answers reload requests with `reloader`. Fails when a
    /// live server already answers there; a stale file (a crashed server's) is replaced.
    #[cfg(unix)]
    pub fn listen(path: &Path, reloader: Reloader) -> io::Result<ControlSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another zpxe answers on {}", path.display()),
            ));
        }
        // Bound under a temporary name and made private before it appears under its own, so
        // nobody else can connect in between.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let m = std::fs::symlink_metadata(path)?;
        let closed = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&closed);
        std::thread::Builder::new()
            .name("zpxe-control".into())
            .spawn(move || serve(listener, reloader, stop))?;
        tracing::info!(path = %path.display(), "control socket: `zpxe reload` reloads");
        Ok(ControlSocket {
            path: path.to_owned(),
            id: (m.dev(), m.ino()),
            closed,
        })
    }

    #[cfg(unix)]
    fn serve(listener: UnixListener, reloader: Reloader, closed: Arc<AtomicBool>) {
        for stream in listener.incoming() {
            if closed.load(Ordering::Acquire) {
                return;
            }
            match stream {
                Ok(s) => {
                    if let Err(e) = answer(s, &reloader) {
                        tracing::warn!(error = %e, "control socket: request failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    #[cfg(unix)]
    fn answer(stream: UnixStream, reloader: &Reloader) -> io::Result<()> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
        (&stream).write_all(reply(reloader, &line).as_bytes())
    }

    /// The answer to one request line: `reload` reloads (on the caller's thread), anything
    /// else is refused.
    pub fn reply(reloader: &Reloader, line: &str) -> String {
        match line.trim() {
            "reload" => match reloader.reload() {
                Ok(r) if r.restart_needed.is_empty() => format!(
                    "reloaded\nconfiguration reloaded: generation {} serves new requests\n",
                    r.generation
                ),
                Ok(r) => {
                    let mut s = format!(
                        "restart-needed\nconfiguration reloaded: generation {} serves new \
                         requests\n",
                        r.generation
                    );
                    for k in &r.restart_needed {
                        s.push_str(&format!(
                            "{k}: changed, needs a restart (keeps its running value)\n"
                        ));
                    }
                    s
                }
                Err(e) => format!(
                    "refused\nreload refused; the previous configuration keeps serving\n{e}"
                ),
            },
            other => format!("refused\nunknown request {other:?}: expected \"reload\"\n"),
        }
    }

    /// What a server answered to `reload`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Answer {
        /// Applied in full.
        Reloaded(String),
        /// Applied, but some changed keys need a restart.
        RestartNeeded(String),
        /// Refused: the server keeps its configuration.
        Refused(String),
    }

    /// Asks the server listening on `path` to reload and returns its answer.
    #[cfg(unix)]
    pub fn request(path: &Path) -> io::Result<Answer> {
        let mut stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach zpxe's control socket {}: {e} (is `zpxe serve` running? \
                     its socket is set by `zpxe serve --control`)",
                    path.display()
                ),
            )
        })?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(b"reload\n")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        stream.take(1 << 20).read_to_string(&mut reply)?;
        parse(&reply, &path.display().to_string())
    }

    /// Reads a server's answer (from `from`, for the error).
    pub fn parse(reply: &str, from: &str) -> io::Result<Answer> {
        let (status, rest) = reply.split_once('\n').unwrap_or((reply, ""));
        let rest = rest.to_owned();
        match status {
            "reloaded" => Ok(Answer::Reloaded(rest)),
            "restart-needed" => Ok(Answer::RestartNeeded(rest)),
            "refused" => Ok(Answer::Refused(rest)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected answer from {from}: {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        let text = format!("[server]\nroot = \"/tmp\"\n{text}");
        Config::parse(Path::new("z.toml"), &text).expect("valid")
    }

    #[test]
    fn live_keys_need_no_restart_and_bound_keys_are_named() {
        let running = config("[ports]\nhttp = 9000\n[menu]\ntitle = \"a\"\n");
        // Only the menu, the policy and the advertised address change: nothing to restart.
        let live = config(
            "advertise = \"10.0.0.1\"\n[ports]\nhttp = 9000\n[menu]\ntitle = \"b\"\n\
             [boot]\nbios = \"x.kpxe\"\n",
        );
        assert_eq!(restart_keys(&running, &live), Vec::<String>::new());
        let moved = config("\n\n[menu]\ntitle = \"a\"\n[ports]\nhttp = 9000\n");
        assert_eq!(restart_keys(&running, &moved), Vec::<String>::new());
        // Values, not their spelling: an inline table, a literal string.
        let respelled = Config::parse(
            Path::new("z.toml"),
            "server = { root = '/tmp' }\nports = { http = 9000 }\nmenu.title = 'a'\n",
        )
        .expect("valid");
        assert_eq!(restart_keys(&running, &respelled), Vec::<String>::new());
        // A list compares whole.
        let listen =
            config("listen = [\"127.0.0.1\"]\n[ports]\nhttp = 9000\n[menu]\ntitle = \"a\"\n");
        assert_eq!(restart_keys(&running, &listen), ["server.listen"]);
        let bound = config(
            "threads = 1\n[ports]\nhttp = 9001\ntftp-range = \"64000-64100\"\n\
             [tftp]\nmax-transfers = 7\n[services]\nweb = false\n",
        );
        assert_eq!(
            restart_keys(&running, &bound),
            [
                "ports.http",
                "ports.tftp-range",
                "server.threads",
                "services.web",
                "tftp.max-transfers"
            ]
        );
    }

    #[test]
    fn a_reload_applies_live_keys_and_keeps_bound_ones() {
        let running = config("[menu]\ntitle = \"old\"\n");
        let next = std::sync::Arc::new(Mutex::new(String::new()));
        let source = {
            let next = Arc::clone(&next);
            ConfigSource::new(move || {
                let text = next.lock().expect("lock").clone();
                Config::parse(Path::new("z.toml"), &text).map_err(|p| anyhow::anyhow!("{p}"))
            })
        };
        let r = Reloader::new(running, None, Some(source));
        assert_eq!(r.generation(), 1);
        *next.lock().expect("lock") =
            "[server]\nroot = \"/tmp\"\nthreads = 1\n[menu]\ntitle = \"new\"\n\
             [boot]\nbios = \"other.kpxe\"\n"
                .into();
        let done = r.reload().expect("applied");
        assert_eq!(done.generation, 2);
        assert_eq!(done.restart_needed, ["server.threads"]);
        let s = r.settings();
        assert_eq!(s.menu.title, "new");
        assert_eq!(s.proxy.policy.bios, "other.kpxe");
        assert_eq!(
            s.config.server.threads, 0,
            "bound keys keep their running value"
        );

        *next.lock().expect("lock") = "[server]\nroot = \"/tmp\"\n[menu]\ndefault = \"none\"\n\
                                        [ports]\ntftp-range = \"9-1\"\n"
            .into();
        let refused = r.reload().expect_err("broken");
        assert_eq!(refused.problems.len(), 2, "{refused}");
        assert!(
            refused.problems.iter().all(|p| p.starts_with("z.toml:")),
            "{refused}"
        );
        assert_eq!(r.generation(), 2);
        assert_eq!(r.settings().menu.title, "new");
    }

    #[test]
    fn without_a_source_a_reload_is_refused() {
        let r = Reloader::new(config(""), None, None);
        assert!(r.reload().is_err());
        assert_eq!(r.generation(), 1);
    }
}
