//! The offensive-language model: alt-profanity-check 1.9.1 (MIT; TF-IDF and calibrated
//! linear SVMs) converted to ONNX by `model/convert.py`, run through ONNX Runtime.
//!
//! Text never reaches ONNX Runtime (its string ops need a locale missing here and its
//! tokenizer is ASCII-only). This module does what scikit-learn's analyzer did — lowercase,
//! split into runs of two or more word characters, look each token up in the vocabulary,
//! count — and the graph does the rest (idf weighting, L2 norm, the SVMs, their sigmoid
//! calibration and the mean). `model/parity.json` holds texts with the Python package's own
//! probabilities; the tests reproduce them.
//!
//! Word characters are exactly those Python's `re` calls `\w` (`str.isalnum()` or `_`),
//! taken from `model/analyzer.json` rather than from Rust's `char::is_alphanumeric`, which
//! also counts combining vowel signs and the like as letters. Lowercasing is Rust's
//! `str::to_lowercase`, which, like Python's `str.lower`, applies Unicode's full mappings
//! (`İ` → `i̇`, final sigma); the two can differ only for characters Unicode added after the
//! version the converting Python knew, none of which is in the vocabulary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::Array2;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;

/// The ONNX graph (inputs `token_ids`, `counts`; output `probability`).
const GRAPH: &[u8] = include_bytes!("../model/toxicity.onnx");
/// The vocabulary: line n (from 0) is the token of column n.
const VOCAB: &str = include_str!("../model/vocab.txt");
/// The vectorizer's settings and the code points its regex treats as `\w`.
const ANALYZER: &str = include_str!("../model/analyzer.json");

const INPUT_IDS: &str = "token_ids";
const INPUT_COUNTS: &str = "counts";
const OUTPUT: &str = "probability";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot load onnx runtime from {path}: {source}")]
    LoadRuntime {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    /// ONNX Runtime is loaded once per process; a later load asked for another library.
    #[error("onnx runtime already loaded from {loaded}, cannot switch to {requested}")]
    RuntimeMismatch { loaded: PathBuf, requested: PathBuf },
    #[error("onnx runtime: {0}")]
    Ort(#[from] ort::Error),
    /// The embedded vocabulary, analyzer settings or graph do not fit together.
    #[error("embedded model assets: {0}")]
    Assets(String),
}

/// The process's ONNX Runtime: the library path it came from and the environment every
/// session is created in. Both live until the process exits.
struct Runtime {
    path: PathBuf,
    env: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises the first load so two threads cannot race to initialise ONNX Runtime.
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Loads ONNX Runtime from `dylib` on the first call; later calls must name the same file.
fn runtime(dylib: &Path) -> Result<&'static Runtime, ModelError> {
    let check = |rt: &'static Runtime| {
        if same_file(&rt.path, dylib) {
            Ok(rt)
        } else {
            Err(ModelError::RuntimeMismatch {
                loaded: rt.path.clone(),
                requested: dylib.to_path_buf(),
            })
        }
    };
    if let Some(rt) = RUNTIME.get() {
        return check(rt);
    }
    let _guard = RUNTIME_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return check(rt);
    }
    let env = ort::init_from(dylib)
        .map_err(|source| ModelError::LoadRuntime {
            path: dylib.to_path_buf(),
            source,
        })?
        .with_name("livecomments-moderation")
        .with_telemetry(false)
        .build()?;
    let rt = RUNTIME.get_or_init(|| Runtime {
        path: dylib.to_path_buf(),
        env,
    });
    Ok(rt)
}

/// A single-threaded session of the embedded graph.
fn new_session(env: &Environment) -> ort::Result<Session> {
    Session::builder(env)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .commit_from_memory(GRAPH)
}

/// The parts of `model/analyzer.json` this module relies on.
#[derive(Deserialize)]
struct AnalyzerSettings {
    n_features: usize,
    lowercase: bool,
    strip_accents: Option<String>,
    token_pattern: String,
    ngram_range: [u32; 2],
    word_char_ranges: Vec<[u32; 2]>,
}

/// scikit-learn's word analyzer for this vectorizer, down to vocabulary columns.
struct Analyzer {
    vocab: HashMap<&'static str, i64>,
    ascii_word: [bool; 128],
    /// Sorted, disjoint, inclusive code point ranges of word characters.
    word_ranges: Vec<(u32, u32)>,
}

impl Analyzer {
    fn embedded() -> Result<Self, ModelError> {
        let s: AnalyzerSettings = serde_json::from_str(ANALYZER)
            .map_err(|e| ModelError::Assets(format!("analyzer.json: {e}")))?;
        // What the tokenizer below implements; a re-converted model with other settings must
        // not be scored with it.
        let supported = s.lowercase
            && s.strip_accents.is_none()
            && s.token_pattern == r"(?u)\b\w\w+\b"
            && s.ngram_range == [1, 1];
        if !supported {
            return Err(ModelError::Assets(
                "analyzer.json asks for settings the tokenizer does not implement".into(),
            ));
        }
        let mut vocab = HashMap::with_capacity(s.n_features);
        for (column, token) in VOCAB.lines().enumerate() {
            if vocab.insert(token, column as i64).is_some() {
                return Err(ModelError::Assets(format!("vocab.txt: {token:?} twice")));
            }
        }
        if vocab.len() != s.n_features {
            return Err(ModelError::Assets(format!(
                "vocab.txt has {} tokens, analyzer.json says {}",
                vocab.len(),
                s.n_features
            )));
        }
        let word_ranges: Vec<(u32, u32)> =
            s.word_char_ranges.iter().map(|r| (r[0], r[1])).collect();
        if word_ranges.windows(2).any(|w| w[0].1 >= w[1].0) {
            return Err(ModelError::Assets("word_char_ranges not sorted".into()));
        }
        let mut ascii_word = [false; 128];
        for (c, is_word) in ascii_word.iter_mut().enumerate() {
            *is_word = in_ranges(&word_ranges, c as u32);
        }
        Ok(Analyzer {
            vocab,
            ascii_word,
            word_ranges,
        })
    }

    fn is_word(&self, c: char) -> bool {
        match self.ascii_word.get(c as usize) {
            Some(&w) => w,
            None => in_ranges(&self.word_ranges, c as u32),
        }
    }

    /// Appends the vocabulary columns of `text`'s tokens (unknown tokens dropped) to `out`.
    /// Tokens are maximal runs of two or more word characters, as `\b\w\w+\b` finds them.
    fn columns(&self, text: &str, out: &mut Vec<i64>) {
        let lower = text.to_lowercase();
        let mut run: Option<(usize, usize)> = None; // (start byte, chars so far)
        for (i, c) in lower.char_indices() {
            if self.is_word(c) {
                match &mut run {
                    Some((_, n)) => *n += 1,
                    None => run = Some((i, 1)),
                }
            } else if let Some((start, n)) = run.take() {
                self.push_token(&lower[start..i], n, out);
            }
        }
        if let Some((start, n)) = run {
            self.push_token(&lower[start..], n, out);
        }
    }

    fn push_token(&self, token: &str, chars: usize, out: &mut Vec<i64>) {
        if chars >= 2 {
            if let Some(&column) = self.vocab.get(token) {
                out.push(column);
            }
        }
    }

    /// `text` as the graph takes it: (column, count) per distinct known token, by column.
    fn counts(&self, text: &str, scratch: &mut Vec<i64>, out: &mut Vec<(i64, f32)>) {
        scratch.clear();
        out.clear();
        self.columns(text, scratch);
        scratch.sort_unstable();
        for &column in scratch.iter() {
            match out.last_mut() {
                Some((c, n)) if *c == column => *n += 1.0,
                _ => out.push((column, 1.0)),
            }
        }
    }
}

fn in_ranges(ranges: &[(u32, u32)], c: u32) -> bool {
    // Index of the first range starting after c; c is inside the one before it, if any.
    let i = ranges.partition_point(|&(start, _)| start <= c);
    i > 0 && c <= ranges[i - 1].1
}

/// An ONNX Runtime session of the embedded model plus the tokenizer that feeds it. Not shared:
/// each scoring thread owns one (`score` takes `&mut self`).
pub struct ToxicityModel {
    session: Session,
    analyzer: Analyzer,
    /// Per-call buffers kept to avoid reallocating for every batch.
    scratch: Vec<i64>,
    rows: Vec<Vec<(i64, f32)>>,
}

impl std::fmt::Debug for ToxicityModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToxicityModel")
            .field("vocabulary", &self.analyzer.vocab.len())
            .finish_non_exhaustive()
    }
}

impl ToxicityModel {
    /// Loads the embedded model (include_bytes! of toxicity.onnx and the vocabulary) into an
    /// ONNX Runtime session; `dylib` is the path of libonnxruntime.so (ort load-dynamic).
    /// The library is loaded once per process; every later call must pass the same file.
    /// The session is single-threaded: throughput comes from running several models.
    pub fn load(dylib: &Path) -> Result<Self, ModelError> {
        let analyzer = Analyzer::embedded()?;
        let rt = runtime(dylib)?;
        let session = new_session(&rt.env)?;
        let names = |outlets: &[ort::value::Outlet]| -> Vec<String> {
            outlets.iter().map(|o| o.name().to_owned()).collect()
        };
        let (inputs, outputs) = (names(session.inputs()), names(session.outputs()));
        if inputs != [INPUT_IDS, INPUT_COUNTS] || outputs != [OUTPUT] {
            return Err(ModelError::Assets(format!(
                "graph has inputs {inputs:?} and outputs {outputs:?}"
            )));
        }
        Ok(ToxicityModel {
            session,
            analyzer,
            scratch: Vec::new(),
            rows: Vec::new(),
        })
    }

    /// Probability that each text is offensive, in input order. CPU-bound; callers run it
    /// off the async runtime.
    pub fn score(&mut self, texts: &[&str]) -> Result<Vec<f32>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.rows
            .resize_with(texts.len().max(self.rows.len()), Vec::new);
        for (text, row) in texts.iter().zip(&mut self.rows) {
            self.analyzer.counts(text, &mut self.scratch, row);
        }
        let rows = &self.rows[..texts.len()];
        // Padding is column 0 with count 0, which adds nothing; width >= 1 keeps every
        // dimension non-zero for texts without a known token.
        let width = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Array2::<i64>::zeros((texts.len(), width));
        let mut counts = Array2::<f32>::zeros((texts.len(), width));
        for (d, row) in rows.iter().enumerate() {
            for (j, &(column, n)) in row.iter().enumerate() {
                ids[[d, j]] = column;
                counts[[d, j]] = n;
            }
        }
        let outputs = self.session.run(ort::inputs![
            INPUT_IDS => TensorRef::from_array_view(&ids)?,
            INPUT_COUNTS => TensorRef::from_array_view(&counts)?,
        ])?;
        let (shape, probs) = outputs[OUTPUT].try_extract_tensor::<f32>()?;
        if probs.len() != texts.len() {
            return Err(ModelError::Assets(format!(
                "graph returned shape {shape:?} for {} texts",
                texts.len()
            )));
        }
        Ok(probs.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Parity {
        cases: Vec<Case>,
    }
    #[derive(Deserialize)]
    struct Case {
        text: String,
        counts: Vec<(i64, u32)>,
    }

    /// The tokenizer alone (no ONNX Runtime needed) against scikit-learn's counts.
    #[test]
    fn analyzer_matches_sklearn_counts() {
        let parity: Parity = serde_json::from_str(include_str!("../model/parity.json")).unwrap();
        let analyzer = Analyzer::embedded().unwrap();
        let (mut scratch, mut got) = (Vec::new(), Vec::new());
        for case in &parity.cases {
            analyzer.counts(&case.text, &mut scratch, &mut got);
            let got: Vec<(i64, u32)> = got.iter().map(|&(c, n)| (c, n as u32)).collect();
            assert_eq!(got, case.counts, "counts of {:?}", case.text);
        }
    }

    #[test]
    fn word_characters_follow_python() {
        let a = Analyzer::embedded().unwrap();
        for c in ['a', 'Z', '0', '_', 'é', 'ß', '連', '²', '½'] {
            assert!(a.is_word(c), "{c:?} is \\w in python");
        }
        // Combining marks are alphabetic to Rust but not \w to Python's re.
        for c in [
            ' ', '-', '\'', '*', '$', '\u{301}', '\u{93e}', '\u{200d}', '😀',
        ] {
            assert!(!a.is_word(c), "{c:?} is not \\w in python");
        }
    }

    #[test]
    fn tokens_are_runs_of_two_or_more() {
        let a = Analyzer::embedded().unwrap();
        let mut cols = Vec::new();
        a.columns("I x fuck-FUCK,fuck_you", &mut cols);
        let fuck = a.vocab["fuck"];
        assert_eq!(cols, [fuck, fuck]);
    }
}
