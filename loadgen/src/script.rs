//! Just enough of iPXE's script language to follow what a boot server answers: labels, `goto`,
//! menus answered with their default, `kernel`/`initrd`/`chain`/`imgfetch` downloads and `boot`.
//! A virtual client boots what the script says, not a fixed list of files.

/// One download the script asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub url: String,
    /// `kernel`, `initrd`, `chain` must succeed; `imgfetch ... ||` reports may fail.
    pub required: bool,
}

/// What a script does when run to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub fetches: Vec<Fetch>,
    /// The script reached `boot` (or `chain`), as opposed to `exit`.
    pub boots: bool,
}

/// Runs `script` for a client with MAC `mac`, taking every menu's default.
pub fn plan(script: &str, mac: &str) -> Result<Plan, String> {
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    if !lines.first().is_some_and(|l| l.starts_with("#!ipxe")) {
        return Err("not an iPXE script (no #!ipxe)".into());
    }
    let mut vars: Vec<(String, String)> = vec![("net0/mac".into(), mac.into())];
    let mut fetches = Vec::new();
    let mut pc = 0;
    let mut steps = 0;
    while pc < lines.len() {
        steps += 1;
        if steps > 10_000 {
            return Err("script loops".into());
        }
        let line = expand(lines[pc], &vars);
        pc += 1;
        // `cmd || goto x` and `cmd && cmd2 ||`: the left command is what matters here.
        let cmd = line.split("||").next().unwrap_or("").trim();
        let cmd = cmd.split("&&").next().unwrap_or("").trim();
        let mut words = cmd.split_whitespace();
        let Some(verb) = words.next() else { continue };
        let args: Vec<&str> = words.collect();
        match verb {
            v if v.starts_with('#') || v.starts_with(':') => {}
            "menu" | "item" | "echo" | "prompt" | "sleep" | "imgfree" | "dhcp" | "ifopen" => {}
            "goto" => {
                let label = args.first().ok_or("goto without a label")?;
                pc = find_label(&lines, label).ok_or_else(|| format!("no label :{label}"))?;
            }
            "choose" => {
                let default = args
                    .windows(2)
                    .find(|w| w[0] == "--default")
                    .map(|w| w[1].to_owned())
                    .ok_or("menu without a default: a person would have to choose")?;
                let var = args
                    .iter()
                    .rev()
                    .find(|a| !a.starts_with("--"))
                    .ok_or("choose without a variable")?;
                vars.push(((*var).to_owned(), default));
            }
            "set" => {
                if let [name, value @ ..] = args.as_slice() {
                    vars.push(((*name).to_owned(), value.join(" ")));
                }
            }
            "kernel" | "initrd" | "chain" | "imgfetch" | "module" => {
                let url = args
                    .iter()
                    .enumerate()
                    .find(|(i, a)| {
                        let names_image = *i > 0 && matches!(args[i - 1], "-n" | "--name");
                        !a.starts_with('-') && !names_image
                    })
                    .map(|(_, a)| (*a).to_owned())
                    .ok_or_else(|| format!("{verb} without a URL"))?;
                fetches.push(Fetch {
                    url,
                    required: verb != "imgfetch",
                });
                if verb == "chain" {
                    return Ok(Plan {
                        fetches,
                        boots: true,
                    });
                }
            }
            "boot" => {
                return Ok(Plan {
                    fetches,
                    boots: true,
                });
            }
            "exit" | "shell" => {
                return Ok(Plan {
                    fetches,
                    boots: false,
                });
            }
            other => return Err(format!("unsupported command {other:?}")),
        }
    }
    Ok(Plan {
        fetches,
        boots: false,
    })
}

fn find_label(lines: &[&str], label: &str) -> Option<usize> {
    lines
        .iter()
        .position(|l| l.strip_prefix(':').is_some_and(|n| n.trim() == label))
        .map(|i| i + 1)
}

fn expand(line: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let value = vars
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map_or("", |(_, v)| v.as_str());
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits `http://host:port/path?query` into (host:port, path?query).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Some((authority, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MENU: &str = "#!ipxe\n# generated by zpxe\n\
        imgfetch --name zpxe-report http://10.0.0.1:8051/report?mac=aa&stage=script && imgfree zpxe-report ||\n\
        :zpxe-menu\nmenu Lab\nitem win Windows\nitem deb Debian\n\
        choose --timeout 5000 --default win zpxe_selected || goto zpxe-cancel\n\
        goto zpxe-entry-${zpxe_selected}\n:zpxe-cancel\nexit\n\
        :zpxe-entry-deb\nkernel http://h:8050/linux || goto zpxe-failed\nboot || goto zpxe-failed\n\
        :zpxe-entry-win\nkernel http://h:8050/wimboot || goto zpxe-failed\n\
        initrd -n BCD http://h:8050/Boot/BCD BCD || goto zpxe-failed\n\
        initrd -n boot.wim http://h:8050/sources/boot.wim boot.wim || goto zpxe-failed\n\
        boot || goto zpxe-failed\n:zpxe-failed\nexit\n";

    #[test]
    fn follows_the_default_entry() {
        let p = plan(MENU, "aa:bb").expect("plan");
        assert!(p.boots);
        let urls: Vec<&str> = p.fetches.iter().map(|f| f.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.1:8051/report?mac=aa&stage=script",
                "http://h:8050/wimboot",
                "http://h:8050/Boot/BCD",
                "http://h:8050/sources/boot.wim"
            ]
        );
        assert!(!p.fetches[0].required && p.fetches[1].required);
    }

    #[test]
    fn refuses_what_it_cannot_follow() {
        assert!(plan("echo hi", "m").is_err());
        assert!(plan("#!ipxe\nchoose x\n", "m").is_err());
        assert!(plan("#!ipxe\ngoto nowhere\n", "m").is_err());
        assert!(plan("#!ipxe\n:a\ngoto a\n", "m").is_err());
        assert!(!plan("#!ipxe\nexit\n", "m").expect("plan").boots);
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8050/boot.ipxe?mac=1"),
            Some(("127.0.0.1:8050".into(), "/boot.ipxe?mac=1".into()))
        );
        assert_eq!(split_url("http://h/x"), Some(("h:80".into(), "/x".into())));
        assert_eq!(split_url("tftp://h/x"), None);
    }
}
