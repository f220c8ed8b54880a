//! Latency over time as SVG (plotters' SVG backend: text is written as `<text>` elements, so
//! no system fonts are needed).

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;
use crate::target::Kind;

fn colour(kind: Kind) -> RGBColor {
    match kind {
        Kind::Livecomments => RGBColor(0x1f, 0x77, 0xb4),
        Kind::Mosquitto => RGBColor(0xd6, 0x27, 0x28),
    }
}

/// Points of one line: (second, milliseconds).
type Series = Vec<(f64, f64)>;

/// p50, p99 and max latency per second of send time, one colour per run.
pub fn latency_svg(path: &Path, title: &str, runs: &[&RunResult]) -> anyhow::Result<()> {
    let seconds = runs
        .iter()
        .map(|r| r.timeline.len())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let top = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.max_ms))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, 0f64..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("second of the run (send time)")
        .y_desc("post → receive latency (ms)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for run in runs {
        let c = colour(run.target);
        let series = |f: fn(&crate::report::TimelinePoint) -> f64| {
            run.timeline
                .iter()
                // Seconds whose comments never arrived have no latency: leave a gap, not 0.
                .filter(|p| p.sent > 0 && p.max_ms > 0.0)
                .map(move |p| (p.t_s as f64 + 0.5, f(p)))
                .collect::<Vec<_>>()
        };
        let lines: [(&str, Series, ShapeStyle); 3] = [
            ("p50", series(|p| p.p50_ms), c.mix(0.5).stroke_width(2)),
            ("p99", series(|p| p.p99_ms), c.stroke_width(2)),
            ("max", series(|p| p.max_ms), c.mix(0.35).stroke_width(1)),
        ];
        for (name, points, style) in lines {
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(format!("{} {name}", run.target))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
