//! The machine registry on the data path (issue 16): a registered machine's loader override in
//! proxyDHCP answers, and its entry, variables and boot-once `exit` in its iPXE script.
//!
//! Both read the published snapshot ([`crate::db::Registry::load`]): lock-free, no database
//! access, so a boot never waits for the API or the writer. A change through the API publishes
//! a new snapshot before it answers, so the machine's next request sees it.
//!
//! The request-handler hook's decisions (src/serve/hook.rs) are applied here the same way: a
//! decision carries a [`crate::db::MachineRecord`] (loader, entry, variables), plus a script
//! URL or "ignore". Precedence: a registry record, then the hook's decision, then the static
//! policy; a client with a record is never looked up.

use std::fmt::Write as _;
use std::sync::Arc;

use zpxe_engine::ImageCatalog;
use zpxe_engine::dhcp::{ClientFacts, ClientOverride, ClientOverrides, DhcpRepr, MacAddr};
use zpxe_engine::http::ipxe::{BootQuery, BootRule};
use zpxe_engine::http::{BootScripts, Handler, Reply, Request, StatusCode};

use super::hook::{Hook, Verdict};
use crate::db::{Decision, MachineRecord, Registry};

/// The registry as the proxyDHCP responder consults it.
#[derive(Debug)]
pub(crate) struct RegistryOverrides(pub(crate) Arc<Registry>);

impl ClientOverrides for RegistryOverrides {
    fn loader(&self, facts: &ClientFacts) -> Option<String> {
        match self.0.load().decide(facts.mac, facts.uuid)? {
            // Deployed boot-once machines take the policy's loader (iPXE), whose script
            // then says `exit`: a custom loader could start the deployment again.
            Decision::Exit => None,
            Decision::Use(r) => r.loader.clone(),
        }
    }

    fn group(&self, facts: &ClientFacts) -> Option<String> {
        registry_group(&self.0, facts)
    }
}

/// A registered client's group (none when empty), for `[[boot.rule]]`s naming groups.
fn registry_group(registry: &Registry, facts: &ClientFacts) -> Option<String> {
    let snap = registry.load();
    let r = snap.get(facts.mac, facts.uuid)?;
    Some(r.group.clone()).filter(|g| !g.is_empty())
}

/// The registry and the hook as the proxyDHCP responder consults them: a record decides
/// first; for a client without one, the hook's cached decision (a miss queues a lookup and
/// leaves the static policy to answer, see [`Hook::consult`]).
#[derive(Debug)]
pub(crate) struct BootOverrides {
    pub(crate) registry: Option<Arc<Registry>>,
    pub(crate) hook: Option<Arc<Hook>>,
}

impl BootOverrides {
    /// The overrides for a server's settings; `None` when it has neither.
    pub(crate) fn of(
        registry: Option<Arc<Registry>>,
        hook: Option<Arc<Hook>>,
    ) -> Option<Arc<dyn ClientOverrides>> {
        if registry.is_none() && hook.is_none() {
            return None;
        }
        Some(Arc::new(Self { registry, hook }))
    }

    /// The registry's say, if the client has a record (boot-once `exit`: the policy's loader).
    fn record(&self, facts: &ClientFacts) -> Option<ClientOverride> {
        let snap = self.registry.as_ref()?.load();
        Some(ClientOverride {
            loader: match snap.decide(facts.mac, facts.uuid)? {
                Decision::Exit => None,
                Decision::Use(r) => r.loader.clone(),
            },
            ..ClientOverride::default()
        })
    }
}

impl ClientOverrides for BootOverrides {
    fn loader(&self, facts: &ClientFacts) -> Option<String> {
        self.record(facts)?.loader
    }

    fn group(&self, facts: &ClientFacts) -> Option<String> {
        registry_group(self.registry.as_ref()?, facts)
    }

    fn decide(&self, facts: &ClientFacts, request: &DhcpRepr) -> ClientOverride {
        if let Some(o) = self.record(facts) {
            return o;
        }
        let Some(verdict) = self.hook.as_ref().and_then(|h| h.consult(facts, request)) else {
            return ClientOverride::default();
        };
        verdict_override(&verdict)
    }
}

/// What a hook decision changes in a proxyDHCP answer.
fn verdict_override(verdict: &Verdict) -> ClientOverride {
    match verdict {
        Verdict::Default => ClientOverride::default(),
        Verdict::Ignore => ClientOverride {
            ignore: true,
            ..ClientOverride::default()
        },
        Verdict::Boot { record, script_url } => ClientOverride {
            ignore: false,
            loader: record.loader.clone(),
            script_url: script_url.clone(),
        },
    }
}

/// What `zpxe explain` asked the hook, and what it answered (or why it could not).
#[derive(Debug, Clone)]
pub(crate) struct HookAsked {
    pub(crate) facts: serde_json::Value,
    pub(crate) outcome: Result<Verdict, String>,
}

/// The overrides `zpxe explain` gives the engine: the registry as the server consults it and,
/// for a client without a record that the policy answers, the hook asked at once (its
/// timeout bounds the wait), where the server would use its cache. What the hook answered is
/// kept for the explanation.
#[derive(Debug)]
pub(crate) struct ExplainOverrides {
    pub(crate) registry: Option<Arc<Registry>>,
    pub(crate) hook: Option<(super::HookConfig, std::collections::BTreeSet<String>)>,
    pub(crate) asked: std::sync::Mutex<Option<HookAsked>>,
}

impl ClientOverrides for ExplainOverrides {
    fn loader(&self, facts: &ClientFacts) -> Option<String> {
        let snap = self.registry.as_ref()?.load();
        match snap.decide(facts.mac, facts.uuid)? {
            Decision::Exit => None,
            Decision::Use(r) => r.loader.clone(),
        }
    }

    fn group(&self, facts: &ClientFacts) -> Option<String> {
        registry_group(self.registry.as_ref()?, facts)
    }

    fn decide(&self, facts: &ClientFacts, request: &DhcpRepr) -> ClientOverride {
        if let Some(r) = &self.registry
            && r.load().get(facts.mac, facts.uuid).is_some()
        {
            return ClientOverride {
                loader: self.loader(facts),
                ..ClientOverride::default()
            };
        }
        let Some((config, entries)) = &self.hook else {
            return ClientOverride::default();
        };
        let outcome = super::hook::ask_now(config, facts, request, entries);
        let o = outcome
            .as_ref()
            .map_or_else(|_| ClientOverride::default(), verdict_override);
        let facts =
            serde_json::from_slice(&super::hook::facts_json(facts, request)).unwrap_or_default();
        *self.asked.lock().unwrap_or_else(|p| p.into_inner()) = Some(HookAsked { facts, outcome });
        o
    }
}

/// `/boot.ipxe` for a registered machine: `exit` once a boot-once machine is deployed, its
/// entry booted directly, its variables `set` first; for a client the hook decided, the same
/// from the decision (the cache only: a script request never queues a lookup), or 403 when
/// the hook said ignore. `None`: neither, the usual script.
pub(crate) fn script(
    registry: Option<&Registry>,
    hook: Option<&Hook>,
    scripts: &BootScripts,
    req: &Request<'_>,
    images: &mut dyn ImageCatalog,
) -> Option<Reply> {
    if req.path != "/boot.ipxe" {
        return None;
    }
    let q = BootQuery::parse(req.query.unwrap_or_default());
    let (mac, uuid) = (q.mac?, q.uuid);
    if let Some(registry) = registry {
        let snap = registry.load();
        match snap.decide(mac, uuid) {
            Some(Decision::Exit) => {
                return Some(Reply::Generated {
                    status: StatusCode::OK,
                    content_type: "text/plain; charset=utf-8".to_owned(),
                    body: b"#!ipxe\n# generated by zpxe: boot-once machine already deployed, \
                            boot from local disk\nexit\n"
                        .to_vec(),
                });
            }
            Some(Decision::Use(rec)) => return Some(apply(rec, mac, scripts, req, images)),
            None => {}
        }
    }
    match &*hook?.cached(mac)? {
        Verdict::Default => None,
        Verdict::Ignore => Some(Reply::Generated {
            status: StatusCode(403),
            content_type: "text/plain; charset=utf-8".to_owned(),
            body: b"the request handler ignores this client\n".to_vec(),
        }),
        Verdict::Boot { record, .. } => Some(apply(record, mac, scripts, req, images)),
    }
}

/// The script with a record's entry (booted directly) and variables (`set` first).
fn apply(
    rec: &MachineRecord,
    mac: MacAddr,
    scripts: &BootScripts,
    req: &Request<'_>,
    images: &mut dyn ImageCatalog,
) -> Reply {
    let mut scripts = scripts.clone();
    if let Some(entry) = &rec.entry
        && scripts.menu.entries.iter().any(|e| e.id == *entry)
    {
        let mut menu = (*scripts.menu).clone();
        menu.rules.insert(
            0,
            BootRule {
                mac: vec![mac],
                entry: Some(entry.clone()),
                ..BootRule::default()
            },
        );
        scripts.menu = Arc::new(menu);
    }
    // For `[[menu.rules]]` naming groups.
    scripts.group = Some(rec.group.clone()).filter(|g| !g.is_empty());
    let mut reply = scripts.respond(req, images);
    if let Reply::Generated { body, .. } = &mut reply
        && !rec.variables.is_empty()
    {
        // After the `#!ipxe` line. Names and values were checked when stored (src/web/
        // machines.rs): nothing iPXE reads as syntax.
        let at = body
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| i + 1);
        let mut sets = String::new();
        for (k, v) in &rec.variables {
            let _ = writeln!(sets, "set {k} {v}");
        }
        body.splice(at..at, sets.into_bytes());
    }
    reply
}
