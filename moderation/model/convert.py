#!/usr/bin/env python3
"""Converts alt-profanity-check's scikit-learn model to the numeric-input ONNX graph that
moderation/src/model.rs runs through ONNX Runtime.

    python3 -m venv /tmp/x
    /tmp/x/bin/pip install -r moderation/model/requirements.txt
    /tmp/x/bin/python moderation/model/convert.py

The package ships a TfidfVectorizer and a CalibratedClassifierCV (several LinearSVCs, each
with a sigmoid calibrator). Text handling stays in Rust (ONNX Runtime's string ops need a
locale missing here and its tokenizer is ASCII-only): Rust lowercases, tokenizes, looks the
tokens up in vocab.txt and counts them; the graph takes those counts and does the rest:

    token_ids  int64 [batch, max_tokens]  vocabulary column of each distinct token of a text
    counts     float [batch, max_tokens]  occurrences of that token (0 = padding)
    probability float [batch]             = predict_proba(texts)[:, 1]

Writes, next to this script: toxicity.onnx, vocab.txt (line n = column n), analyzer.json
(the vectorizer's settings and the exact set of characters its regex calls \\w), parity.json
(texts with the package's own probabilities, and the counts Rust must produce), LICENSE and
PROVENANCE.md. Fails, rather than converting something different, if the pickled objects
are not the kind this graph reproduces.
"""

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import sklearn
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

PACKAGE = "alt-profanity-check"
VERSION = "1.9.1"
WHEEL = "alt_profanity_check-1.9.1-py3-none-any.whl"
# PyPI's published sha256 of WHEEL; the download below must match it.
WHEEL_SHA256 = "cccb8ce072306bac21188670777a25cfb1de978aa8c7a93c8e4a43c03b3945c3"
OPSET = 17
IR_VERSION = 8  # what opset 17 shipped with; ONNX Runtime 1.31 loads it

HERE = Path(__file__).resolve().parent

# Texts whose probabilities the Rust test must reproduce: clean, profane, insults, leetspeak,
# Unicode (accents, Greek final sigma, Turkish dotted I, the Kelvin sign, CJK tokens that are
# in the vocabulary), repeated words, stop words only and nearly empty input.
PARITY_TEXTS = [
    "",
    " ",
    "!!! ??? ...",
    "a",
    "I",
    "the and of to",
    "Great stream tonight, thanks for the tips!",
    "What time does the match start tomorrow?",
    "I love this song so much",
    "Can you explain the second example again please",
    "The weather in Paris is lovely in spring.",
    "Congratulations on the new release, well done everyone",
    "fuck",
    "FUCK",
    "fuck fuck fuck fuck",
    "what the fuck is this shit",
    "you are a stupid idiot",
    "shut up you moron",
    "go to hell, asshole",
    "this is bullshit",
    "You're an absolute dumbass and everyone hates you",
    "kill yourself",
    "I will find you and hurt you",
    "sh1t",
    "f*ck you",
    "a$$hole",
    "b1tch please",
    "fuk u",
    "fuck_you",
    "f u c k",
    "Pokémon is great",
    "POKÉMON IS GREAT",
    "Beyoncé and José went to the café",
    "Poke\u0301mon decomposed accent",
    "İdiot",
    "\u212a\u212aK",
    "ΣΑΣ ΜΕΛ",
    "連絡 見学 迷惑",
    "😀😀 lol 😡 damn",
    "naïve façade coöperate",
    "idiot\u093e moron\u0301",  # combining marks: letters in Rust's sense, not \w to Python's re
    "ＦＵＣＫ ｙｏｕ",
    "fuck² fuck123 ǅ",
    "user_talk __toc__ fair_use",
    "2004 2005 1992 01",
    ("this is a long comment that goes on and on about nothing in particular " * 12)
    + "and then ends with a damn insult, you idiot",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--wheel",
        type=Path,
        help=f"a local copy of {WHEEL} to check the installed package against "
        "(default: download it from PyPI with pip)",
    )
    p.add_argument("--out", type=Path, default=HERE, help="output directory")
    return p.parse_args()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(path: Path | None, tmp: Path) -> Path:
    if path is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", f"{PACKAGE}=={VERSION}", "-d", str(tmp)],
            check=True,
            stdout=sys.stderr,
        )
        path = tmp / WHEEL
    digest = sha256(path.read_bytes())
    if digest != WHEEL_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {WHEEL_SHA256}")
    return path


def check_installed_matches_wheel(wheel: Path) -> None:
    """The objects converted are the installed package's; make sure they are the wheel's."""
    dist = importlib.metadata.distribution(PACKAGE)
    if dist.version != VERSION:
        sys.exit(f"installed {PACKAGE} is {dist.version}, expected {VERSION}")
    with zipfile.ZipFile(wheel) as z:
        for member in ("profanity_check/data/model.joblib", "profanity_check/data/vectorizer.joblib"):
            installed = Path(dist.locate_file(member)).read_bytes()
            if installed != z.read(member):
                sys.exit(f"installed {member} differs from the one in {wheel.name}")


def check_supported(vectorizer, model) -> dict:
    """Returns the vectorizer parameters, after checking they are the ones reproduced."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
    from sklearn.svm import LinearSVC

    params = vectorizer.get_params()
    print("vectorizer:", type(vectorizer).__name__, file=sys.stderr)
    for k in sorted(params):
        print(f"  {k} = {params[k]!r}", file=sys.stderr)
    expected = {
        "analyzer": "word",
        "lowercase": True,
        "preprocessor": None,
        "tokenizer": None,
        "strip_accents": None,
        "token_pattern": r"(?u)\b\w\w+\b",
        "ngram_range": (1, 1),
        "binary": False,
        "use_idf": True,
        "sublinear_tf": False,
        "norm": "l2",
    }
    assert type(vectorizer) is TfidfVectorizer, type(vectorizer)
    for k, v in expected.items():
        assert params[k] == v, f"vectorizer {k} = {params[k]!r}, the graph assumes {v!r}"
    # Stop words are dropped after tokenizing. With unigrams only that is the same as dropping
    # tokens missing from the vocabulary, provided no stop word is in it.
    assert params["stop_words"] in (None, "english"), params["stop_words"]
    stop = ENGLISH_STOP_WORDS if params["stop_words"] == "english" else frozenset()
    assert not stop & vectorizer.vocabulary_.keys(), "a stop word is in the vocabulary"
    n = len(vectorizer.vocabulary_)
    assert sorted(vectorizer.vocabulary_.values()) == list(range(n))
    for t in vectorizer.vocabulary_:
        assert re.fullmatch(r"\w\w+", t), f"token {t!r} cannot come out of the tokenizer"

    assert type(model) is CalibratedClassifierCV, type(model)
    assert list(model.classes_) == [0, 1], model.classes_
    print(
        f"model: CalibratedClassifierCV method={model.method} "
        f"with {len(model.calibrated_classifiers_)} calibrated classifiers",
        file=sys.stderr,
    )
    for cc in model.calibrated_classifiers_:
        assert cc.method == "sigmoid", cc.method
        assert type(cc.estimator) is LinearSVC, type(cc.estimator)
        assert list(cc.estimator.classes_) == [0, 1]
        assert cc.estimator.coef_.shape == (1, n)
        assert len(cc.calibrators) == 1
        cal = cc.calibrators[0]
        assert type(cal).__name__ == "_SigmoidCalibration", type(cal)
        print(
            f"  LinearSVC intercept={cc.estimator.intercept_[0]:.6f} "
            f"sigmoid a={cal.a_:.6f} b={cal.b_:.6f}",
            file=sys.stderr,
        )
    return params


def build_graph(vectorizer, model) -> onnx.ModelProto:
    """TF-IDF with L2 norm, K linear SVMs, K sigmoid calibrations, mean over K.

    sklearn computes, for the counts c of a text (a row of CountVectorizer's output):
        x = c * idf / ||c * idf||_2      (x = 0 when the text has no known token)
        f_k = x . w_k + i_k              (LinearSVC.decision_function)
        p_k = 1 / (1 + exp(a_k f_k + b_k))   (_SigmoidCalibration.predict)
        p = mean_k p_k                   (CalibratedClassifierCV.predict_proba[:, 1])
    The graph computes the same with the calibration folded into the weights:
        p_k = sigmoid(v . (-a_k w_k) / max(||v||, tiny) - (a_k i_k + b_k)),  v = c * idf
    (when a text has a token, ||v|| >= 1 since counts and idf are >= 1).
    """
    idf = vectorizer.idf_.astype(np.float64)
    ccs = model.calibrated_classifiers_
    a = np.array([cc.calibrators[0].a_ for cc in ccs], dtype=np.float64)
    b = np.array([cc.calibrators[0].b_ for cc in ccs], dtype=np.float64)
    w = np.stack([cc.estimator.coef_[0] for cc in ccs], axis=1).astype(np.float64)  # [V, K]
    i = np.array([cc.estimator.intercept_[0] for cc in ccs], dtype=np.float64)
    w_scaled = (w * -a).astype(np.float32)
    bias = (-(a * i + b)).astype(np.float32)

    inits = [
        numpy_helper.from_array(idf.astype(np.float32), "idf"),
        numpy_helper.from_array(w_scaled, "weights"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "tiny"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["idf", "token_ids"], ["token_idf"], axis=0),  # [B, T]
        node("Mul", ["counts", "token_idf"], ["tfidf"]),  # [B, T]
        node("Mul", ["tfidf", "tfidf"], ["tfidf_sq"]),
        node("ReduceSum", ["tfidf_sq", "axis1"], ["sum_sq"], keepdims=1),  # [B, 1]
        node("Sqrt", ["sum_sq"], ["norm"]),
        node("Max", ["norm", "tiny"], ["norm_safe"]),
        node("Gather", ["weights", "token_ids"], ["token_weights"], axis=0),  # [B, T, K]
        node("Unsqueeze", ["tfidf", "axis1"], ["tfidf_row"]),  # [B, 1, T]
        node("MatMul", ["tfidf_row", "token_weights"], ["dot_row"]),  # [B, 1, K]
        node("Squeeze", ["dot_row", "axis1"], ["dot"]),  # [B, K]
        node("Div", ["dot", "norm_safe"], ["dot_normed"]),
        node("Add", ["dot_normed", "bias"], ["logits"]),
        node("Sigmoid", ["logits"], ["calibrated"]),  # [B, K]
        node("ReduceMean", ["calibrated"], ["probability"], axes=[1], keepdims=0),  # [B]
    ]
    graph = helper.make_graph(
        nodes,
        "alt_profanity_check_1_9_1",
        inputs=[
            helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["batch", "max_tokens"]),
            helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["batch", "max_tokens"]),
        ],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="livecomments moderation/model/convert.py",
        doc_string=f"{PACKAGE}=={VERSION} (MIT) TF-IDF + {len(ccs)} sigmoid-calibrated LinearSVCs; "
        "inputs are vocabulary columns and counts per text, see vocab.txt and analyzer.json",
    )
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def word_char_ranges(pattern: str) -> list[list[int]]:
    """Code point ranges (inclusive) that `\\w` matches under the vectorizer's regex flags."""
    flags = re.compile(pattern).flags
    w = re.compile(r"\w", flags)
    ranges, start = [], None
    for c in range(0x110000):
        ok = not 0xD800 <= c <= 0xDFFF and w.fullmatch(chr(c)) is not None
        if ok and start is None:
            start = c
        elif not ok and start is not None:
            ranges.append([start, c - 1])
            start = None
    if start is not None:
        ranges.append([start, 0x10FFFF])
    return ranges


def counts_of(vectorizer, text: str) -> list[list[int]]:
    """What the Rust side must feed the graph for `text`: [column, count] sorted by column."""
    analyze = vectorizer.build_analyzer()
    vocab = vectorizer.vocabulary_
    c = Counter(vocab[t] for t in analyze(text) if t in vocab)
    return [[col, n] for col, n in sorted(c.items())]


def graph_inputs(rows: list[list[list[int]]]) -> dict:
    width = max([1] + [len(r) for r in rows])
    ids = np.zeros((len(rows), width), dtype=np.int64)
    counts = np.zeros((len(rows), width), dtype=np.float32)
    for d, row in enumerate(rows):
        for j, (col, n) in enumerate(row):
            ids[d, j], counts[d, j] = col, n
    return {"token_ids": ids, "counts": counts}


def main() -> None:
    args = parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = fetch_wheel(args.wheel, Path(tmp))
        check_installed_matches_wheel(wheel)

    # Importing the package loads its pickled vectorizer and model.
    import profanity_check
    from profanity_check import profanity_check as pc

    vectorizer, model = pc.vectorizer, pc.model
    params = check_supported(vectorizer, model)
    n_features = len(vectorizer.vocabulary_)

    graph = build_graph(vectorizer, model)
    (out / "toxicity.onnx").write_bytes(graph.SerializeToString())

    vocab = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")

    analyzer = {
        "source": f"{PACKAGE}=={VERSION} TfidfVectorizer, scikit-learn {sklearn.__version__}",
        "n_features": n_features,
        "lowercase": params["lowercase"],
        "strip_accents": params["strip_accents"],
        "token_pattern": params["token_pattern"],
        "ngram_range": list(params["ngram_range"]),
        "stop_words": params["stop_words"],
        "stop_words_note": "no stop word is in the vocabulary: dropping unknown tokens drops them",
        "python": sys.version.split()[0],
        "unicode_version": __import__("unicodedata").unidata_version,
        "word_char_ranges": word_char_ranges(params["token_pattern"]),
    }
    (out / "analyzer.json").write_text(
        json.dumps(analyzer, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )

    # The package's own answer, through its public function.
    expected = profanity_check.predict_prob(PARITY_TEXTS)
    direct = model.predict_proba(vectorizer.transform(PARITY_TEXTS))[:, 1]
    assert np.array_equal(expected, direct)
    rows = [counts_of(vectorizer, t) for t in PARITY_TEXTS]
    got = ReferenceEvaluator(graph).run(None, graph_inputs(rows))[0]
    max_err = float(np.max(np.abs(got.astype(np.float64) - expected)))
    print(f"graph vs predict_proba over {len(PARITY_TEXTS)} texts: max |error| {max_err:.2e}",
          file=sys.stderr)
    assert max_err < 1e-5, max_err
    parity = {
        "note": f"{PACKAGE}=={VERSION} predict_prob(text); counts = [vocabulary column, count]",
        "cases": [
            {"text": t, "probability": float(p), "counts": r}
            for t, p, r in zip(PARITY_TEXTS, expected, rows)
        ],
    }
    (out / "parity.json").write_text(
        json.dumps(parity, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )

    dist = importlib.metadata.distribution(PACKAGE)
    licence = dist.read_text("licenses/LICENSE") or dist.read_text("LICENSE")
    assert licence and "MIT" in licence, "licence text not found in the package metadata"
    (out / "LICENSE").write_text(licence, encoding="utf-8")

    deps = ", ".join(
        f"{d}=={importlib.metadata.version(d)}" for d in ("scikit-learn", "joblib", "numpy", "onnx")
    )
    sizes = {f: (out / f).stat().st_size for f in ("toxicity.onnx", "vocab.txt", "analyzer.json")}
    provenance = f"""# Provenance of the moderation model

- Package: [{PACKAGE}](https://pypi.org/project/{PACKAGE}/{VERSION}/) {VERSION}, MIT licence
  (text in `LICENSE`, copied from the package metadata). Authors: {dist.metadata["Author"]}.
- Wheel: `{WHEEL}`, sha256 `{WHEEL_SHA256}`; the installed
  `profanity_check/data/{{vectorizer,model}}.joblib` were checked byte-for-byte against it.
- Converted with Python {sys.version.split()[0]}, {deps} (all pins in `requirements.txt`).
- Date: {datetime.datetime.now(datetime.timezone.utc).date().isoformat()}.

## What was converted

`profanity_check/data/vectorizer.joblib`, a `TfidfVectorizer` ({n_features} terms,
lowercase, token pattern `{params["token_pattern"]}`, English stop words, unigrams, smooth idf,
L2 norm, no sublinear tf), and `profanity_check/data/model.joblib`, a `CalibratedClassifierCV`
(method `{model.method}`) holding {len(model.calibrated_classifiers_)} `LinearSVC`s each with a sigmoid
calibrator; its probability is the mean of theirs.

- `toxicity.onnx` ({sizes["toxicity.onnx"]} bytes, opset {OPSET}): inputs `token_ids` int64
  [batch, max_tokens] and `counts` float [batch, max_tokens] (padding: any id with count 0);
  output `probability` float [batch] = `predict_proba(texts)[:, 1]`. Standard ops only (Gather,
  Mul, ReduceSum, Sqrt, Max, MatMul, Div, Add, Sigmoid, ReduceMean); weights in float32.
- `vocab.txt` ({sizes["vocab.txt"]} bytes): the vocabulary, line n (from 0) = column n.
- `analyzer.json` ({sizes["analyzer.json"]} bytes): the vectorizer's text settings and the code
  point ranges that Python's `re` treats as `\\w` (Unicode {analyzer["unicode_version"]}), which the
  Rust tokenizer uses so its tokens match sklearn's.
- `parity.json`: {len(PARITY_TEXTS)} texts with the package's `predict_prob` values and the counts the
  Rust side must produce; the graph matched them within {max_err:.1e} (ONNX reference evaluator).

## Reproduce

```
python3 -m venv /tmp/x
/tmp/x/bin/pip install -r moderation/model/requirements.txt
/tmp/x/bin/python moderation/model/convert.py
```
"""
    (out / "PROVENANCE.md").write_text(provenance, encoding="utf-8")
    for f in sorted(out.iterdir()):
        print(f"  {f.name}: {f.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
