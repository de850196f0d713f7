//! Three small SVG charts, drawn by hand: the latency distribution (latency by percentile, on
//! a log scale of "nines"), the slowest command of each second, and the server's parked count
//! over time.

use std::fmt::Write as _;
use std::path::Path;

use crate::Shared;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 56.0;

/// Writes `latency.svg`, `latency-over-time.svg` and `parked.svg` into `out`.
pub fn write(out: &Path, shared: &Shared) -> anyhow::Result<()> {
    let histogram = shared.latency.lock().unwrap().clone();
    let mut points = Vec::new();
    if !histogram.is_empty() {
        // x: -log10(1 - q), so 90 %, 99 %, 99.9 % are evenly spaced.
        for i in 0..=400 {
            let nines = i as f64 * 4.0 / 400.0;
            let q = 1.0 - 10f64.powf(-nines);
            points.push((nines, histogram.value_at_quantile(q) as f64 / 1000.0));
        }
    }
    let ticks = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ];
    std::fs::write(
        out.join("latency.svg"),
        chart(
            "Command to device latency by percentile",
            "percentile",
            "ms",
            &points,
            &ticks,
        ),
    )?;
    let slowest: Vec<(f64, f64)> = crate::report::by_second(shared)
        .iter()
        .map(|s| (s.at_secs as f64, s.max_ms))
        .collect();
    std::fs::write(
        out.join("latency-over-time.svg"),
        chart(
            "Slowest command to device, second by second",
            "seconds",
            "ms",
            &slowest,
            &[],
        ),
    )?;
    let series: Vec<(f64, f64)> = shared
        .parked_series
        .lock()
        .unwrap()
        .iter()
        .map(|(t, n)| (*t, *n as f64))
        .collect();
    std::fs::write(
        out.join("parked.svg"),
        chart(
            "Parked polls over time (server's count)",
            "seconds",
            "parked",
            &series,
            &[],
        ),
    )?;
    Ok(())
}

fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    x_ticks: &[(f64, &str)],
) -> String {
    let max_x = points.iter().map(|p| p.0).fold(1e-9, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.05;
    let x = |v: f64| MARGIN + v / max_x * (WIDTH - 2.0 * MARGIN);
    let y = |v: f64| HEIGHT - MARGIN - v / max_y * (HEIGHT - 2.0 * MARGIN);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{title}</text>
<line x1="{MARGIN}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>
"#,
        WIDTH / 2.0,
        HEIGHT - MARGIN,
        WIDTH - MARGIN,
        HEIGHT - MARGIN,
        HEIGHT - MARGIN,
        WIDTH / 2.0,
        HEIGHT - 12.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    for i in 0..=4 {
        let value = max_y * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{MARGIN}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>"##,
            MARGIN - 6.0,
            y(value) + 4.0,
            short(value),
            y(value),
            WIDTH - MARGIN,
            y(value)
        );
    }
    let ticks: Vec<(f64, String)> = if x_ticks.is_empty() {
        (0..=4)
            .map(|i| (max_x * i as f64 / 4.0, short(max_x * i as f64 / 4.0)))
            .collect()
    } else {
        x_ticks.iter().map(|(v, l)| (*v, (*l).to_owned())).collect()
    };
    for (value, label) in ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
            x(value),
            HEIGHT - MARGIN + 16.0
        );
    }
    if !points.is_empty() {
        let path: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn short(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.0}", value)
    } else if value >= 10.0 {
        format!("{:.1}", value)
    } else {
        format!("{:.2}", value)
    }
}
