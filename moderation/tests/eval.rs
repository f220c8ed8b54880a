//! The model separates the project's labelled sample (`moderation/eval/sample.tsv`).
//!
//! Needs ONNX Runtime: `ORT_DYLIB_PATH=$(scripts/install-onnxruntime) cargo test -p moderation`.

use std::path::PathBuf;

use moderation::eval::{evaluate, parse_tsv};
use moderation::model::ToxicityModel;

fn model() -> ToxicityModel {
    let path = std::env::var("ORT_DYLIB_PATH")
        .expect("ORT_DYLIB_PATH must point at libonnxruntime.so (scripts/install-onnxruntime)");
    ToxicityModel::load(&PathBuf::from(path)).expect("model loads")
}

fn sample(name: &str) -> Vec<moderation::eval::Labelled> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/").to_string() + name;
    parse_tsv(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_model_separates_the_labelled_sample_at_the_default_thresholds() {
    let examples = sample("sample.tsv");
    let r = evaluate(&mut model(), &examples, 0.9, 0.6).unwrap();
    assert!(r.examples >= 80 && r.offensive >= 25, "{r}");
    assert!(r.auc >= 0.95, "{r}");
    assert!(
        r.retract.precision() >= 0.95,
        "auto-retraction must be precise:\n{r}"
    );
    assert!(r.retract.recall() >= 0.8, "{r}");
    assert!(r.review.recall() >= 0.9, "{r}");
}

#[test]
fn the_known_misses_are_missed() {
    // Documented in docs/moderation.md: threats and hate without swear words, and other
    // languages, score low. If this starts failing, the model improved: update the docs.
    let examples = sample("hard.tsv");
    let r = evaluate(&mut model(), &examples, 0.9, 0.6).unwrap();
    assert!(r.review.recall() < 0.5, "{r}");
}
