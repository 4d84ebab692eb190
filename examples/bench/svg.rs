//! A dependency-free SVG bar chart of the bench: decode and prefill tok/s per backend, median
//! bars with min–max whiskers.

use crate::report::{Outcome, Stat};

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 150.0;
const VALUE_W: f64 = 110.0;
const ROW_H: f64 = 26.0;
const PANEL_GAP: f64 = 34.0;

/// Escapes text for SVG content and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One panel: a title and one bar per measured backend, on its own linear scale from 0.
fn panel(out: &mut String, top: f64, title: &str, rows: &[(&str, Stat)], colour: &str) -> f64 {
    let plot_w = WIDTH - LABEL_W - VALUE_W;
    let scale_max = rows
        .iter()
        .map(|(_, s)| s.max)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let x = |v: f64| LABEL_W + plot_w * (v / scale_max).clamp(0.0, 1.0);
    out.push_str(&format!(
        "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n",
        top + 16.0,
        escape(title)
    ));
    let mut y = top + 26.0;
    for (name, stat) in rows {
        let mid = y + ROW_H / 2.0;
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            LABEL_W - 8.0,
            mid + 4.0,
            escape(name)
        ));
        out.push_str(&format!(
            "<rect x=\"{LABEL_W:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{}: median {:.2}, min {:.2}, max {:.2}</title></rect>\n",
            y + 4.0,
            x(stat.median) - LABEL_W,
            ROW_H - 8.0,
            escape(name),
            stat.median,
            stat.min,
            stat.max
        ));
        // The whisker: min–max with end ticks.
        out.push_str(&format!(
            "<path d=\"M{a:.1} {mid:.1}H{b:.1}M{a:.1} {t:.1}V{u:.1}M{b:.1} {t:.1}V{u:.1}\" stroke=\"#222\" fill=\"none\"/>\n",
            a = x(stat.min),
            b = x(stat.max),
            t = mid - 5.0,
            u = mid + 5.0
        ));
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.2}</text>\n",
            WIDTH - VALUE_W + 6.0,
            mid + 4.0,
            stat.median
        ));
        y += ROW_H;
    }
    y + PANEL_GAP - top
}

/// The whole chart; `subtitle` says what was measured where.
pub fn chart(outcomes: &[(String, Outcome)], subtitle: &str) -> String {
    let measured: Vec<(&str, &crate::report::BackendResult)> = outcomes
        .iter()
        .filter_map(|(name, o)| match o {
            Outcome::Measured { result, .. } => Some((name.as_str(), result.as_ref())),
            Outcome::Failed(_) => None,
        })
        .collect();
    let decode: Vec<(&str, Stat)> = measured.iter().map(|(n, r)| (*n, r.decode_tok_s)).collect();
    let prefill: Vec<(&str, Stat)> = measured
        .iter()
        .map(|(n, r)| (*n, r.prefill_tok_s))
        .collect();
    let mut body = String::new();
    let mut top = 44.0;
    top += panel(
        &mut body,
        top,
        "decode tok/s (median, whisker min–max)",
        &decode,
        "#4e79a7",
    );
    top += panel(
        &mut body,
        top,
        "prefill tok/s (median, whisker min–max)",
        &prefill,
        "#f28e2b",
    );
    let height = top;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">hybrid-decode bench</text>\n\
         <text x=\"10\" y=\"36\" fill=\"#555\">{}</text>\n{body}</svg>\n",
        escape(subtitle)
    )
}
