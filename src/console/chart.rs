//! The overview's figures: alerts by state in the last hour and day, and
//! alerts per hour per table over the last 24 hours, drawn as inline SVG on
//! the server (no script). No API operation counts by hour, so this one
//! read-only query lives here; the page itself is audited as the status call
//! it stands for.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Pool;
use handlebars::html_escape as esc;

use super::i18n::Lang;

const HOURS: usize = 24;
const COLOURS: &[&str] = &[
    "#c62828", "#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#5d4037",
];

pub struct Figures {
    /// Alerts by state: (last hour, last day).
    pub counts: HashMap<String, (i64, i64)>,
    /// Alerts raised per table in each of the last 24 hours, oldest first.
    pub series: BTreeMap<String, [i64; HOURS]>,
    pub now: DateTime<Utc>,
}

pub async fn load(pool: &Pool) -> anyhow::Result<Figures> {
    let client = crate::db::client(pool).await?;
    let now: DateTime<Utc> = client
        .query_one("SELECT now()", &[])
        .await
        .context("Failed to read the time")?
        .get(0);
    let counts = client
        .query(
            "SELECT status, count(*) FILTER (WHERE created_at > $1::timestamptz - interval '1 hour'), count(*)
               FROM email_sent_log WHERE created_at > $1::timestamptz - interval '1 day' GROUP BY status",
            &[&now],
        )
        .await
        .context("Failed to count recent alerts")?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let rows = client
        .query(
            "SELECT table_name, floor(extract(epoch FROM $1::timestamptz - created_at) / 3600)::int, count(*)
               FROM email_sent_log
              WHERE created_at > $1::timestamptz - interval '24 hours' AND status <> 'baseline'
              GROUP BY 1, 2",
            &[&now],
        )
        .await
        .context("Failed to count alerts per hour")?;
    let mut series: BTreeMap<String, [i64; HOURS]> = BTreeMap::new();
    for r in rows {
        let ago: i32 = r.get(1);
        if let Some(slot) = (HOURS - 1).checked_sub(ago.max(0) as usize) {
            series.entry(r.get(0)).or_insert([0; HOURS])[slot] += r.get::<_, i64>(2);
        }
    }
    Ok(Figures {
        counts,
        series,
        now,
    })
}

/// Alerts per hour per table: a polyline per table, hour labels, a legend.
pub fn svg(figures: &Figures, lang: Lang) -> String {
    let (width, left, top, plot_w, plot_h) = (720.0, 44.0, 12.0, 660.0, 180.0);
    let legend_rows = figures.series.len().div_ceil(3).max(1);
    let height = top + plot_h + 30.0 + 20.0 * legend_rows as f64;
    let max = figures
        .series
        .values()
        .flat_map(|s| s.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |i: usize| left + plot_w * i as f64 / (HOURS - 1) as f64;
    let y = |v: i64| top + plot_h - plot_h * v as f64 / max as f64;
    let mut out = format!(
        "<svg id=\"chart\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\" font-family=\"sans-serif\">",
        esc(lang.text("chart_title"))
    );
    let mut marks = vec![0, max / 2, max];
    marks.dedup();
    for v in marks {
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#666\">{v}</text>",
            left + plot_w,
            left - 6.0,
            y(v) + 4.0,
            y = y(v),
        );
    }
    for i in (0..HOURS).step_by(4).chain([HOURS - 1]) {
        let at = figures.now - Duration::hours((HOURS - 1 - i) as i64);
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            x(i),
            top + plot_h + 16.0,
            at.with_timezone(&super::view::ZONE).format("%H:00")
        );
    }
    if figures.series.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#999\">{}</text>",
            left + plot_w / 2.0,
            top + plot_h / 2.0,
            esc(lang.text("chart_empty"))
        );
    }
    for (n, (table, counts)) in figures.series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let (lx, ly) = (
            left + 220.0 * (n % 3) as f64,
            top + plot_h + 40.0 + 20.0 * (n / 3) as f64,
        );
        let _ = write!(
            out,
            "<polyline class=\"series\" data-table=\"{t}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\" points=\"{}\"><title>{t}: {}</title></polyline>\
             <rect x=\"{lx}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{ly:.1}\" class=\"legend\">{t} ({})</text>",
            points.join(" "),
            counts.iter().sum::<i64>(),
            ly - 10.0,
            lx + 16.0,
            counts.iter().sum::<i64>(),
            t = esc(table),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_line_per_table_and_escapes_names() {
        let mut series = BTreeMap::new();
        let mut a = [0; HOURS];
        a[HOURS - 1] = 3;
        series.insert("audit_results".to_owned(), a);
        series.insert("<img>".to_owned(), [1; HOURS]);
        let figures = Figures {
            counts: HashMap::new(),
            series,
            now: Utc::now(),
        };
        let svg = svg(&figures, Lang::En);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("audit_results (3)"));
        assert!(svg.contains("&lt;img&gt; (24)"));
        assert!(!svg.contains("<img>"));
    }
}
