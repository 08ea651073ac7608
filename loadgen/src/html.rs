//! The HTML report: one file, inline SVG, readable at a glance.

use std::fmt::Write;

use crate::report::{BUCKETS_PER_DECADE, ClientRecord, Outcome, Phase, PhaseStats, Report};

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
    // The right margin leaves room for a tick label centered on the last edge.
    let (w, h, left, bottom, top) = (420.0, 220.0, 50.0, 40.0, 24.0);
    let plot_w = w - left - 22.0;
    let plot_h = h - bottom - top;
    let n = p.buckets.len().max(1) as f64;
    let max = p.buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let step_y = nice_step(max, 3.0).max(1.0);
    let top_y = (max / step_y).ceil() * step_y;
    let py = |v: f64| top + plot_h - v / top_y * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{phase} latency histogram">"#,
        phase = p.phase
    );
    let _ = write!(
        s,
        r#"<text x="{x}" y="16" class="title">{phase}: p50 {p50} ms, p99 {p99} ms, n={n}</text>"#,
        x = left,
        phase = p.phase,
        p50 = fmt_ms(p.p50_ms),
        p99 = fmt_ms(p.p99_ms),
        n = p.count
    );
    let mut y = 0.0;
    while y <= top_y + 1e-9 {
        let _ = write!(
            s,
            r#"<line x1="{left}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{y}</text>"#,
            yy = py(y),
            x2 = left + plot_w,
            tx = left - 4.0,
            ty = py(y) + 4.0
        );
        y += step_y;
    }
    let bar_w = plot_w / n;
    for (i, (upper, c)) in p.buckets.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        let bh = *c as f64 / top_y * plot_h;
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{color}"><title>&le; {ms} ms: {c} clients</title></rect>"#,
            x = left + i as f64 * bar_w,
            y = top + plot_h - bh,
            bw = (bar_w - 1.0).max(0.5),
            color = p.phase.color(),
            ms = fmt_ms(*upper)
        );
    }
    // Ticks at the bucket edges that are 1, 2 or 5 times a power of ten; only at powers of ten
    // when the range is wide enough that 1-2-5 would crowd the axis.
    let decades = n / f64::from(BUCKETS_PER_DECADE);
    let lower = p.buckets.first().map_or(0.0, |b| b.0) / 10f64.powf(0.1);
    for i in 0..=p.buckets.len() {
        let edge = lower * 10f64.powf(i as f64 / f64::from(BUCKETS_PER_DECADE));
        let Some(label) = round_125(edge, decades > 2.5) else {
            continue;
        };
        let x = left + i as f64 * bar_w;
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" class="axis"/><text x="{x:.1}" y="{ty}" class="tick" text-anchor="middle">{label}</text>"#,
            y0 = top + plot_h,
            y1 = top + plot_h + 4.0,
            ty = top + plot_h + 15.0,
            label = trim_float(label)
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{y}" x2="{x2}" y2="{y}" class="axis"/><text x="{cx}" y="{ly}" class="label" text-anchor="middle">latency (ms, log scale)</text><text x="12" y="{my}" class="label" transform="rotate(-90 12 {my})" text-anchor="middle">clients</text></svg>"#,
        y = top + plot_h,
        x2 = left + plot_w,
        cx = left + plot_w / 2.0,
        ly = h - 6.0,
        my = top + plot_h / 2.0
    );
    s
}

/// `v` rounded to 1, 2 or 5 times a power of ten if it lies within 1% of one (only powers of ten
/// when `decades_only`).
fn round_125(v: f64, decades_only: bool) -> Option<f64> {
    if v <= 0.0 {
        return None;
    }
    let mag = 10f64.powf(v.log10().round());
    let mags = [mag / 10.0, mag];
    let mults: &[f64] = if decades_only {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    mags.iter()
        .flat_map(|m| mults.iter().map(move |k| k * m))
        .find(|nice| (v / nice - 1.0).abs() < 0.01)
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        trim_float(ms.round())
    } else if ms < 1.0 {
        trim_float(ms)
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
        r#"<line x1="{left}" y1="{yb}" x2="{x2}" y2="{yb}" class="axis"/><text x="{cx}" y="{ly}" class="label" text-anchor="middle">seconds since start</text><text x="14" y="{my}" class="label" transform="rotate(-90 14 {my})" text-anchor="middle">MiB/s</text></svg>"#,
        my = top + plot_h / 2.0,
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
    const FAILED: &str = "#e15759";
    let records = r.records();
    let stride = records.len().div_ceil(MAX_TIMELINE_ROWS).max(1);
    // Each row is a group of consecutive clients drawn as its first one, an unbiased sample; the
    // mark left of the axis counts the group's failures, so grouping hides none.
    let rows: Vec<(&ClientRecord, usize, usize, u32)> = records
        .chunks(stride)
        .filter_map(|g| {
            let failed = g
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
                .count();
            g.first().map(|first| {
                (
                    first,
                    failed,
                    g.len(),
                    g.last().map_or(first.client, |l| l.client),
                )
            })
        })
        .collect();
    let row_h = (600.0 / rows.len().max(1) as f64).clamp(1.5, 6.0);
    let (w, left, top, bottom) = (880.0, 60.0, 44.0, 40.0);
    let plot_w = w - left - 20.0;
    let plot_h = rows.len().max(1) as f64 * row_h;
    let h = top + bottom + plot_h;
    let max_x = r.wall_s.max(1e-3);
    let px = |t: f64| left + t / max_x * plot_w;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="per-client timeline"><text x="{left}" y="16" class="title">Per-client timeline ({total} clients{grouped})</text>"#,
        total = records.len(),
        grouped = if stride > 1 {
            format!(", one row per {stride}: the first shown, failures marked left")
        } else {
            String::new()
        }
    );
    let mut lx = left;
    for p in Phase::ALL.iter().filter(|p| **p != Phase::Total) {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="26" width="10" height="10" fill="{c}"/><text x="{tx}" y="35" class="tick">{p}</text>"#,
            c = p.color(),
            tx = lx + 14.0
        );
        lx += 90.0;
    }
    let _ = write!(
        s,
        r#"<rect x="{lx}" y="26" width="10" height="10" fill="{FAILED}"/><text x="{tx}" y="35" class="tick">failed (time in the failing phase; mark left of the axis)</text>"#,
        tx = lx + 14.0
    );
    for (i, &(rec, failed, size, last)) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let hh = (row_h * 0.8).max(1.0);
        if failed > 0 {
            let _ = write!(
                s,
                r#"<rect class="fail-mark" x="{mx}" y="{y:.1}" width="6" height="{hh:.1}" fill="{FAILED}" opacity="{o:.2}"><title>clients {c}..{last}: {failed} failed</title></rect>"#,
                mx = left - 10.0,
                o = 0.4 + 0.6 * failed as f64 / size as f64,
                c = rec.client,
            );
        }
        for p in rec.phases.iter().filter(|p| p.phase != Phase::Total) {
            let x0 = px(p.start.as_secs_f64());
            let x1 = px(p.end.as_secs_f64()).max(x0 + 0.5);
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{wd:.1}" height="{hh:.1}" fill="{c}"/>"#,
                wd = x1 - x0,
                c = p.phase.color()
            );
        }
        if let Outcome::Failed { phase, reason } = &rec.outcome {
            let last_done = rec
                .phases
                .iter()
                .filter(|p| p.phase != Phase::Total)
                .map(|p| p.end.as_secs_f64())
                .fold(rec.start.as_secs_f64(), f64::max);
            let end = rec
                .phases
                .iter()
                .map(|p| p.end.as_secs_f64())
                .fold(last_done, f64::max);
            let x0 = px(last_done);
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{wd:.1}" height="{hh:.1}" fill="{FAILED}"><title>client {c}: {phase}: {why}</title></rect>"#,
                c = rec.client,
                why = esc(reason),
                wd = (px(end) - x0).max(2.0)
            );
        }
    }
    // Client numbers on the y axis, a handful of rows apart.
    let label_every = rows.len().div_ceil(6).max(1);
    for (i, (rec, ..)) in rows.iter().enumerate().step_by(label_every) {
        let _ = write!(
            s,
            r#"<text x="{x}" y="{y:.1}" class="tick" text-anchor="end">{c}</text>"#,
            x = left - 14.0,
            y = top + i as f64 * row_h + row_h.max(8.0) / 2.0 + 3.0,
            c = rec.client
        );
    }
    let step_x = nice_step(max_x, 8.0);
    let mut t = 0.0;
    let yb = top + plot_h;
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
        r#"<line x1="{left}" y1="{yb}" x2="{x2}" y2="{yb}" class="axis"/><text x="{cx}" y="{ly}" class="label" text-anchor="middle">seconds since start</text><text x="12" y="{my}" class="label" transform="rotate(-90 12 {my})" text-anchor="middle">client</text></svg>"#,
        x2 = left + plot_w,
        cx = left + plot_w / 2.0,
        ly = h - 6.0,
        my = top + plot_h / 2.0
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
    use crate::report::{Outcome, Report, RunMeta, storm_like};

    fn report(n: u32) -> Report {
        let (records, wall) = storm_like(n, 11);
        Report::build(
            records,
            wall,
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
        let big = report(5000);
        let page = big.to_html();
        assert!(
            page.len() < 1_000_000,
            "grouped timeline keeps the page small: {}",
            page.len()
        );
        // Grouping never hides a failure: every group of clients with one has a red mark.
        let stride = 5000usize.div_ceil(super::MAX_TIMELINE_ROWS);
        let failed_groups = big
            .records()
            .chunks(stride)
            .filter(|g| g.iter().any(|r| r.outcome != Outcome::Booted))
            .count();
        assert!(failed_groups > 0);
        assert_eq!(page.matches(r#"class="fail-mark""#).count(), failed_groups);
        assert!(page.contains("one row per 13"));
    }

    /// Renders the page in Debian's headless Chromium and checks every chart drew. (Linux: the
    /// Windows build's tests run under Wine, which cannot start the host's Chromium.)
    #[cfg(target_os = "linux")]
    #[test]
    fn renders_in_headless_chromium() {
        use std::process::Command;

        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "this test needs Debian's chromium (/usr/bin/chromium): tests/run-all.sh installs it"
                )
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
        // 6 phase histograms, throughput, timeline.
        assert_eq!(dom.matches("<svg").count(), 8);
    }
}
