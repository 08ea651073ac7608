//! The HTML report: one file, inline SVG, readable at a glance.

use std::fmt::Write;

use crate::report::{Outcome, Phase, PhaseStats, Report};

/// At most this many rows in the per-client timeline; larger runs are sampled evenly.
const MAX_TIMELINE_ROWS: usize = 400;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis step for `max` split in about `ticks` parts.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn histogram_svg(p: &PhaseStats) -> String {
    let (w, h, left, bottom, top) = (420.0, 220.0, 50.0, 40.0, 24.0);
    let plot_w = w - left - 10.0;
    let plot_h = h - bottom - top;
    let n = p.buckets.len().max(1) as f64;
    let max = p.buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{phase} latency histogram">"#,
        phase = p.phase
    );
    let _ = write!(
        s,
        r#"<text x="{x}" y="16" class="title">{phase}: p50 {p50:.1} ms, p99 {p99:.1} ms, n={n}</text>"#,
        x = left,
        phase = p.phase,
        p50 = p.p50_ms,
        p99 = p.p99_ms,
        n = p.count
    );
    let bar_w = plot_w / n;
    for (i, (_, c)) in p.buckets.iter().enumerate() {
        let bh = *c as f64 / max * plot_h;
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{color}"/>"#,
            x = left + i as f64 * bar_w,
            y = top + plot_h - bh,
            bw = (bar_w - 1.0).max(0.5),
            color = p.phase.color()
        );
    }
    // x labels: a handful of bucket bounds.
    let step = (p.buckets.len() / 5).max(1);
    for (i, (upper, _)) in p.buckets.iter().enumerate().step_by(step) {
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{label}</text>"#,
            x = left + (i as f64 + 1.0) * bar_w,
            y = h - bottom + 14.0,
            label = fmt_ms(*upper)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{y}" x2="{x2}" y2="{y}" class="axis"/><text x="{cx}" y="{ly}" class="label" text-anchor="middle">latency (ms, log buckets)</text><text x="12" y="{my}" class="label" transform="rotate(-90 12 {my})" text-anchor="middle">clients</text><text x="{tx}" y="{ty}" class="tick" text-anchor="end">{max}</text></svg>"#,
        y = top + plot_h,
        x2 = left + plot_w,
        cx = left + plot_w / 2.0,
        ly = h - 6.0,
        my = top + plot_h / 2.0,
        tx = left - 4.0,
        ty = top + 8.0,
        max = max as u64
    );
    s
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn throughput_svg(r: &Report) -> String {
    let (w, h, left, bottom, top) = (880.0, 260.0, 60.0, 40.0, 24.0);
    let plot_w = w - left - 20.0;
    let plot_h = h - bottom - top;
    let max_y = r
        .throughput
        .iter()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let step_y = nice_step(max_y, 4.0);
    let top_y = (max_y / step_y).ceil() * step_y;
    let max_x = r.wall_s.max(1e-3);
    let px = |t: f64| left + t / max_x * plot_w;
    let py = |v: f64| top + plot_h - v / top_y * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="throughput over time"><text x="{left}" y="16" class="title">Throughput over time (all clients, MiB/s)</text>"#
    );
    let mut y = 0.0;
    while y <= top_y + 1e-9 {
        let _ = write!(
            s,
            r#"<line x1="{left}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{y:.0}</text>"#,
            yy = py(y),
            x2 = left + plot_w,
            tx = left - 4.0,
            ty = py(y) + 4.0
        );
        y += step_y;
    }
    let mut path = format!("M{:.1},{:.1}", px(0.0), py(0.0));
    for (t, v) in &r.throughput {
        let _ = write!(path, " L{:.1},{:.1}", px(*t), py(*v));
    }
    let _ = write!(path, " L{:.1},{:.1} Z", px(max_x), py(0.0));
    let _ = write!(
        s,
        r##"<path d="{path}" fill="#4e79a733" stroke="#4e79a7" stroke-width="1.5"/>"##
    );
    let step_x = nice_step(max_x, 8.0);
    let mut t = 0.0;
    while t <= max_x + 1e-9 {
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{t}</text>"#,
            x = px(t),
            y = top + plot_h + 14.0,
            t = trim_float(t)
        );
        t += step_x;
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{yb}" x2="{x2}" y2="{yb}" class="axis"/><text x="{cx}" y="{ly}" class="label" text-anchor="middle">seconds since start</text></svg>"#,
        yb = top + plot_h,
        x2 = left + plot_w,
        cx = left + plot_w / 2.0,
        ly = h - 6.0
    );
    s
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn timeline_svg(r: &Report) -> String {
    let records = r.records();
    let stride = records.len().div_ceil(MAX_TIMELINE_ROWS).max(1);
    let rows: Vec<_> = records.iter().step_by(stride).collect();
    let row_h = if rows.len() > 200 { 2.0 } else { 4.0 };
    let (w, left, top, bottom) = (880.0, 60.0, 40.0, 40.0);
    let plot_w = w - left - 20.0;
    let h = top + bottom + rows.len().max(1) as f64 * row_h;
    let max_x = r.wall_s.max(1e-3);
    let px = |t: f64| left + t / max_x * plot_w;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="per-client timeline"><text x="{left}" y="16" class="title">Per-client timeline ({n} of {total} clients{sampled})</text>"#,
        n = rows.len(),
        total = records.len(),
        sampled = if stride > 1 { ", sampled" } else { "" }
    );
    let mut lx = left;
    for p in Phase::ALL.iter().filter(|p| **p != Phase::Total) {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="24" width="10" height="10" fill="{c}"/><text x="{tx}" y="33" class="tick">{p}</text>"#,
            c = p.color(),
            tx = lx + 14.0
        );
        lx += 90.0;
    }
    let _ = write!(
        s,
        r##"<rect x="{lx}" y="24" width="10" height="10" fill="#e15759"/><text x="{tx}" y="33" class="tick">failed</text>"##,
        tx = lx + 14.0
    );
    for (i, rec) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        for p in rec.phases.iter().filter(|p| p.phase != Phase::Total) {
            let x0 = px(p.start.as_secs_f64());
            let x1 = px(p.end.as_secs_f64()).max(x0 + 0.5);
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{wd:.1}" height="{hh:.1}" fill="{c}"/>"#,
                wd = x1 - x0,
                hh = row_h * 0.8,
                c = p.phase.color()
            );
        }
        if let Outcome::Failed { .. } = rec.outcome {
            let end = rec
                .phases
                .iter()
                .map(|p| p.end.as_secs_f64())
                .fold(rec.start.as_secs_f64(), f64::max);
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="3" height="{hh:.1}" fill="#e15759"/>"##,
                x = px(end),
                hh = row_h
            );
        }
    }
    let step_x = nice_step(max_x, 8.0);
    let mut t = 0.0;
    let yb = h - bottom;
    while t <= max_x + 1e-9 {
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{t}</text>"#,
            x = px(t),
            y = yb + 14.0,
            t = trim_float(t)
        );
        t += step_x;
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{yb}" x2="{x2}" y2="{yb}" class="axis"/><text x="{cx}" y="{ly}" class="label" text-anchor="middle">seconds since start</text><text x="12" y="{my}" class="label" transform="rotate(-90 12 {my})" text-anchor="middle">clients</text></svg>"#,
        x2 = left + plot_w,
        cx = left + plot_w / 2.0,
        ly = h - 6.0,
        my = top + (h - top - bottom) / 2.0
    );
    s
}

/// The whole page.
pub(crate) fn render(r: &Report) -> String {
    let mut s = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>zpxe-loadgen report</title><style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:920px}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}
.ok{color:#2a7d2a;font-weight:600}.bad{color:#c0392b;font-weight:600}
.grid-charts{display:flex;flex-wrap:wrap;gap:8px}
svg .title{font-size:13px;font-weight:600} svg .tick{font-size:11px;fill:#555} svg .label{font-size:11px;fill:#333}
svg .axis{stroke:#333} svg .grid{stroke:#e5e5e5}
</style></head><body>"#,
    );
    let m = &r.meta;
    let verdict = if r.success() {
        r#"<span class="ok">all clients booted, every byte verified</span>"#.to_owned()
    } else {
        format!(
            r#"<span class="bad">{} of {} clients failed, {} byte errors</span>"#,
            r.failed, m.clients, r.byte_errors
        )
    };
    let _ = write!(
        s,
        "<h1>zpxe-loadgen: {} clients</h1><p>{verdict}</p><p>target {} &middot; profiles {} &middot; arrival {} &middot; seed {} &middot; wall {:.2} s &middot; {:.1} MiB at {:.1} MiB/s &middot; {} retransmissions</p>",
        m.clients,
        esc(&m.target),
        esc(&m.profile),
        esc(&m.arrival),
        m.seed,
        r.wall_s,
        r.bytes as f64 / (1 << 20) as f64,
        r.mib_per_s,
        r.retransmits
    );
    s.push_str("<h2>Latency per phase</h2><table><tr><th>phase</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>MiB</th><th>retrans</th></tr>");
    for p in &r.phases {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td><td>{}</td></tr>",
            p.phase,
            p.count,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.max_ms,
            p.bytes as f64 / (1 << 20) as f64,
            p.retransmits
        );
    }
    s.push_str("</table>");
    if !r.failures.is_empty() {
        s.push_str("<h2>Failures</h2><table><tr><th>reason</th><th>clients</th></tr>");
        for (reason, n) in &r.failures {
            let _ = write!(s, "<tr><td>{}</td><td>{n}</td></tr>", esc(reason));
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Latency histograms</h2><div class=\"grid-charts\">");
    for p in &r.phases {
        s.push_str(&histogram_svg(p));
    }
    s.push_str("</div><h2>Throughput</h2>");
    s.push_str(&throughput_svg(r));
    s.push_str("<h2>Timeline</h2>");
    s.push_str(&timeline_svg(r));
    s.push_str(
        r#"<script>
window.addEventListener("load",function(){
  var bad=[];
  document.querySelectorAll("svg.chart").forEach(function(svg,i){
    var b=svg.getBBox(); if(!(b.width>0&&b.height>0)) bad.push(svg.getAttribute("aria-label")||i);
  });
  document.body.dataset.rendered = bad.length ? "fail: "+bad.join(", ") : "ok";
  document.body.dataset.charts = String(document.querySelectorAll("svg.chart").length);
});
</script></body></html>
"#,
    );
    s
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use crate::report::{Report, RunMeta, synthetic};

    fn report(n: u32) -> Report {
        Report::build(
            synthetic(n, 25),
            Duration::from_secs(3),
            RunMeta {
                target: "127.0.0.1 <test>".into(),
                clients: n as usize,
                profile: "mix".into(),
                arrival: "storm".into(),
                seed: 1,
            },
        )
    }

    #[test]
    fn page_is_self_contained_and_escaped() {
        let html = report(300).to_html();
        assert!(html.contains("127.0.0.1 &lt;test&gt;"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external resources"
        );
        // 6 histograms, throughput, timeline.
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 8);
        let big = report(5000).to_html();
        assert!(
            big.len() < 2_000_000,
            "sampled timeline keeps the page small: {}",
            big.len()
        );
    }

    /// Renders the page in Debian's headless Chromium and checks every chart drew.
    #[test]
    fn renders_in_headless_chromium() {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("this test needs Debian's chromium: run tests/run-all.sh, which installs it")
            });
        let dir = tempfile::tempdir().expect("tmp");
        let page = dir.path().join("report.html");
        std::fs::write(&page, report(300).to_html()).expect("write");
        let profile = dir.path().join("profile");
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium");
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            dom.contains(r#"data-rendered="ok""#),
            "charts did not render: {}\n{}",
            dom.chars().take(500).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dom.contains(r#"data-charts="8""#));
    }
}
