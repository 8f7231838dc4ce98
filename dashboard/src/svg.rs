//! Server-rendered SVG charts: aligned timeline panels with labelled axes
//! and units and onset markers, and sparklines. Every value shown is
//! escaped text or a number computed from the incident.

use std::fmt::Write as _;

/// One panel of a timeline: a label with its unit, and a value per point.
pub struct Panel<'a> {
    pub label: &'a str,
    pub unit: &'a str,
    pub values: Vec<f64>,
}

/// A vertical marker on the shared time axis.
pub struct Marker<'a> {
    pub label: &'a str,
    pub t_unix_nano: u64,
    pub color: &'a str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn nice(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Stacked panels sharing one time axis (seconds relative to `origin`).
pub fn timeline(
    times: &[u64],
    origin: u64,
    panels: &[Panel<'_>],
    markers: &[Marker<'_>],
) -> String {
    let width = 1000.0;
    let left = 90.0;
    let right = 20.0;
    let panel_h = 90.0;
    let gap = 28.0;
    let top = 24.0;
    let height = top + panels.len() as f64 * (panel_h + gap) + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="incident timeline" viewBox="0 0 {width} {height}" width="100%" font-family="system-ui,sans-serif" font-size="11">"#
    );
    if times.is_empty() {
        s.push_str(r#"<text x="10" y="20">no data</text></svg>"#);
        return s;
    }
    let t_min = times[0] as f64;
    let t_max = (*times.last().unwrap_or(&times[0]) as f64).max(t_min + 1.0);
    let plot_w = width - left - right;
    let x_of = |t: f64| left + (t - t_min) / (t_max - t_min) * plot_w;
    for (pi, p) in panels.iter().enumerate() {
        let y0 = top + pi as f64 * (panel_h + gap);
        let finite: Vec<f64> = p.values.iter().copied().filter(|v| v.is_finite()).collect();
        let vmax = finite.iter().copied().fold(0.0, f64::max).max(1e-9);
        if finite.is_empty() {
            let _ = write!(
                s,
                r##"<text x="{left}" y="{:.1}" font-weight="600">{} ({})</text><rect x="{left}" y="{y0:.1}" width="{plot_w:.1}" height="{panel_h}" fill="#fafbfc" stroke="#d5d9e0"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#6b7385">not in this telemetry</text>"##,
                y0 - 5.0,
                esc(p.label),
                esc(p.unit),
                left + plot_w / 2.0,
                y0 + panel_h / 2.0
            );
            continue;
        }
        let _ = write!(
            s,
            r##"<text x="{left}" y="{:.1}" font-weight="600">{} ({})</text><rect x="{left}" y="{y0:.1}" width="{plot_w:.1}" height="{panel_h}" fill="#fafbfc" stroke="#d5d9e0"/>"##,
            y0 - 5.0,
            esc(p.label),
            esc(p.unit)
        );
        for (frac, v) in [(0.0, vmax), (0.5, vmax / 2.0), (1.0, 0.0)] {
            let y = y0 + frac * panel_h;
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#6b7385">{}</text><line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eceef2"/>"##,
                left - 6.0,
                y + 4.0,
                nice(v),
                left + plot_w
            );
        }
        let mut pts = String::new();
        for (t, v) in times.iter().zip(&p.values) {
            if v.is_finite() {
                let _ = write!(
                    pts,
                    "{:.1},{:.1} ",
                    x_of(*t as f64),
                    y0 + panel_h - (v / vmax).clamp(0.0, 1.0) * panel_h
                );
            }
        }
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="#1565c0" stroke-width="1.6" points="{}"/>"##,
            pts.trim_end()
        );
    }
    let bottom = top + panels.len() as f64 * (panel_h + gap) - gap;
    for (mi, m) in markers.iter().enumerate() {
        let t = m.t_unix_nano as f64;
        if t < t_min || t > t_max {
            continue;
        }
        let x = x_of(t);
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom:.1}" stroke="{}" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="{}">{}</text>"#,
            esc(m.color),
            x + 3.0,
            top + 10.0 + 12.0 * mi as f64,
            esc(m.color),
            esc(m.label)
        );
    }
    let ticks = 8;
    let tenths = t_max - t_min < 10e9;
    for i in 0..=ticks {
        let t = t_min + (t_max - t_min) * i as f64 / ticks as f64;
        let rel = (t - origin as f64) / 1e9;
        let rel = if rel.abs() < 0.05 { 0.0 } else { rel };
        let label = if tenths {
            format!("{rel:+.1}s")
        } else {
            format!("{rel:+.0}s")
        };
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#6b7385">{label}</text>"##,
            x_of(t),
            bottom + 16.0,
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#6b7385">time relative to onset (s)</text></svg>"##,
        left + plot_w,
        bottom + 28.0
    );
    s
}

/// A small trend line with its maximum as a label.
pub fn sparkline(values: &[f64]) -> String {
    let w = 120.0;
    let h = 24.0;
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return String::new();
    }
    let max = finite.iter().copied().fold(0.0, f64::max).max(1e-9);
    let n = values.len().max(2) as f64 - 1.0;
    let mut pts = String::new();
    for (i, v) in values.iter().enumerate() {
        if v.is_finite() {
            let _ = write!(
                pts,
                "{:.1},{:.1} ",
                i as f64 / n * w,
                h - (v / max).clamp(0.0, 1.0) * h
            );
        }
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="trend, max {}" viewBox="0 0 {w} {h}" width="{w}" height="{h}"><polyline fill="none" stroke="#1565c0" stroke-width="1.2" points="{}"/></svg>"##,
        nice(max),
        pts.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_points_scale() {
        let svg = timeline(
            &[0, 1_000_000_000],
            0,
            &[Panel {
                label: "<script>",
                unit: "ms",
                values: vec![0.0, 10.0],
            }],
            &[],
        );
        assert!(svg.contains("&lt;script&gt;"));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("points=\"90.0,114.0 980.0,24.0\""), "{svg}");
        assert!(svg.contains(">+0.5s<"), "sub-10 s ranges get tenths: {svg}");
    }
}
