//! Measuring the model on labelled text: precision, recall and F1 at the configured
//! thresholds, ROC AUC, and latency per comment (`livecomments moderation eval FILE.tsv`).

use std::fmt;
use std::time::Instant;

use crate::Scorer;

/// One labelled example.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub offensive: bool,
    pub text: String,
}

/// Parses `label TAB text` lines (label `1` offensive, `0` clean); blank lines and lines
/// starting with `#` are skipped.
pub fn parse_tsv(content: &str) -> Result<Vec<Labelled>, String> {
    let mut out = Vec::new();
    for (n, line) in content.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((label, text)) = line.split_once('\t') else {
            return Err(format!("line {}: expected `label<TAB>text`", n + 1));
        };
        let offensive = match label.trim() {
            "1" => true,
            "0" => false,
            other => {
                return Err(format!(
                    "line {}: label must be 1 (offensive) or 0 (clean), not {other:?}",
                    n + 1
                ))
            }
        };
        out.push(Labelled {
            offensive,
            text: text.to_owned(),
        });
    }
    if out.is_empty() {
        return Err("no labelled lines".into());
    }
    Ok(out)
}

/// Counts at one threshold (score >= threshold counts as flagged).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Confusion {
    pub threshold: f32,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
}

impl Confusion {
    pub fn at(threshold: f32, scores: &[f32], labels: &[bool]) -> Confusion {
        let mut c = Confusion {
            threshold,
            ..Default::default()
        };
        for (&s, &l) in scores.iter().zip(labels) {
            match (s >= threshold, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Area under the ROC curve: the probability that a random offensive example scores above a
/// random clean one (ties count half). `NaN` without both classes.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties (1-based).
    let mut ranks = vec![0.0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = avg;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The result of an evaluation.
#[derive(Debug, Clone)]
pub struct Report {
    pub examples: usize,
    pub offensive: usize,
    pub auc: f64,
    pub retract: Confusion,
    pub review: Confusion,
    /// Scoring everything in batches of 64: microseconds per comment.
    pub batched_us: f64,
    /// One comment per call: p50 and p99 microseconds.
    pub single_p50_us: f64,
    pub single_p99_us: f64,
    /// Offensive examples below the review threshold and clean ones at or above it.
    pub mistakes: Vec<(bool, f32, String)>,
}

/// Scores every example and measures the model at the two thresholds.
pub fn evaluate(
    scorer: &mut dyn Scorer,
    examples: &[Labelled],
    retract_threshold: f32,
    review_threshold: f32,
) -> Result<Report, String> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let labels: Vec<bool> = examples.iter().map(|e| e.offensive).collect();
    let started = Instant::now();
    let mut scores = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        scores.extend(scorer.score(chunk)?);
    }
    let batched_us = started.elapsed().as_secs_f64() * 1e6 / texts.len() as f64;
    let mut single = Vec::with_capacity(texts.len());
    for t in &texts {
        let s = Instant::now();
        scorer.score(std::slice::from_ref(t))?;
        single.push(s.elapsed().as_secs_f64() * 1e6);
    }
    single.sort_by(f64::total_cmp);
    let pct = |p: f64| single[((single.len() as f64 * p) as usize).min(single.len() - 1)];
    let mistakes = examples
        .iter()
        .zip(&scores)
        .filter(|(e, s)| e.offensive != (**s >= review_threshold))
        .map(|(e, s)| (e.offensive, *s, e.text.clone()))
        .collect();
    Ok(Report {
        examples: examples.len(),
        offensive: labels.iter().filter(|l| **l).count(),
        auc: roc_auc(&scores, &labels),
        retract: Confusion::at(retract_threshold, &scores, &labels),
        review: Confusion::at(review_threshold, &scores, &labels),
        batched_us,
        single_p50_us: pct(0.5),
        single_p99_us: pct(0.99),
        mistakes,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "examples: {} ({} offensive, {} clean)",
            self.examples,
            self.offensive,
            self.examples - self.offensive
        )?;
        writeln!(f, "ROC AUC: {:.3}", self.auc)?;
        writeln!(f)?;
        writeln!(
            f,
            "| threshold | flags | precision | recall | F1 | TP | FP | FN | TN |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for (name, c) in [
            ("retract", &self.retract),
            ("review (or retract)", &self.review),
        ] {
            writeln!(
                f,
                "| {:.2} | {name} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
                c.threshold,
                c.precision(),
                c.recall(),
                c.f1(),
                c.tp,
                c.fp,
                c.fn_,
                c.tn
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "latency per comment: {:.1} µs in batches of 64; one at a time p50 {:.1} µs, p99 {:.1} µs",
            self.batched_us, self.single_p50_us, self.single_p99_us
        )?;
        if !self.mistakes.is_empty() {
            writeln!(f)?;
            writeln!(f, "mistakes at the review threshold:")?;
            for (offensive, score, text) in &self.mistakes {
                let what = if *offensive { "missed" } else { "false alarm" };
                writeln!(f, "  {what:11} {score:.3}  {text}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_parsing_and_errors() {
        let ok = parse_tsv("# comment\n1\tbad words\n\n0\tnice goal\r\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert!(ok[0].offensive && !ok[1].offensive);
        assert_eq!(ok[1].text, "nice goal");
        assert!(parse_tsv("2\tx").unwrap_err().contains("line 1"));
        assert!(parse_tsv("1 no tab").is_err());
        assert!(parse_tsv("# only comments").is_err());
    }

    #[test]
    fn auc_and_confusion() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
        assert!(roc_auc(&[0.1], &[true]).is_nan());
        let c = Confusion::at(0.5, &[0.1, 0.6, 0.7, 0.4], &labels);
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (1, 1, 1, 1));
        assert_eq!(c.precision(), 0.5);
        assert_eq!(c.recall(), 0.5);
        assert_eq!(c.f1(), 0.5);
    }
}
