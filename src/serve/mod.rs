//! `zpxe serve`: the engines' machines wired to the platform's event loops.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use zpxe_engine::dhcp::ProxyDhcpConfig;
use zpxe_engine::http::{BootScripts, HttpConfig};
use zpxe_platform::bind::BindError;
use zpxe_platform::runtime::{EventLoop, LoopOptions};
use zpxe_platform::tcp::TcpServer;
use zpxe_platform::{ImageStore, StoreOptions};

use crate::config::Config;
use crate::metrics::Metrics;
pub(crate) use drain::Drain;
pub use drain::Stop;
pub use hook::HookConfig;
pub use reload::control;
pub use reload::{ConfigSource, ReloadError, Reloaded, Reloader};

mod access_log;
mod dhcp;
mod dhcp_server;
mod drain;
mod handoff;
pub(crate) mod hook;
mod http;
mod https;
mod receivers;
pub(crate) mod registry;
mod reload;
mod tftp;

/// How often idle loops look at the stop flag, and how often the image store sweeps.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(250);

/// Connections the web service keeps open (reports, status, metrics; a storm's reports are
/// short requests): its own cap, so a storm filling the boot ports leaves the status reachable.
const WEB_MAX_CONNECTIONS: usize = 512;

/// Responses a web connection queues before it stops reading pipelined requests. Browsers and
/// iPXE do not pipeline; one queued answer (at most an `/api/clients` page) per connection
/// bounds what a client that sends and never reads can make the service hold.
const WEB_MAX_PIPELINED: usize = 1;

/// How often a draining loop looks whether its last transfer has ended.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// What every event loop shares.
pub(crate) struct Shared {
    /// The configuration the server started with; what a reload changes is read from
    /// `reloader` instead (menu, policy, certificate).
    pub(crate) config: Config,
    /// What new requests are served with, and how to reload it.
    pub(crate) reloader: Reloader,
    pub(crate) web: crate::web::WebService,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Stop,
    /// The access log (`http.access-log`), written by a thread of its own.
    pub(crate) access_log: Option<access_log::AccessLog>,
    /// Open connections on the boot ports (HTTP and HTTPS), against `http.max-connections`.
    pub(crate) boot_conns: Arc<http::ConnCap>,
    /// Open connections on the web service port.
    pub(crate) web_conns: Arc<http::ConnCap>,
    /// TFTP transfer ports (`ports.tftp-range`), one pool for every event loop.
    pub(crate) tftp_ports: tftp::PortPool,
    /// Where the boot services record each leg (records nothing with the database off).
    pub(crate) recorder: crate::db::Recorder,
    /// Registered machines (src/serve/registry.rs): the database's (none with it off) and
    /// the configuration's `[[machine]]` records. Always present.
    pub(crate) registry: Option<Arc<crate::db::Registry>>,
    /// The request-handler hook (src/serve/hook.rs), when `boot.hook-url` is set.
    pub(crate) hook: Option<Arc<hook::Hook>>,
    /// With `server.loop-handoff` and more than one loop: loop 0 listens and hands work to
    /// the loops through these (src/serve/handoff.rs).
    pub(crate) loops: Option<Arc<handoff::Loops>>,
}

/// What one event loop owns.
pub(crate) struct ThreadCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) store: RefCell<ImageStore>,
    pub(crate) drain: Rc<Drain>,
    /// Which boot loop this is (0 for the web service's).
    pub(crate) index: usize,
    /// A boot loop (not the web service's).
    boot: bool,
    /// The loop's services, by the index every loop gives them (set up in the same order),
    /// for work another loop hands over.
    services: RefCell<LoopServices>,
}

/// What serves a connection accepted on one listener.
pub(crate) type ConnService =
    Box<dyn FnMut(zpxe_platform::tcp::TcpConn, SocketAddr, http::ConnSlot)>;

#[derive(Default)]
struct LoopServices {
    conns: Vec<Rc<RefCell<ConnService>>>,
    tftp: Vec<Rc<tftp::TftpService>>,
}

impl ThreadCtx {
    /// The loops work is handed between, if this is a boot loop and they do
    /// (`server.loop-handoff`).
    pub(crate) fn loops(&self) -> Option<&Arc<handoff::Loops>> {
        self.shared.loops.as_ref().filter(|_| self.boot)
    }

    /// Whether this loop binds the boot ports: without handoff each does; with it, loop 0.
    fn listens(&self) -> bool {
        self.loops().is_none() || self.index == 0
    }

    /// Registers a listener's connection service; returns its index.
    pub(crate) fn add_conn_service(&self, serve: ConnService) -> usize {
        let mut s = self.services.borrow_mut();
        s.conns.push(Rc::new(RefCell::new(serve)));
        s.conns.len() - 1
    }

    /// Serves a connection of listener `service` on this loop.
    pub(crate) fn serve_conn(
        &self,
        service: usize,
        conn: zpxe_platform::tcp::TcpConn,
        peer: SocketAddr,
        slot: http::ConnSlot,
    ) {
        let serve = self.services.borrow().conns.get(service).cloned();
        match serve {
            Some(serve) => (serve.borrow_mut())(conn, peer, slot),
            None => tracing::warn!(service, "no connection service of that index on this loop"),
        }
    }

    /// Registers a TFTP service; returns its index.
    pub(crate) fn add_tftp_service(&self, svc: &Rc<tftp::TftpService>) -> usize {
        let mut s = self.services.borrow_mut();
        s.tftp.push(Rc::clone(svc));
        s.tftp.len() - 1
    }

    fn tftp_service(&self, service: usize) -> Option<Rc<tftp::TftpService>> {
        self.services.borrow().tftp.get(service).cloned()
    }

    /// Does what another loop handed over (src/serve/handoff.rs).
    fn do_work(&self, work: handoff::Work) {
        match work {
            handoff::Work::Conn {
                service,
                conn,
                peer,
                slot,
            } => match zpxe_platform::tcp::TcpConn::adopt(conn) {
                Ok(conn) => self.serve_conn(service, conn, peer, slot),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot serve a handed-over connection")
                }
            },
            handoff::Work::TftpRequest {
                service,
                meta,
                datagram,
            } => {
                if let Some(svc) = self.tftp_service(service) {
                    svc.handle_handed(meta, datagram);
                }
            }
            handoff::Work::TftpListenerSend {
                service,
                transmit,
                bytes,
            } => {
                if let Some(svc) = self.tftp_service(service) {
                    svc.send_for_other_loop(transmit, bytes);
                }
            }
        }
    }
}

/// Where a started server listens.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub tftp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub web: Vec<SocketAddr>,
    pub dhcp: Vec<SocketAddr>,
    pub pxe: Vec<SocketAddr>,
    pub driver: &'static str,
}

/// A server running on its own threads.
#[derive(Debug)]
pub struct ServerHandle {
    pub bound: Bound,
    pub metrics: Arc<Metrics>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    stop: Stop,
    db: Option<Arc<crate::db::Database>>,
    reloader: Reloader,
    /// This process's claim on its ports, released when the process ends.
    #[cfg(unix)]
    _instance: Option<zpxe_platform::instance_lock::InstanceLock>,
}

impl ServerHandle {
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// See [`Stop::drain`]; [`ServerHandle::join`] returns when every loop has drained.
    pub fn drain(&self) {
        self.stop.drain();
    }

    /// Reloads this server (see [`Reloader`]); the handle may be kept and used from any thread.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Waits for every loop, then writes what the loops recorded and stops the writer.
    pub fn join(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .map_err(|_| anyhow::anyhow!("an event loop panicked"))
                .and_then(|r| r);
            if result.is_ok() {
                result = r;
            }
        }
        // After the loops: their last events are queued by now, and a loop that failed
        // still leaves what it recorded committed.
        if let Some(db) = &self.db {
            db.close();
        }
        result
    }
}

/// An HTTP service's script for one request head from a client address (`zpxe explain`).
fn served_script(site: http::BootSite) -> Box<crate::explain::ServedScript> {
    Box::new(move |head: &[u8], peer: Option<std::net::Ipv4Addr>| {
        use zpxe_engine::http::Handler as _;
        let limits = zpxe_engine::http::request::HeadLimits::default();
        let (req, _) = zpxe_engine::http::Request::parse(head, &limits).ok()??;
        let mut images = zpxe_engine::MemoryCatalog::default();
        let mut site = site.clone();
        site.scripts.peer = peer;
        match site.respond(&req, &mut images) {
            zpxe_engine::http::Reply::Generated { body, .. } => String::from_utf8(body).ok(),
            _ => None,
        }
    })
}

/// What `zpxe explain` consults without a running server: a registry holding the
/// configuration's `[[machine]]` records, and the script `serve`'s HTTP service would write
/// with it (the database's records are the running server's: `/api/v1/explain` has them).
pub(crate) fn offline_registry(
    config: &Config,
) -> (Arc<crate::db::Registry>, Box<crate::explain::ServedScript>) {
    let registry = Arc::new(crate::db::Registry::default());
    registry.set_files(config.machine_records());
    let site = http::BootSite {
        scripts: BootScripts {
            menu: Arc::new(config.menu.clone()),
            ..BootScripts::default()
        },
        reloader: Reloader::new(config.clone(), None, None),
        web_port: config.services.web.then_some(config.ports.web),
        https: false,
        registry: Some(Arc::clone(&registry)),
        hook: None,
    };
    (registry, served_script(site))
}

/// Starts the event loops, binds every service and returns once all are listening. A reload
/// of this server is refused: it has no configuration to read again.
pub fn start(config: Config, stop: Stop) -> anyhow::Result<ServerHandle> {
    start_reloadable(config, stop, None)
}

/// [`start`], with where [`Reloader::reload`] reads its new configuration.
pub fn start_reloadable(
    config: Config,
    stop: Stop,
    source: Option<ConfigSource>,
) -> anyhow::Result<ServerHandle> {
    // Every loop binds the same ports (`SO_REUSEPORT`), or, with `server.loop-handoff` (always
    // on Windows, which cannot share a port between sockets), loop 0 binds them and hands work
    // to the others.
    let threads = match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let loops =
        (config.server.loop_handoff && threads > 1).then(|| Arc::new(handoff::Loops::new(threads)));
    // Before any bind: SO_REUSEPORT would let a second zpxe share the ports silently.
    #[cfg(unix)]
    let instance = claim_ports(&config)?;
    let metrics = Arc::new(Metrics::default());
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(https::load_config(cert.get_ref(), key.get_ref())?),
        _ => None,
    };
    let db = open_database(&config)?;
    let recorder = db
        .as_ref()
        .map_or_else(crate::db::Recorder::disabled, |d| d.recorder());
    // The live view (page, SSE) gets every leg too, when the web service runs.
    let live = Arc::new(crate::web::live::Live::default());
    let recorder = recorder.with_live(config.services.web.then(|| live.tap()));
    let access = crate::web::Access::from_config(&config.web, &config.listen_addrs())?;
    if config.services.web {
        tracing::info!(
            allow = ?access.allow_list(),
            token = access.has_token(),
            "web service: read-only routes open to web.allow, changes need the bearer token"
        );
    }
    let access_log = config
        .http
        .access_log
        .as_deref()
        .map(access_log::AccessLog::open)
        .transpose()?;
    let entries = config.menu.entries.iter().map(|e| e.id.clone()).collect();
    let reloader = Reloader::new(config.clone(), tls, source);
    let menu = reloader.clone();
    let hook = hook::Hook::start(
        &config.hook,
        Arc::clone(&metrics),
        Box::new(move || menu.menu().entries.iter().map(|e| e.id.clone()).collect()),
    )?;
    // The registry: the database's records (none with it off) and the configuration's
    // `[[machine]]` records, replaced at each reload.
    let registry = db.as_ref().map_or_else(Arc::default, |d| d.registry());
    registry.set_files(config.machine_records());
    {
        let registry = Arc::clone(&registry);
        reloader.on_reload(move |new: &Config| {
            let records = new.machine_records();
            let registry = Arc::clone(&registry);
            Ok(Box::new(move || {
                let n = records.len();
                registry.set_files(records);
                tracing::info!(records = n, "[[machine]] records reloaded");
            }))
        });
    }
    let shared = Arc::new(Shared {
        reloader: reloader.clone(),
        web: crate::web::WebService::new(Arc::clone(&metrics))
            .with_database(db.clone())
            .with_live(live)
            .with_access(access, Some(entries)),
        recorder,
        registry: Some(registry.clone()),
        hook,
        metrics: Arc::clone(&metrics),
        stop: stop.clone(),
        access_log,
        boot_conns: http::ConnCap::new(config.http.max_connections),
        tftp_ports: tftp::PortPool::new(config.tftp_range()),
        web_conns: http::ConnCap::new(WEB_MAX_CONNECTIONS),
        loops,
        config,
    });
    if shared.config.services.web {
        shared.web.follow_reloads(&shared.reloader);
    }
    // `/api/v1/explain` answers with what the DHCP service answers with, and shows the script
    // the HTTP service's own handler writes (registry records included).
    let current = shared.reloader.clone();
    let site = http::BootSite {
        scripts: BootScripts {
            menu: shared.reloader.menu(),
            ..BootScripts::default()
        },
        reloader: shared.reloader.clone(),
        web_port: shared
            .config
            .services
            .web
            .then_some(shared.config.ports.web),
        https: false,
        registry: shared.registry.clone(),
        hook: shared.hook.clone(),
    };
    crate::explain::publish(
        Box::new(move || {
            let s = current.settings();
            (Arc::clone(&s.config), s.proxy.clone())
        }),
        shared.registry.clone(),
        served_script(site),
    );
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<Bound>>();
    let mut handles = Vec::new();
    let web = shared.config.services.web.then_some(Role::Web);
    for role in (0..threads).map(Role::Boot).chain(web) {
        let shared = Arc::clone(&shared);
        let tx = tx.clone();
        let name = match role {
            Role::Boot(index) => format!("zpxe-loop-{index}"),
            Role::Web => "zpxe-web".to_owned(),
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || event_loop(role, shared, tx))
            .context("spawning an event loop")?;
        handles.push(handle);
    }
    drop(tx);
    let mut bound = Bound::default();
    for _ in 0..handles.len() {
        let b = match rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                stop.stop();
                return Err(e);
            }
            Err(_) => {
                stop.stop();
                anyhow::bail!("an event loop ended before it started serving");
            }
        };
        bound.driver = b.driver;
        for (all, mine) in [
            (&mut bound.tftp, b.tftp),
            (&mut bound.http, b.http),
            (&mut bound.https, b.https),
            (&mut bound.web, b.web),
            (&mut bound.dhcp, b.dhcp),
            (&mut bound.pxe, b.pxe),
        ] {
            for a in mine {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
        }
    }
    shared
        .web
        .live
        .set_server(crate::web::live::ServerInfo::new(threads, &bound));
    tracing::info!(
        driver = bound.driver,
        threads,
        loop_handoff = shared.loops.is_some(),
        http_bodies = zpxe_platform::tcp::body_path(),
        tftp = ?bound.tftp,
        http = ?bound.http,
        https = ?bound.https,
        web = ?bound.web,
        dhcp = ?bound.dhcp,
        pxe = ?bound.pxe,
        "zpxe ready"
    );
    if let Err(e) = zpxe_platform::notify::ready("serving") {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    Ok(ServerHandle {
        bound,
        metrics,
        threads: handles,
        stop,
        db,
        reloader,
        #[cfg(unix)]
        _instance: instance,
    })
}

/// Opens `[database]` when enabled. Failing to is fatal: a server told to record boots that
/// cannot would lose them silently.
fn open_database(config: &Config) -> anyhow::Result<Option<Arc<crate::db::Database>>> {
    let c = &config.database;
    if !c.enabled {
        return Ok(None);
    }
    match crate::db::Database::open(c) {
        Ok(db) => {
            tracing::info!(kind = db.kind(), url = %redact(c.url.get_ref()), "database open");
            Ok(Some(Arc::new(db)))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot open the database {}: {e:#}; set database.url to a place zpxe can write \
             (or --database-url), or turn recording off with database.enabled = false \
             (or --no-database)",
            redact(c.url.get_ref())
        )),
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match crate::db::DbUrl::parse(url) {
        Ok(crate::db::DbUrl::Sqlite(path)) => path.display().to_string(),
        _ => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let creds = &url[s + 3..at];
                let user = creds.split(':').next().unwrap_or_default();
                format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

/// Claims every port `setup` and `setup_web` bind (see `zpxe_platform::instance_lock`): a
/// conflict is an error; a lock directory zpxe cannot write is a warning.
#[cfg(unix)]
fn claim_ports(
    config: &Config,
) -> anyhow::Result<Option<zpxe_platform::instance_lock::InstanceLock>> {
    use zpxe_platform::instance_lock::{self, Claim, LockError, Proto};
    let s = &config.services;
    let mut claims = Vec::new();
    for addr in config.listen_addrs() {
        let mut claim = |proto, port, device: Option<&String>| {
            claims.push(Claim {
                proto,
                addr,
                port,
                device: device.cloned(),
            })
        };
        if s.tftp {
            claim(Proto::Udp, config.ports.tftp, None);
        }
        if s.http {
            claim(Proto::Tcp, config.ports.http, None);
            if config.tls.cert.is_some() && config.tls.key.is_some() {
                claim(Proto::Tcp, config.tls.port, None);
            }
        }
        if s.web {
            claim(Proto::Tcp, config.ports.web, None);
        }
        if s.dhcp && addr.is_ipv4() {
            let devices: Vec<Option<&String>> = if config.server.interfaces.is_empty() {
                vec![None]
            } else {
                config.server.interfaces.iter().map(Some).collect()
            };
            for device in devices {
                if config.dhcp.mode.binds_dhcp_port() {
                    claim(Proto::Udp, config.ports.dhcp, device);
                }
                claim(Proto::Udp, config.ports.pxe, device);
            }
        }
    }
    match instance_lock::acquire(&claims) {
        Ok(lock) => {
            tracing::debug!(dir = %lock.dir().display(), "ports claimed");
            Ok(Some(lock))
        }
        Err(e @ LockError::Conflict { .. }) => Err(e.into()),
        Err(e @ LockError::Io { .. }) => {
            tracing::warn!(error = %e, "cannot check that no other zpxe serves these ports");
            Ok(None)
        }
    }
}

/// What an event loop serves.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// TFTP and HTTP (each loop, on shared ports), proxyDHCP (loop 0 only).
    Boot(usize),
    /// The web service, on a loop of its own: no request to it, however slow, delays a boot.
    Web,
}

fn event_loop(
    role: Role,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<anyhow::Result<Bound>>,
) -> anyhow::Result<()> {
    // The web service's loop never polls: nothing there is worth a core.
    let options = LoopOptions {
        busy_poll: match role {
            Role::Boot(_) => Duration::from_micros(shared.config.server.busy_poll_us),
            Role::Web => Duration::ZERO,
        },
    };
    let ev = match EventLoop::with_options(options).context("starting the event loop") {
        Ok(ev) => ev,
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
            return Ok(());
        }
    };
    if matches!(role, Role::Boot(0)) {
        tracing::info!(driver = ev.driver(), "I/O driver");
    }
    let result: anyhow::Result<()> = ev.block_on(async {
        let set_up = match role {
            Role::Boot(index) => setup(index, &shared, ev.driver()),
            Role::Web => setup_web(&shared, ev.driver()),
        };
        let ctx = match set_up {
            Ok((ctx, bound)) => {
                let _ = ready.send(Ok(bound));
                ctx
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        while !shared.stop.stopped() {
            if shared.stop.draining() {
                ctx.drain.fire();
                if ctx.drain.idle() {
                    break;
                }
            }
            let pause = if ctx.drain.fired() {
                DRAIN_POLL
            } else {
                STOP_POLL
            };
            zpxe_platform::runtime::sleep(pause).await;
            ctx.store.borrow().sweep();
        }
        Ok(())
    });
    result
}

/// One loop's context: its image store (the web service's stays unused) and its drain.
fn thread_ctx(shared: &Arc<Shared>, boot: Option<usize>) -> anyhow::Result<Rc<ThreadCtx>> {
    let config = &shared.config;
    let store = ImageStore::new(
        config.server.root.get_ref(),
        StoreOptions {
            case_insensitive: config.server.case_insensitive,
            leases: config.server.leases,
        },
    )
    .context("opening the image root")?;
    Ok(Rc::new(ThreadCtx {
        shared: Arc::clone(shared),
        store: RefCell::new(store),
        drain: Rc::default(),
        index: boot.unwrap_or(0),
        boot: boot.is_some(),
        services: RefCell::default(),
    }))
}

/// The web service's loop: its listeners, with the `[http]` limits but pipelining cut to
/// [`WEB_MAX_PIPELINED`].
fn setup_web(shared: &Arc<Shared>, driver: &'static str) -> anyhow::Result<(Rc<ThreadCtx>, Bound)> {
    let config = &shared.config;
    let ctx = thread_ctx(shared, None)?;
    let mut bound = Bound {
        driver,
        ..Bound::default()
    };
    let web_config = Arc::new(HttpConfig {
        max_pipelined: WEB_MAX_PIPELINED,
        ..config.http.clone()
    });
    for ip in config.listen_addrs() {
        let addr = SocketAddr::new(ip, config.ports.web);
        let server = TcpServer::bind(addr, false)
            .map_err(|e| BindError::explain("web service", "web-port", addr, e))?;
        bound.web.push(server.local_addr());
        http::start(
            &ctx,
            Some(server),
            http::Site::Web(shared.web.clone()),
            Arc::clone(&web_config),
            Arc::clone(&shared.web_conns),
        );
    }
    // The live view's pump: takes the loops' events every 100 ms, until the drain.
    let (live, metrics, pump_ctx) = (
        Arc::clone(&shared.web.live),
        Arc::clone(&shared.metrics),
        Rc::clone(&ctx),
    );
    zpxe_platform::runtime::spawn(async move { live.pump(metrics, pump_ctx.drain.wait()).await })
        .detach();
    Ok((ctx, bound))
}

fn setup(
    index: usize,
    shared: &Arc<Shared>,
    driver: &'static str,
) -> anyhow::Result<(Rc<ThreadCtx>, Bound)> {
    let config = &shared.config;
    let ctx = thread_ctx(shared, Some(index))?;
    let listens = ctx.listens();
    let mut bound = Bound {
        driver,
        ..Bound::default()
    };
    let http_config = Arc::new(config.http.clone());
    // Server mode's one engine and lease writer, shared by every address and device.
    let mut dhcp_server: Option<Rc<dhcp_server::Core>> = None;
    for ip in config.listen_addrs() {
        if config.services.tftp {
            let addr = SocketAddr::new(ip, config.ports.tftp);
            let svc = if listens {
                let svc = tftp::TftpService::bind(&ctx, addr)
                    .map_err(|e| BindError::explain("TFTP", "tftp-port", addr, e))?;
                bound.tftp.push(svc.local_addr());
                svc
            } else {
                tftp::TftpService::handed(&ctx, addr)
            };
            svc.start();
        }
        if config.services.http {
            let addr = SocketAddr::new(ip, config.ports.http);
            let server = if listens {
                let server = TcpServer::bind(addr, true)
                    .map_err(|e| BindError::explain("HTTP", "http-port", addr, e))?;
                bound.http.push(server.local_addr());
                Some(server)
            } else {
                None
            };
            let site = http::BootSite {
                scripts: BootScripts {
                    menu: shared.reloader.menu(),
                    ..BootScripts::default()
                },
                reloader: shared.reloader.clone(),
                web_port: config.services.web.then_some(config.ports.web),
                https: false,
                registry: shared.registry.clone(),
                hook: shared.hook.clone(),
            };
            if shared.reloader.tls().is_some() {
                let addr = SocketAddr::new(ip, config.tls.port);
                let tls_server = if listens {
                    let server = TcpServer::bind(addr, true)
                        .map_err(|e| BindError::explain("HTTPS", "tls port", addr, e))?;
                    bound.https.push(server.local_addr());
                    Some(server)
                } else {
                    None
                };
                let site = http::BootSite {
                    https: true,
                    ..site.clone()
                };
                https::start(
                    &ctx,
                    tls_server,
                    site,
                    Arc::clone(&http_config),
                    shared.reloader.clone(),
                    Arc::clone(&shared.boot_conns),
                );
            }
            http::start(
                &ctx,
                server,
                http::Site::Boot(site),
                Arc::clone(&http_config),
                Arc::clone(&shared.boot_conns),
            );
        }
        // One loop answers DHCP: every SO_REUSEPORT socket would see each broadcast (with
        // handoff, loop 0 holds every port anyway).
        if index != 0 {
            continue;
        }
        if config.services.dhcp && ip.is_ipv4() {
            let devices: Vec<Option<String>> = if config.server.interfaces.is_empty() {
                vec![None]
            } else {
                config.server.interfaces.iter().cloned().map(Some).collect()
            };
            for device in devices {
                // Server mode: 67 is the DHCP server machine's, the proxy keeps 4011.
                if config.dhcp.mode == crate::config::DhcpMode::Server {
                    let core = match &dhcp_server {
                        Some(core) => Rc::clone(core),
                        None => dhcp_server.insert(dhcp_server::Core::open(&ctx)?).clone(),
                    };
                    let addr = SocketAddr::new(ip, config.ports.dhcp);
                    let local = core
                        .bind(addr, device.clone())
                        .map_err(|e| BindError::explain("DHCP server", "dhcp-port", addr, e))?;
                    bound.dhcp.push(local);
                }
                // pxe-only: 67 belongs to the DHCP server on this host.
                let dhcp_addr = (config.dhcp.mode == crate::config::DhcpMode::Proxy)
                    .then(|| SocketAddr::new(ip, config.ports.dhcp));
                let pxe_addr = SocketAddr::new(ip, config.ports.pxe);
                let svc = dhcp::DhcpService::bind(&ctx, dhcp_addr, pxe_addr, device).map_err(
                    |(addr, e)| {
                        let (what, flag) = if Some(addr) == dhcp_addr {
                            ("proxyDHCP", "dhcp-port")
                        } else {
                            ("PXE (4011)", "pxe-port")
                        };
                        BindError::explain(what, flag, addr, e)
                    },
                )?;
                let (d, p) = svc.local_addrs();
                bound.dhcp.extend(d);
                bound.pxe.push(p);
                svc.start();
            }
        }
    }
    if let Some(loops) = ctx.loops() {
        handoff::run_inbox(&ctx, Arc::clone(loops));
    }
    Ok((ctx, bound))
}

/// The proxyDHCP responder's settings from the configuration.
pub(crate) fn proxy_config(config: &Config) -> ProxyDhcpConfig {
    let server_ip = config
        .server
        .advertise
        .as_ref()
        .and_then(|a| a.get_ref().parse::<std::net::Ipv4Addr>().ok())
        .or_else(|| {
            config.listen_addrs().into_iter().find_map(|ip| match ip {
                IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
                _ => None,
            })
        });
    ProxyDhcpConfig {
        policy: config.boot.clone(),
        http_port: config.ports.http,
        server_ip,
        dhcp_port: config.ports.dhcp,
    }
}
