//! Plots as plain SVG text: bar charts (with min–max whiskers), grouped bar charts (one
//! group per system, one bar per percentile, log axis) and line charts, laid out as
//! panels side by side in one document. No dependency; every value is printed on or
//! beside its mark so that the picture can be read without the JSON.

use std::fmt::Write;

/// Colour of a system's marks, the same in every plot.
pub fn color(system: &str) -> &'static str {
    match system.split_whitespace().next().unwrap_or("") {
        "pollswitch" => "#1f77b4",
        "qemu" => "#d62728",
        "vde" => "#2ca02c",
        "bridge" => "#9467bd",
        "testpmd" => "#ff7f0e",
        _ => "#7f7f7f",
    }
}

/// Colours of successive series in grouped bars (percentiles).
const SHADES: [&str; 5] = ["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b"];

/// One bar: a value with an optional min–max range.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub range: Option<(f64, f64)>,
    pub color: String,
}

/// A line: its name and points.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: String,
}

/// An SVG document under construction.
pub struct Svg {
    w: f64,
    h: f64,
    body: String,
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A short number: 3 significant digits, no exponent for ordinary magnitudes.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// Tick values for a linear axis from 0 to at least `max`: 1, 2 or 5 times a power of
/// ten, 4 to 8 of them.
fn linear_ticks(max: f64) -> Vec<f64> {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| max / s <= 8.0)
        .unwrap_or(10.0 * p);
    let n = (max / step).ceil() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// Decades covering `lo..=hi` for a log axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let lo = if lo > 0.0 { lo } else { 1e-3 };
    let hi = hi.max(lo * 10.0);
    let a = lo.log10().floor() as i32;
    let b = hi.log10().ceil() as i32;
    (a..=b).map(|e| 10f64.powi(e)).collect()
}

/// Axis mapping value -> pixel within `[y0 (bottom), y1 (top)]`.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64> + Clone, log: bool) -> Axis {
        let finite = values.filter(|v| v.is_finite() && (!log || *v > 0.0));
        let hi = finite.clone().fold(0.0f64, f64::max);
        if log {
            let lo = finite.fold(f64::INFINITY, f64::min);
            let lo = if lo.is_finite() { lo } else { 1.0 };
            let ticks = log_ticks(lo, hi.max(lo));
            Axis {
                lo: ticks[0],
                hi: *ticks.last().expect("at least two decades"),
                log,
                ticks,
            }
        } else {
            let ticks = linear_ticks(hi);
            Axis {
                lo: 0.0,
                hi: *ticks.last().expect("at least one tick"),
                log,
                ticks,
            }
        }
    }

    /// Fraction 0..1 of the way up.
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            if v <= 0.0 {
                return 0.0;
            }
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        f.clamp(0.0, 1.0)
    }
}

impl Svg {
    /// An empty document `w` × `h` pixels with a title line.
    pub fn new(w: f64, h: f64, title: &str, subtitle: &str) -> Svg {
        let mut s = Svg {
            w,
            h,
            body: String::new(),
        };
        s.rect(0.0, 0.0, w, h, "#ffffff", None);
        s.text(16.0, 24.0, title, 16.0, "start", "bold");
        s.text(16.0, 42.0, subtitle, 11.0, "start", "normal");
        s
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, title: Option<&str>) {
        let _ = write!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}">"#,
            w.max(0.0),
            h.max(0.0)
        );
        if let Some(t) = title {
            let _ = write!(self.body, "<title>{}</title>", esc(t));
        }
        self.body.push_str("</rect>\n");
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
    }

    fn text(&mut self, x: f64, y: f64, text: &str, size: f64, anchor: &str, weight: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="sans-serif" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}">{}</text>"#,
            esc(text)
        );
    }

    fn rotated(&mut self, x: f64, y: f64, text: &str, size: f64) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="sans-serif" font-size="{size}" text-anchor="middle" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            esc(text)
        );
    }

    /// Frame, title, y ticks and grid of a panel; returns the plot area
    /// (left, top, width, height).
    fn panel(
        &mut self,
        (x, y, w, h): (f64, f64, f64, f64),
        title: &str,
        y_label: &str,
        axis: &Axis,
    ) -> (f64, f64, f64, f64) {
        let (l, t, pw, ph) = (x + 60.0, y + 28.0, w - 75.0, h - 95.0);
        self.text(x + w / 2.0, y + 14.0, title, 13.0, "middle", "bold");
        self.rotated(x + 14.0, t + ph / 2.0, y_label, 11.0);
        for &v in &axis.ticks {
            let py = t + ph * (1.0 - axis.frac(v));
            self.line(l, py, l + pw, py, "#e0e0e0", 1.0);
            self.text(l - 6.0, py + 4.0, &num(v), 10.0, "end", "normal");
        }
        self.line(l, t + ph, l + pw, t + ph, "#333333", 1.0);
        self.line(l, t, l, t + ph, "#333333", 1.0);
        (l, t, pw, ph)
    }

    /// A bar chart in the panel at `area`.
    pub fn bars(&mut self, area: (f64, f64, f64, f64), title: &str, y_label: &str, bars: &[Bar]) {
        let axis = Axis::new(
            bars.iter()
                .flat_map(|b| [b.value, b.range.map_or(b.value, |r| r.1)]),
            false,
        );
        let (l, t, pw, ph) = self.panel(area, title, y_label, &axis);
        let n = bars.len().max(1) as f64;
        let slot = pw / n;
        let bw = (slot * 0.6).min(80.0);
        for (i, b) in bars.iter().enumerate() {
            let cx = l + slot * (i as f64 + 0.5);
            let top = t + ph * (1.0 - axis.frac(b.value));
            if b.value.is_finite() {
                self.rect(
                    cx - bw / 2.0,
                    top,
                    bw,
                    t + ph - top,
                    &b.color,
                    Some(&format!("{}: {}", b.label, num(b.value))),
                );
                if let Some((lo, hi)) = b.range {
                    let (ylo, yhi) = (
                        t + ph * (1.0 - axis.frac(lo)),
                        t + ph * (1.0 - axis.frac(hi)),
                    );
                    self.line(cx, ylo, cx, yhi, "#222222", 1.5);
                    self.line(cx - 6.0, ylo, cx + 6.0, ylo, "#222222", 1.5);
                    self.line(cx - 6.0, yhi, cx + 6.0, yhi, "#222222", 1.5);
                }
                self.text(
                    cx,
                    top.min(t + ph - 2.0) - 6.0,
                    &num(b.value),
                    11.0,
                    "middle",
                    "bold",
                );
            } else {
                self.text(cx, t + ph - 6.0, "failed", 11.0, "middle", "normal");
            }
            self.label_below(cx, t + ph, &b.label, slot);
        }
    }

    fn label_below(&mut self, cx: f64, y: f64, label: &str, slot: f64) {
        // Wrap long labels on spaces to fit the slot.
        let max_chars = ((slot / 6.5) as usize).max(6);
        let mut lines: Vec<String> = vec![String::new()];
        for word in label.split_whitespace() {
            let cur = lines.last_mut().expect("one line at least");
            if !cur.is_empty() && cur.len() + 1 + word.len() > max_chars {
                lines.push(word.to_string());
            } else {
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.push_str(word);
            }
        }
        for (k, line) in lines.iter().take(3).enumerate() {
            self.text(
                cx,
                y + 16.0 + 13.0 * k as f64,
                line,
                11.0,
                "middle",
                "normal",
            );
        }
    }

    /// Grouped bars on a log axis: one group per label, one bar per series name.
    pub fn grouped(
        &mut self,
        area: (f64, f64, f64, f64),
        title: &str,
        y_label: &str,
        series: &[&str],
        groups: &[(String, Vec<f64>)],
    ) {
        let axis = Axis::new(groups.iter().flat_map(|(_, v)| v.iter().copied()), true);
        let (l, t, pw, ph) = self.panel(area, title, y_label, &axis);
        let n = groups.len().max(1) as f64;
        let slot = pw / n;
        let k = series.len().max(1) as f64;
        let bw = (slot * 0.8 / k).min(28.0);
        for (i, (label, values)) in groups.iter().enumerate() {
            let cx = l + slot * (i as f64 + 0.5);
            let x0 = cx - bw * k / 2.0;
            for (j, v) in values.iter().enumerate() {
                if !v.is_finite() || *v <= 0.0 {
                    continue;
                }
                let top = t + ph * (1.0 - axis.frac(*v));
                let x = x0 + bw * j as f64;
                self.rect(
                    x + 1.0,
                    top,
                    bw - 2.0,
                    t + ph - top,
                    SHADES[j % SHADES.len()],
                    Some(&format!("{label} {}: {} {y_label}", series[j], num(*v))),
                );
                self.text(x + bw / 2.0, top - 4.0, &num(*v), 9.0, "middle", "normal");
            }
            self.label_below(cx, t + ph, label, slot);
        }
        let entries: Vec<(String, String)> = series
            .iter()
            .enumerate()
            .map(|(j, n)| (n.to_string(), SHADES[j % SHADES.len()].to_string()))
            .collect();
        self.legend(l, t + ph + 58.0, pw, &entries);
    }

    /// A legend in rows under a plot, starting at (`x`, `y`), wrapping at `width`.
    fn legend(&mut self, x: f64, y: f64, width: f64, entries: &[(String, String)]) {
        let (mut cx, mut cy) = (x, y);
        for (name, color) in entries {
            let w = 22.0 + 6.2 * name.chars().count() as f64;
            if cx > x && cx + w > x + width {
                cx = x;
                cy += 14.0;
            }
            self.rect(cx, cy - 8.0, 10.0, 10.0, color, None);
            self.text(cx + 14.0, cy + 1.0, name, 10.0, "start", "normal");
            cx += w;
        }
    }

    /// Lines with points; `x_log` for a log x axis. X ticks are the points' x values.
    pub fn lines(
        &mut self,
        area: (f64, f64, f64, f64),
        title: &str,
        (x_label, y_label): (&str, &str),
        lines: &[Line],
        x_log: bool,
    ) {
        let yaxis = Axis::new(
            lines.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
            false,
        );
        let (l, t, pw, ph) = self.panel(area, title, y_label, &yaxis);
        let mut xs: Vec<f64> = lines
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| x.is_finite() && (!x_log || *x > 0.0))
            .collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        let (xlo, xhi) = match (xs.first(), xs.last()) {
            (Some(&a), Some(&b)) if b > a => (a, b),
            (Some(&a), _) => (a * 0.5, a * 1.5 + 1.0),
            _ => (0.0, 1.0),
        };
        let fx = |x: f64| {
            let f = if x_log {
                (x.log10() - xlo.log10()) / (xhi.log10() - xlo.log10())
            } else {
                (x - xlo) / (xhi - xlo)
            };
            l + 10.0 + (pw - 20.0) * f.clamp(0.0, 1.0)
        };
        for &x in &xs {
            let px = fx(x);
            self.line(px, t + ph, px, t + ph + 4.0, "#333333", 1.0);
            let label = if x.fract() == 0.0 && x.abs() < 1e9 {
                format!("{x:.0}")
            } else {
                num(x)
            };
            self.text(px, t + ph + 16.0, &label, 10.0, "middle", "normal");
        }
        self.text(
            l + pw / 2.0,
            t + ph + 32.0,
            x_label,
            11.0,
            "middle",
            "normal",
        );
        for s in lines {
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| (fx(x), t + ph * (1.0 - yaxis.frac(y))))
                .collect();
            if pts.len() > 1 {
                let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    self.body,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                    d.join(" "),
                    s.color
                );
            }
            for (&(px, py), &(_, y)) in pts.iter().zip(
                s.points
                    .iter()
                    .filter(|p| p.0.is_finite() && p.1.is_finite()),
            ) {
                let _ = writeln!(
                    self.body,
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{}"><title>{}: {}</title></circle>"#,
                    s.color,
                    esc(&s.name),
                    num(y)
                );
                self.text(px + 5.0, py - 6.0, &num(y), 9.0, "start", "normal");
            }
        }
        let entries: Vec<(String, String)> = lines
            .iter()
            .map(|s| (s.name.clone(), s.color.clone()))
            .collect();
        self.legend(l, t + ph + 48.0, pw, &entries);
    }

    /// A line of small text at the bottom (how the figure was made).
    pub fn footer(&mut self, text: &str) {
        let y = self.h - 10.0;
        self.text(16.0, y, text, 10.0, "start", "normal");
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.w,
            h = self.h
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(
            linear_ticks(1.0),
            [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = linear_ticks(3.7);
        assert!(*t.last().unwrap() >= 3.7 && t.len() <= 9, "{t:?}");
        assert_eq!(log_ticks(3.0, 450.0), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(linear_ticks(0.0), linear_ticks(1.0));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.12345), "0.123");
        assert_eq!(num(f64::NAN), "–");
    }

    #[test]
    fn document_is_well_formed_and_escaped() {
        let mut s = Svg::new(800.0, 400.0, "a <b> & c", "sub");
        s.bars(
            (0.0, 50.0, 400.0, 330.0),
            "t",
            "Mpps",
            &[
                Bar {
                    label: "pollswitch".into(),
                    value: 1.5,
                    range: Some((1.4, 1.6)),
                    color: color("pollswitch").into(),
                },
                Bar {
                    label: "qemu".into(),
                    value: f64::NAN,
                    range: None,
                    color: color("qemu").into(),
                },
            ],
        );
        s.grouped(
            (400.0, 50.0, 400.0, 330.0),
            "lat",
            "µs",
            &["p50", "p99"],
            &[("x".into(), vec![10.0, 100.0])],
        );
        s.lines(
            (0.0, 50.0, 400.0, 330.0),
            "l",
            ("ports", "Mpps"),
            &[Line {
                name: "a".into(),
                points: vec![(2.0, 1.0), (4.0, 0.5)],
                color: "#000".into(),
            }],
            true,
        );
        s.footer("cmd");
        let doc = s.finish();
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a &lt;b&gt; &amp; c"));
        assert!(doc.contains("failed"));
        assert_eq!(doc.matches("<rect").count(), doc.matches("</rect>").count());
        assert_eq!(doc.matches("<text").count(), doc.matches("</text>").count());
    }
}
