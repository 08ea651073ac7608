//! `{placeholder}` URL templates: values go in percent-encoded so a client-supplied value can
//! never change the URL's structure.

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::ids::{ClientUuid, MacAddr};

/// What a template may name.
#[derive(Clone, Debug)]
pub struct TemplateValues {
    pub server: Ipv4Addr,
    pub http_port: u16,
    pub mac: MacAddr,
    pub uuid: Option<ClientUuid>,
    pub arch: Option<u16>,
}

impl TemplateValues {
    fn lookup(&self, name: &str) -> Option<String> {
        Some(match name {
            "server" => self.server.to_string(),
            "http-port" => self.http_port.to_string(),
            "mac" => self.mac.to_string(),
            "mac-hyphen" => self.mac.pxelinux_form(),
            "uuid" => self.uuid.map(|u| u.to_string()).unwrap_or_default(),
            "arch" => self.arch.map(|a| a.to_string()).unwrap_or_default(),
            _ => return None,
        })
    }
}

/// Replaces `{server}`, `{http-port}`, `{mac}` (`aa:bb:..`), `{mac-hyphen}` (`01-aa-bb-..`),
/// `{uuid}` and `{arch}`; unknown placeholders stay as written.
pub fn render(template: &str, values: &TemplateValues) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (before, from_open) = rest.split_at(open);
        out.push_str(before);
        let name_and_rest = &from_open[1..];
        match name_and_rest.find('}') {
            Some(close) => {
                let name = &name_and_rest[..close];
                match values.lookup(name) {
                    Some(value) => percent_encode_into(&mut out, &value),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &name_and_rest[close + 1..];
            }
            None => {
                out.push_str(from_open);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

//= https://www.rfc-editor.org/rfc/rfc3986#section-2.3
//# unreserved  = ALPHA / DIGIT / "-" / "." / "_" / "~"
fn percent_encode_into(out: &mut String, value: &str) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_encodes() {
        let values = TemplateValues {
            server: Ipv4Addr::new(10, 0, 0, 1),
            http_port: 8080,
            mac: MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            uuid: None,
            arch: Some(7),
        };
        assert_eq!(
            render(
                "http://{server}:{http-port}/b?mac={mac}&h={mac-hyphen}&u={uuid}&a={arch}",
                &values
            ),
            "http://10.0.0.1:8080/b?mac=52%3A54%3A00%3Aab%3Acd%3Aef&h=01-52-54-00-ab-cd-ef&u=&a=7"
        );
        assert_eq!(render("{nope}/{server", &values), "{nope}/{server");
        let mut out = String::new();
        percent_encode_into(&mut out, "a b/é&");
        assert_eq!(out, "a%20b%2F%C3%A9%26");
    }
}
