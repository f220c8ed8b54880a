//! Latency over time as SVG (plotters' SVG backend: text is written as `<text>` elements, so
//! no system fonts are needed).

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;
use crate::target::Kind;

fn colour(kind: Kind, index: usize) -> RGBColor {
    const OURS: [RGBColor; 3] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    const THEIRS: [RGBColor; 3] = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x8c, 0x56, 0x4b),
    ];
    match kind {
        Kind::Livecomments => OURS[index % OURS.len()],
        Kind::Mosquitto => THEIRS[index % THEIRS.len()],
    }
}

/// Points of one line: (x, y).
type Series = Vec<(f64, f64)>;

/// Latency percentiles of one second of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Point {
    /// Second of the run.
    pub t_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One run's latency over time.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub kind: Kind,
    /// Seconds without measurements are left out (the plot leaves a gap, not 0).
    pub points: Vec<Point>,
}

/// Axis descriptions of a latency plot.
#[derive(Debug, Clone, Copy)]
pub struct Axes<'a> {
    pub x: &'a str,
    pub y: &'a str,
}

/// The fan-out axes.
pub const FANOUT_AXES: Axes<'static> = Axes {
    x: "second of the run (send time)",
    y: "post → receive latency (ms)",
};

/// p50, p99 and max latency per second of send time, one colour per run.
pub fn latency_svg(path: &Path, title: &str, runs: &[&RunResult]) -> anyhow::Result<()> {
    let lines: Vec<Line> = runs
        .iter()
        .map(|run| Line {
            label: run.target.to_string(),
            kind: run.target,
            points: run
                .timeline
                .iter()
                // Seconds whose comments never arrived have no latency: leave a gap, not 0.
                .filter(|p| p.sent > 0 && p.max_ms > 0.0)
                .map(|p| Point {
                    t_s: p.t_s as f64,
                    p50_ms: p.p50_ms,
                    p99_ms: p.p99_ms,
                    max_ms: p.max_ms,
                })
                .collect(),
        })
        .collect();
    lines_svg(path, title, FANOUT_AXES, &lines)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// p50, p99 and max per second, one colour per line.
pub fn lines_svg(path: &Path, title: &str, axes: Axes, lines: &[Line]) -> anyhow::Result<()> {
    let seconds = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.t_s + 1.0))
        .fold(1.0f64, f64::max);
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.max_ms))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .draw()
        .map_err(err)?;
    let mut seen = [0usize; 2];
    for line in lines {
        let n = &mut seen[usize::from(line.kind == Kind::Mosquitto)];
        let c = colour(line.kind, *n);
        *n += 1;
        let series = |f: fn(&Point) -> f64| {
            line.points
                .iter()
                .map(move |p| (p.t_s + 0.5, f(p)))
                .collect::<Vec<_>>()
        };
        let styles: [(&str, Series, ShapeStyle); 3] = [
            ("p50", series(|p| p.p50_ms), c.mix(0.5).stroke_width(2)),
            ("p99", series(|p| p.p99_ms), c.stroke_width(2)),
            ("max", series(|p| p.max_ms), c.mix(0.35).stroke_width(1)),
        ];
        for (name, points, style) in styles {
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(err)?
                .label(format!("{} {name}", line.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One line of an x/y plot (e.g. p99 against the offered rate).
#[derive(Debug, Clone)]
pub struct Xy {
    pub label: String,
    pub kind: Kind,
    pub points: Vec<(f64, f64)>,
}

/// Lines with markers on a logarithmic x axis, and a dashed horizontal limit.
pub fn xy_svg(
    path: &Path,
    title: &str,
    axes: Axes,
    lines: &[Xy],
    limit: Option<f64>,
) -> anyhow::Result<()> {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if lo <= hi && lo > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (1.0, 10.0)
    };
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(limit)
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .draw()
        .map_err(err)?;
    if let Some(l) = limit {
        let style = BLACK.mix(0.5).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(lo, l), (hi, l)], 6, 4, style))
            .map_err(err)?
            .label(format!("limit {l:.0}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    let mut seen = [0usize; 2];
    for line in lines {
        let n = &mut seen[usize::from(line.kind == Kind::Mosquitto)];
        let c = colour(line.kind, *n);
        *n += 1;
        let style = c.stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.clone(), style))
            .map_err(err)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(line.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Lines on linear axes starting at 0 (e.g. a rate per second of the run).
pub fn xy_linear_svg(path: &Path, title: &str, axes: Axes, lines: &[Xy]) -> anyhow::Result<()> {
    let right = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..right, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .draw()
        .map_err(err)?;
    let mut seen = [0usize; 2];
    for line in lines {
        let n = &mut seen[usize::from(line.kind == Kind::Mosquitto)];
        let c = colour(line.kind, *n);
        *n += 1;
        let style = c.stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.clone(), style))
            .map_err(err)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_files() {
        let dir = tempfile::tempdir().unwrap();
        let line = Line {
            label: "livecomments".into(),
            kind: Kind::Livecomments,
            points: (0..5)
                .map(|t| Point {
                    t_s: t as f64,
                    p50_ms: 1.0,
                    p99_ms: 2.0 + t as f64,
                    max_ms: 9.0,
                })
                .collect(),
        };
        let path = dir.path().join("a.svg");
        lines_svg(&path, "t", FANOUT_AXES, &[line]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("livecomments p99"));
        let path = dir.path().join("b.svg");
        let xy = Xy {
            label: "mosquitto".into(),
            kind: Kind::Mosquitto,
            points: vec![(10.0, 5.0), (100.0, 150.0)],
        };
        xy_svg(&path, "sweep", FANOUT_AXES, &[xy], Some(100.0)).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("limit 100"));
    }
}
