//! Dependency-free SVG line plots for evaluation reports (quality against cloud share).
use std::fmt::Write;

/// One line: points in the order they are joined.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A dashed horizontal reference line, e.g. "SLM only" or "cloud only".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HLine {
    pub label: String,
    pub y: f64,
}

/// Everything one plot shows. Ranges default to the data (and reference lines), padded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlotSpec {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub hlines: Vec<HLine>,
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0; // room for the legend
const TOP: f64 = 45.0;
const BOTTOM: f64 = 55.0;
/// Colour-blind-safe (Okabe–Ito).
const COLORS: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

/// A standalone SVG document: axes with ticks and labels, one polyline with point markers
/// per series, dashed reference lines, and a legend. Non-finite points are left out.
pub fn line_plot(spec: &PlotSpec) -> String {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let points = || spec.series.iter().flat_map(|s| s.points.iter().copied()).filter(finite);
    let (x0, x1) = spec.x_range.unwrap_or_else(|| padded(points().map(|p| p.0)));
    let hline_ys = spec.hlines.iter().map(|h| h.y).filter(|y| y.is_finite());
    let (y0, y1) = spec.y_range.unwrap_or_else(|| padded(points().map(|p| p.1).chain(hline_ys)));
    let (x0, x1) = proper(x0, x1);
    let (y0, y1) = proper(y0, y1);
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="25" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        LEFT + pw / 2.0,
        escape(&spec.title)
    );

    // Grid and tick labels; the plot area clips nothing, so ticks stay inside the range.
    let (xticks, xstep) = ticks(x0, x1);
    for &t in &xticks {
        let x = sx(t);
        let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##, TOP + ph);
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, TOP + ph + 18.0, label(t, xstep));
    }
    let (yticks, ystep) = ticks(y0, y1);
    for &t in &yticks {
        let y = sy(t);
        let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##, LEFT + pw);
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 8.0, y + 4.0, label(t, ystep));
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 15.0,
        escape(&spec.x_label)
    );
    let (yx, yy) = (18.0, TOP + ph / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{yx}" y="{yy:.1}" text-anchor="middle" transform="rotate(-90 {yx} {yy:.1})">{}</text>"#,
        escape(&spec.y_label)
    );

    let mut legend: Vec<String> = Vec::new();
    let legend_y = |i: usize| TOP + 10.0 + 20.0 * i as f64;
    let legend_x = LEFT + pw + 15.0;
    for (i, h) in spec.hlines.iter().enumerate().filter(|(_, h)| h.y.is_finite() && h.y >= y0 && h.y <= y1) {
        let y = sy(h.y);
        let color = "#666666";
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"><title>{}</title></line>"#,
            LEFT + pw,
            escape(&format!("{}: {}", h.label, h.y))
        );
        let ly = legend_y(spec.series.len() + i);
        legend.push(format!(
            r#"<line x1="{legend_x}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 24.0,
            legend_x + 30.0,
            ly + 4.0,
            escape(&h.label)
        ));
    }
    for (i, s) in spec.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            escape(&s.name)
        );
        for &(x, y) in &pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}</title></circle>"#,
                sx(x),
                sy(y),
                escape(&format!("{}: ({x}, {y})", s.name))
            );
        }
        let ly = legend_y(i);
        legend.push(format!(
            r#"<line x1="{legend_x}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><circle cx="{:.1}" cy="{ly:.1}" r="3.5" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 24.0,
            legend_x + 12.0,
            legend_x + 30.0,
            ly + 4.0,
            escape(&s.name)
        ));
    }
    for entry in legend {
        let _ = writeln!(svg, "{entry}");
    }
    svg.push_str("</svg>\n");
    svg
}

/// Escape text for SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newlines are not allowed in XML.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The values' range, padded by 5% each side; (0, 1) when there are none.
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.0 };
    (lo - pad, hi + pad)
}

/// A range with positive width (a single value gets ±0.5, or ±5%).
fn proper(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
    if hi > lo {
        (lo, hi)
    } else {
        let d = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - d, hi + d)
    }
}

/// Round tick values (1, 2 or 5 times a power of ten) inside [lo, hi], about 5 to 10.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|i| i as f64 * step).collect(), step)
}

/// A tick value with as many decimals as its step needs.
fn label(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let text = format!("{value:.decimals$}");
    // "-0.0" reads oddly on an axis.
    if text.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags open and close in order, attributes are quoted, `&` starts an entity.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            assert!(!text.contains('>'), "stray > in {text:?}");
            check_entities(text);
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside tag {tag:?}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in {tag:?}");
            check_entities(tag);
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    fn check_entities(text: &str) {
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map(|j| i + j + 1).unwrap_or(text.len())];
            assert!(["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity), "bad entity {entity:?}");
        }
    }

    fn spec() -> PlotSpec {
        PlotSpec {
            title: "pass@1 vs cloud share".into(),
            x_label: "cloud tokens (%)".into(),
            y_label: "pass@1".into(),
            series: vec![
                Series { name: "reward <head> & co".into(), points: vec![(0.0, 0.30), (10.0, 0.38), (25.0, 0.45), (50.0, 0.5)] },
                Series { name: "max-prob".into(), points: vec![(0.0, 0.30), (12.0, 0.33), (f64::NAN, 0.4), (60.0, 0.49)] },
                Series { name: "entropy \"gate\"".into(), points: vec![(5.0, 0.31)] },
            ],
            hlines: vec![HLine { label: "SLM only".into(), y: 0.3 }, HLine { label: "cloud only".into(), y: 0.52 }],
            ..Default::default()
        }
    }

    #[test]
    fn svg_has_a_polyline_per_series_and_escaped_names() {
        let svg = line_plot(&spec());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("reward &lt;head&gt; &amp; co"), "{svg}");
        assert!(svg.contains("entropy &quot;gate&quot;"), "{svg}");
        assert!(!svg.contains("<head>") && !svg.contains("NaN"), "{svg}");
        assert!(svg.contains(">SLM only</text>") && svg.contains(">cloud only</text>"), "{svg}");
        assert_eq!(svg.matches("stroke-dasharray").count(), 4, "two reference lines and their legend entries");
        // 4 + 3 (NaN left out) + 1 markers, plus one per series in the legend.
        assert_eq!(svg.matches("<circle").count(), 8 + 3);
        assert_well_formed(&svg);
    }

    #[test]
    fn points_land_inside_the_plot_area() {
        let svg = line_plot(&spec());
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let points = line.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        for p in points.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y), "{p}");
        }
    }

    #[test]
    fn degenerate_inputs_still_make_a_plot() {
        for spec in [
            PlotSpec::default(),
            PlotSpec { series: vec![Series { name: "one".into(), points: vec![(1.0, 1.0)] }], ..Default::default() },
            PlotSpec { series: vec![Series { name: "nan".into(), points: vec![(f64::NAN, 1.0)] }], ..Default::default() },
            PlotSpec { y_range: Some((1.0, 0.0)), x_range: Some((0.0, 0.0)), ..spec() },
        ] {
            let svg = line_plot(&spec);
            assert_well_formed(&svg);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let (t, step) = ticks(0.0, 1.0);
        assert_eq!(step, 0.2);
        assert_eq!(t.len(), 6);
        assert_eq!(label(t[3], step), "0.6");
        let (t, step) = ticks(-3.0, 97.0);
        assert_eq!(step, 20.0);
        assert_eq!(t.iter().map(|&v| label(v, step)).collect::<Vec<_>>(), ["0", "20", "40", "60", "80"]);
        assert_eq!(label(-0.0001, 0.1), "0.0");
    }
}
