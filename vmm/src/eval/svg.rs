//! Plots as hand-written SVG: a line plot (a value against a frequency, one line per
//! series, whiskers of ±1 standard deviation) and a horizontal bar plot (categories,
//! one bar per series in each, whiskers, an optional reference line), each with a
//! title, axes with ticks and units, and a legend.

use std::fmt::Write;

/// Colours of the series, in order.
const COLOURS: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes text for XML content and attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Round tick positions from the first at or above `lo` to the first at or above `hi`
/// (1, 2 or 5 times a power of ten apart).
pub fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let raw = (hi - lo) / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    (first..=last.min(first + 100))
        .map(|k| k as f64 * step)
        .collect()
}

fn fmt_tick(t: f64) -> String {
    if (t - t.round()).abs() < 1e-9 {
        format!("{}", t.round() as i64)
    } else {
        let s = format!("{t:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One line of a line plot: (x, y, ±sd) points.
#[derive(Debug, Clone)]
pub struct Line {
    /// Its legend entry.
    pub name: String,
    /// Its points, in x order.
    pub points: Vec<(f64, f64, f64)>,
}

/// Things every plot has.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The title.
    pub title: String,
    /// A second line under it (the notation, the host).
    pub subtitle: String,
    /// The x axis's label, with its unit.
    pub x_label: String,
    /// The y axis's label, with its unit.
    pub y_label: String,
}

fn header(out: &mut String, w: f64, h: f64, frame: &Frame) {
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>\n\
         <text x=\"{}\" y=\"40\" text-anchor=\"middle\" font-size=\"11\" fill=\"#444\">{}</text>\n",
        w / 2.0,
        esc(&frame.title),
        w / 2.0,
        esc(&frame.subtitle)
    );
}

fn legend(out: &mut String, x: f64, y: f64, entries: &[(String, &str, bool)]) {
    for (i, (name, colour, dashed)) in entries.iter().enumerate() {
        let yy = y + i as f64 * 18.0;
        let dash = if *dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{yy}\" x2=\"{}\" y2=\"{yy}\" stroke=\"{colour}\" stroke-width=\"3\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 22.0,
            x + 28.0,
            yy + 4.0,
            esc(name)
        );
    }
}

/// A line plot of `lines`.
pub fn line_plot(frame: &Frame, lines: &[Line]) -> String {
    let (w, h) = (900.0, 520.0);
    let (left, right, top, bottom) = (80.0, 660.0, 60.0, 460.0);
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (mut xmin, mut xmax) = (f64::MAX, f64::MIN);
    for x in xs {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
    }
    if xmin > xmax {
        (xmin, xmax) = (0.0, 1.0);
    }
    let pad = ((xmax - xmin) * 0.05).max(1.0);
    let (x0, x1) = (xmin - pad, xmax + pad);
    let ymax = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1 + p.2))
        .fold(0.0f64, f64::max);
    let yt = ticks(0.0, if ymax > 0.0 { ymax * 1.1 } else { 1.0 }, 6);
    let y1 = *yt.last().unwrap_or(&1.0);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (right - left);
    let py = |y: f64| bottom - y / y1 * (bottom - top);
    let mut out = String::new();
    header(&mut out, w, h, frame);
    axes(&mut out, left, right, top, bottom, frame);
    for t in &yt {
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{right}\" y2=\"{0}\" stroke=\"#ddd\"/>\
             <text x=\"{1}\" y=\"{2}\" text-anchor=\"end\">{3}</text>",
            py(*t),
            left - 6.0,
            py(*t) + 4.0,
            fmt_tick(*t)
        );
    }
    for t in ticks(x0, x1, 8).into_iter().filter(|t| *t <= x1) {
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{bottom}\" x2=\"{0}\" y2=\"{1}\" stroke=\"black\"/>\
             <text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>",
            px(t),
            bottom + 5.0,
            bottom + 18.0,
            fmt_tick(t)
        );
    }
    let mut entries = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = l
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for p in &l.points {
            let (cx, cy) = (px(p.0), py(p.1));
            let _ = writeln!(
                out,
                "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"{c}\"/>\
                 <circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3.5\" fill=\"{c}\"/>",
                py((p.1 - p.2).max(0.0)),
                py(p.1 + p.2)
            );
        }
        entries.push((l.name.clone(), c, false));
    }
    legend(&mut out, right + 20.0, top + 10.0, &entries);
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#444\">points: mean; whiskers: ±1 sd</text>",
        right + 20.0,
        top + 20.0 + entries.len() as f64 * 18.0
    );
    out.push_str("</svg>\n");
    out
}

fn axes(out: &mut String, left: f64, right: f64, top: f64, bottom: f64, frame: &Frame) {
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"black\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">{}</text>",
        (left + right) / 2.0,
        bottom + 40.0,
        esc(&frame.x_label),
        (top + bottom) / 2.0,
        (top + bottom) / 2.0,
        esc(&frame.y_label)
    );
}

/// One category of a bar plot: its label and one (value, ±sd) per series.
#[derive(Debug, Clone)]
pub struct Category {
    /// The label left of its bars.
    pub label: String,
    /// One bar per series.
    pub bars: Vec<(f64, f64)>,
}

/// A horizontal bar plot: values along x, categories down the left. `series` names the
/// bars of each category (the legend); `reference` draws a dashed vertical line.
pub fn bar_plot(
    frame: &Frame,
    series: &[String],
    categories: &[Category],
    reference: Option<(f64, String)>,
) -> String {
    let nser = series.len().max(1);
    let bar_h = 14.0;
    let cat_h = bar_h * nser as f64 + 12.0;
    let label_w = categories
        .iter()
        .map(|c| c.label.chars().count())
        .max()
        .unwrap_or(10) as f64
        * 7.2;
    let left = (label_w + 20.0).max(120.0);
    let plot_w = 520.0;
    let right = left + plot_w;
    let top = 60.0;
    let bottom = top + cat_h * categories.len().max(1) as f64 + 6.0;
    let w = right + 240.0;
    let h = bottom + 60.0;
    let vmax = categories
        .iter()
        .flat_map(|c| c.bars.iter().map(|b| b.0 + b.1))
        .chain(reference.iter().map(|r| r.0))
        .fold(0.0f64, f64::max);
    let xt = ticks(0.0, if vmax > 0.0 { vmax * 1.08 } else { 1.0 }, 6);
    let x1 = *xt.last().unwrap_or(&1.0);
    let px = |v: f64| left + v / x1 * plot_w;
    let mut out = String::new();
    header(&mut out, w, h, frame);
    for t in &xt {
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{top}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#ddd\"/>\
             <line x1=\"{0}\" y1=\"{bottom}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/>\
             <text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>",
            px(*t),
            bottom,
            bottom + 5.0,
            bottom + 18.0,
            fmt_tick(*t)
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"black\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (left + right) / 2.0,
        bottom + 40.0,
        esc(&frame.x_label)
    );
    if !frame.y_label.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {0})\">{1}</text>",
            (top + bottom) / 2.0,
            esc(&frame.y_label)
        );
    }
    for (ci, c) in categories.iter().enumerate() {
        let y0 = top + 6.0 + ci as f64 * cat_h;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y0 + cat_h / 2.0 - 2.0,
            esc(&c.label)
        );
        for (si, (v, sd)) in c.bars.iter().enumerate() {
            let colour = COLOURS[si % COLOURS.len()];
            let y = y0 + si as f64 * bar_h;
            let _ = writeln!(
                out,
                "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.8\"/>\
                 <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
                (px(*v) - left).max(0.0),
                bar_h - 2.0,
                px((v - sd).max(0.0)),
                y + (bar_h - 2.0) / 2.0,
                px(v + sd),
                y + (bar_h - 2.0) / 2.0,
                px(v + sd) + 4.0,
                y + bar_h - 4.0,
                fmt_tick((v * 100.0).round() / 100.0)
            );
        }
    }
    let mut entries: Vec<(String, &str, bool)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), COLOURS[i % COLOURS.len()], false))
        .collect();
    if let Some((v, name)) = &reference {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"black\" stroke-dasharray=\"6 4\"/>",
            px(*v)
        );
        entries.push((name.clone(), "black", true));
    }
    legend(&mut out, right + 20.0, top + 10.0, &entries);
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#444\">bars: mean; whiskers: ±1 sd</text>",
        right + 20.0,
        top + 20.0 + entries.len() as f64 * 18.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = |lo, hi, n| -> Vec<String> { ticks(lo, hi, n).into_iter().map(fmt_tick).collect() };
        assert_eq!(t(0.0, 1.0, 5), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(
            t(800.0, 1900.0, 6),
            ["800", "1000", "1200", "1400", "1600", "1800", "2000"]
        );
        assert_eq!(t(0.0, 0.0, 5), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(t(0.0, 2.6, 6), ["0", "0.5", "1", "1.5", "2", "2.5", "3"]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot; ");
    }

    #[test]
    fn plots_name_their_series_and_escape_labels() {
        let f = Frame {
            title: "T <1>".into(),
            subtitle: "s".into(),
            x_label: "MHz".into(),
            y_label: "Gbit/s".into(),
        };
        let svg = line_plot(
            &f,
            &[Line {
                name: "tcp".into(),
                points: vec![(800.0, 0.5, 0.1), (1900.0, 1.0, 0.0)],
            }],
        );
        assert!(svg.contains(">tcp</text>") && svg.contains("T &lt;1&gt;"));
        assert!(svg.ends_with("</svg>\n"));
        let svg = bar_plot(
            &f,
            &["Gbit/s".into()],
            &[Category {
                label: "a+b | c".into(),
                bars: vec![(1.0, 0.1)],
            }],
            Some((1.0, "base".into())),
        );
        assert!(svg.contains(">a+b | c</text>") && svg.contains("stroke-dasharray"));
    }
}
