//! `/report` on the web service (8051): boot progress reports, unauthenticated, from anyone.
//!
//! Input: report queries, one per line (at most 16), as a client would put after `/report?`.
//! Oracles: no panic; each report is accepted (200) or refused (400); the inventory and the
//! status API stay valid JSON; an accepted report's MAC is stored normalized.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use zpxe::metrics::Metrics;
use zpxe::web::WebService;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let web = WebService::new(Arc::new(Metrics::default()));
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut accepted = 0;
    for (i, query) in text.split('\n').take(16).enumerate() {
        now += Duration::from_secs(1);
        let peer = (i % 2 == 0).then(|| "10.0.0.9".to_owned());
        let reply = web.respond("/report", query, peer, now);
        match reply.status {
            200 => accepted += 1,
            400 => {}
            other => panic!("/report answered {other}"),
        }
    }
    // Most inputs are refused: the JSON views only change with an accepted report.
    if accepted == 0 {
        return;
    }
    let status = web.respond("/api/status", "", None, now);
    assert_eq!(status.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    let clients = status["clients"].as_u64().expect("client count");
    assert!(clients <= accepted);
    let inventory = web.respond("/api/clients", "", None, now);
    assert_eq!(inventory.status, 200);
    let inventory: serde_json::Value =
        serde_json::from_slice(&inventory.body).expect("inventory JSON");
    let list = match &inventory {
        serde_json::Value::Array(list) => list.clone(),
        // A paged inventory wraps the list in an object.
        serde_json::Value::Object(map) => map
            .values()
            .find_map(|v| v.as_array().cloned())
            .unwrap_or_default(),
        other => panic!("inventory is {other}"),
    };
    for client in &list {
        if let Some(mac) = client.get("mac").and_then(|m| m.as_str()) {
            assert_eq!(mac.len(), 17, "mac {mac:?}");
            assert!(
                mac.bytes()
                    .all(|b| b == b':' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }
});
