//! The toxicity model through a real ONNX Runtime. Run with
//!
//!     ORT_DYLIB_PATH=$(scripts/install-onnxruntime) cargo test -p moderation
//!
//! (`scripts/test` sets it). Without `ORT_DYLIB_PATH` naming the library these tests fail:
//! a model that silently does not run is what they are here to catch.

use std::path::PathBuf;

use moderation::model::{ModelError, ToxicityModel};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

fn dylib() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).expect(
        "ORT_DYLIB_PATH is not set; run: ORT_DYLIB_PATH=$(scripts/install-onnxruntime) cargo test -p moderation",
    );
    assert!(
        path.is_file(),
        "ORT_DYLIB_PATH={} is not a file; run scripts/install-onnxruntime",
        path.display()
    );
    path
}

fn model() -> ToxicityModel {
    ToxicityModel::load(&dylib()).expect("load the model")
}

#[derive(Deserialize)]
struct Parity {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    probability: f64,
}

fn parity() -> Vec<Case> {
    let p: Parity = serde_json::from_str(include_str!("../model/parity.json")).unwrap();
    assert!(p.cases.len() >= 40);
    p.cases
}

fn check(case: &Case, got: f32) -> f32 {
    let err = (got as f64 - case.probability).abs() as f32;
    assert!(
        err <= TOLERANCE,
        "{:?}: rust {got}, python {} (|error| {err})",
        case.text,
        case.probability
    );
    err
}

#[test]
fn matches_python_in_one_batch() {
    let cases = parity();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let got = model().score(&texts).unwrap();
    assert_eq!(got.len(), cases.len());
    let max = cases
        .iter()
        .zip(&got)
        .map(|(c, &p)| check(c, p))
        .fold(0f32, f32::max);
    println!("parity: {} texts, max |error| {max:e}", cases.len());
}

#[test]
fn matches_python_one_at_a_time() {
    // Padding to the longest text of a batch must not change any score.
    let mut model = model();
    for case in parity() {
        let got = model.score(&[&case.text]).unwrap();
        check(&case, got[0]);
    }
}

#[test]
fn separates_clean_from_offensive() {
    let clean = [
        "Great stream, thanks!",
        "what a beautiful goal",
        "see you all next week",
        "can you share the link to the slides",
        "happy birthday to the host",
        "this recipe looks delicious",
    ];
    let offensive = [
        "fuck you",
        "you are a worthless piece of shit",
        "shut up, bitch",
        "what a dumb fucking idiot",
        "go fuck yourself asshole",
        "this host is a retard",
    ];
    let mut model = model();
    let c = model.score(&clean).unwrap();
    let o = model.score(&offensive).unwrap();
    for (t, p) in clean.iter().zip(&c) {
        assert!(*p < 0.2, "clean {t:?} scored {p}");
    }
    for (t, p) in offensive.iter().zip(&o) {
        assert!(*p > 0.8, "offensive {t:?} scored {p}");
    }
}

#[test]
fn empty_batch_and_unknown_words() {
    let mut model = model();
    assert_eq!(model.score(&[]).unwrap(), Vec::<f32>::new());
    // Nothing the vocabulary knows: every such text gets the model's prior, the same value.
    let got = model
        .score(&["", "   ", "a b c", "zzqxj qqvvw", "😀😀😀", "the of and"])
        .unwrap();
    assert!(
        got.iter().all(|&p| p == got[0] && (0.0..0.5).contains(&p)),
        "{got:?}"
    );
}

#[test]
fn several_models_share_the_runtime() {
    let (mut a, mut b) = (model(), model());
    let texts = ["hello there", "fuck off"];
    assert_eq!(a.score(&texts).unwrap(), b.score(&texts).unwrap());
    // Scoring is done on a blocking thread by callers.
    let handle = std::thread::spawn(move || a.score(&texts).unwrap());
    assert_eq!(handle.join().unwrap(), b.score(&texts).unwrap());
}

#[test]
fn another_library_is_refused() {
    let _ = model(); // ONNX Runtime is loaded once per process, from ORT_DYLIB_PATH
    let err = ToxicityModel::load(std::path::Path::new("/nonexistent/libonnxruntime.so"))
        .expect_err("a second runtime library");
    assert!(matches!(err, ModelError::RuntimeMismatch { .. }), "{err}");
}
