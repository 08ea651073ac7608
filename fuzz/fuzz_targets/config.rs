//! The configuration file (`zpxe.toml`): read at start and by `zpxe check`, and the menu and
//! rules it carries end up in scripts served to clients.
//!
//! Oracles: no panic, whatever the text; every problem has a position inside the text; a
//! configuration that validates yields its port range, listen addresses and a script.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zpxe::config::Config;
use zpxe_engine::http::BootQuery;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    match Config::parse(file, text) {
        Ok(config) => {
            if let Some(range) = config.tftp_range() {
                assert!(range.count() >= 1);
            }
            assert!(!config.listen_addrs().is_empty());
            let q = BootQuery::parse("mac=52:54:00:12:34:56&arch=x86_64");
            let script = config.menu.generate(
                &q,
                "http://10.0.0.1:8050",
                Some("http://10.0.0.1:8051/report"),
                false,
            );
            assert!(script.starts_with("#!ipxe\n"));
        }
        Err(problems) => {
            let lines = text.split('\n').count();
            for p in &problems.0 {
                assert!(p.line <= lines.max(1), "{p} is past the last line {lines}");
                let _ = p.to_string();
            }
        }
    }
});
