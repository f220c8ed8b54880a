//! Text normalisation that defeats the usual evasions of a blocklist.
//!
//! - Unicode compatibility forms (NFKC): full-width letters, ligatures, mathematical
//!   alphanumerics (`𝐟𝐮𝐜𝐤`) become plain letters.
//! - Case, diacritics (`fück`), and look-alike letters from other scripts (Cyrillic `о`,
//!   Greek `ο`) are folded to plain Latin.
//! - Leetspeak inside a word (`f4ck`, `b1tch`, `sh!t`, `a$$`) is read as letters.
//! - Separators inside a word (`f.u.c.k`, `f-u-c-k`) are dropped, and runs of single letters
//!   separated by spaces (`f u c k`) are joined.
//! - Repeated letters (`fuuuuck`) are handled by comparing run-length encodings: a word
//!   matches a term when it has the same letters in the same order, each repeated at least as
//!   often as in the term (so `ass` is not `as`, but `assss` is `ass`).
//! - A digit or symbol inside a word may stand for any vowel (`f4ck`, `f*ck`).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Letters from other scripts that look like Latin ones.
fn fold_confusable(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' | 'ε' | 'є' => 'e',
        'ɡ' => 'g',
        'һ' | 'н' => 'h',
        'і' | 'ї' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'μ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        other => other,
    }
}

/// Digits and symbols read as letters when they stand inside a word.
fn fold_leet(c: char) -> Option<char> {
    Some(match c {
        '4' | '@' => 'a',
        '8' => 'b',
        '(' => 'c',
        '3' => 'e',
        '6' | '9' => 'g',
        '1' | '!' | '|' => 'i',
        '0' => 'o',
        '5' | '$' => 's',
        '7' | '+' => 't',
        _ => return None,
    })
}

/// Symbols that stand for a censored letter (`f*ck`).
fn is_mask(c: char) -> bool {
    matches!(c, '*' | '#' | '%' | '?')
}

/// Characters dropped inside a word (`f.u.c.k`).
fn is_inner_separator(c: char) -> bool {
    matches!(c, '.' | '-' | '_' | '~' | '\'' | '`' | '"')
}

/// Case-folded, diacritic-free, confusable-folded text (leetspeak untouched).
pub fn fold(text: &str) -> String {
    // ASCII is its own NFKC and NFD form, has no combining marks and no look-alikes: only its
    // case folds. Most comments are ASCII and the rules fold each one several times, inside
    // the single writer: the Unicode path cost ~100 µs per 200-byte comment there (the
    // ingest benchmark's bottleneck, docs/benchmarks.md).
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    fold_unicode(text)
}

fn fold_unicode(text: &str) -> String {
    text.nfkc()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(fold_confusable)
        .collect()
}

/// The letters a wildcard cell (a mask character or a digit) stands for.
pub const VOWELS: &str = "aeiouy";

/// One position of a word as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Letter(char),
    /// A digit or symbol inside a word: its leet reading if it has one; it also stands for any
    /// vowel, the letter evasions usually replace (`f4ck`, `f*ck`, `sh1t`).
    Wild(Option<char>),
}

impl Cell {
    fn matches(self, letter: char) -> bool {
        match self {
            Cell::Letter(c) => c == letter,
            Cell::Wild(leet) => leet == Some(letter) || VOWELS.contains(letter),
        }
    }
}

/// Endings a prefix term (`fuck*`) may take.
const ENDINGS: &[&str] = &[
    "s", "es", "ed", "d", "er", "ers", "r", "rs", "ing", "ings", "in", "n", "y", "ty", "ie", "ies",
    "head", "heads", "hole", "holes", "face", "faces", "bag", "bags", "wit", "wits", "tard",
    "tards", "stick", "sticks", "off", "up", "wad", "wads", "ass",
];

/// A word as runs of equal cells: `fuuuck` is `f u×3 c k`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word(pub Vec<(Cell, u8)>);

impl Word {
    fn from_cells(cells: &[Cell]) -> Word {
        let mut w = Word(Vec::with_capacity(cells.len()));
        w.fill(cells);
        w
    }

    /// Becomes the word `cells` spell, runs of one cell counted.
    fn fill(&mut self, cells: &[Cell]) {
        let runs = &mut self.0;
        runs.clear();
        for &c in cells {
            match runs.last_mut() {
                Some((last, n)) if *last == c => *n = n.saturating_add(1),
                _ => runs.push((c, 1)),
            }
        }
    }

    /// Whether the word spells `term` (run-length encoded), each letter repeated at least as
    /// often as in the term; with `prefix`, the word may continue with a common ending
    /// (`fucking`, `shitty`, `bitches`) but not with anything else (`shiitake` is not `shit*`).
    pub fn spells(&self, term: &(String, Vec<u8>), prefix: bool) -> bool {
        let (letters, counts) = term;
        let n = counts.len();
        if self.0.len() < n || (!prefix && self.0.len() != n) {
            return false;
        }
        let head = letters
            .chars()
            .zip(counts)
            .zip(&self.0)
            .all(|((t, &tn), &(cell, wn))| cell.matches(t) && wn >= tn);
        if !head || self.0.len() == n {
            return head;
        }
        let rest = Word(self.0[n..].to_vec()).text();
        ENDINGS.contains(&rest.as_str())
    }

    /// The word with leet read as letters (for display and tests).
    pub fn text(&self) -> String {
        self.0
            .iter()
            .flat_map(|&(c, n)| {
                let ch = match c {
                    Cell::Letter(l) => l,
                    Cell::Wild(l) => l.unwrap_or('?'),
                };
                std::iter::repeat_n(ch, n as usize)
            })
            .collect()
    }
}

/// The candidate words of a text a blocklist is matched against.
pub fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    any_word(text, |w| {
        out.push(w.clone());
        false
    });
    out
}

/// Whether `f` holds for one of the text's candidate words ([`words`]), in order, stopping at
/// the first; one reused buffer instead of a vector per word (this runs for every post).
pub fn any_word(text: &str, mut f: impl FnMut(&Word) -> bool) -> bool {
    let folded = fold(text);
    let mut word = Word(Vec::new());
    let mut singles: Vec<Cell> = Vec::new();
    let mut cells: Vec<Cell> = Vec::new();
    // Hands a finished run of cells on; true when `f` held.
    let mut piece = |cells: &mut Vec<Cell>, singles: &mut Vec<Cell>, last: bool| -> bool {
        let mut flush = |singles: &mut Vec<Cell>, word: &mut Word| {
            let hit = singles.len() >= 3 && {
                word.fill(singles);
                f(word)
            };
            singles.clear();
            hit
        };
        if last {
            return flush(singles, &mut word);
        }
        let hit = if cells.iter().all(|c| matches!(c, Cell::Wild(_))) {
            // A lone digit is a number, not a disguised letter.
            flush(singles, &mut word)
        } else if cells.len() == 1 {
            singles.extend(cells.iter().copied());
            false
        } else {
            flush(singles, &mut word) || {
                word.fill(cells);
                f(&word)
            }
        };
        cells.clear();
        hit
    };
    for raw in folded.split(char::is_whitespace) {
        // Punctuation around a word is not leetspeak: "ass!" is "ass", "(hi)" is "hi"; only
        // `@` and `$` stand for letters at a word's edge ("$hit", "a$$").
        let trimmed = raw
            .trim_start_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '@')
            .trim_end_matches(|c: char| !c.is_alphanumeric() && c != '$' && c != '@');
        for c in trimmed.chars() {
            if c.is_alphabetic() {
                cells.push(Cell::Letter(c));
            } else if let Some(l) = fold_leet(c) {
                cells.push(Cell::Wild(Some(l)));
            } else if is_mask(c) || c.is_numeric() {
                cells.push(Cell::Wild(None));
            } else if is_inner_separator(c) {
                // dropped: f.u.c.k
            } else if !cells.is_empty() && piece(&mut cells, &mut singles, false) {
                // Other punctuation splits words ("bad,word").
                return true;
            }
        }
        if !cells.is_empty() && piece(&mut cells, &mut singles, false) {
            return true;
        }
    }
    piece(&mut cells, &mut singles, true)
}

/// A blocklist term as letters and repeat counts (folded like the text).
pub fn term(term: &str) -> (String, Vec<u8>) {
    let letters: Vec<Cell> = fold(term)
        .chars()
        .filter(|c| c.is_alphabetic())
        .map(Cell::Letter)
        .collect();
    let word = Word::from_cells(&letters);
    let mut s = String::new();
    let mut counts = Vec::new();
    for (c, n) in word.0 {
        if let Cell::Letter(l) = c {
            s.push(l);
            counts.push(n);
        }
    }
    (s, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        words(s).iter().map(Word::text).collect()
    }

    #[test]
    fn ascii_fast_path_equals_the_unicode_path() {
        let all: String = (0u8..128).map(char::from).collect();
        assert_eq!(fold(&all), fold_unicode(&all));
        for s in [
            "What A GOAL!!",
            "f.U.c.K 4ss $hit",
            "www.Example.COM/x?y=1",
            "",
        ] {
            assert_eq!(fold(s), fold_unicode(s), "{s:?}");
        }
    }

    #[test]
    fn folds_case_accents_compat_and_confusables() {
        assert_eq!(fold("FÜCK"), "fuck");
        assert_eq!(fold("ｆｕｃｋ"), "fuck");
        assert_eq!(fold("𝐟𝐮𝐜𝐤"), "fuck");
        assert_eq!(fold("ѕһіt"), "shit"); // Cyrillic look-alikes
    }

    #[test]
    fn words_undo_leet_separators_and_spacing() {
        assert_eq!(texts("b1tch!"), vec!["bitch"]);
        assert_eq!(texts("a$$hole"), vec!["asshole"]);
        assert_eq!(texts("f.u.c.k"), vec!["fuck"]);
        assert_eq!(texts("f u c k off"), vec!["fuck", "off"]);
        // Lone letters only count when several are spaced out like a word.
        assert_eq!(texts("what a goal!"), vec!["what", "goal"]);
        assert_eq!(texts("bad,word"), vec!["bad", "word"]);
        assert_eq!(
            texts("(hink"),
            vec!["hink"],
            "a bracket is not a c at a word's start"
        );
        assert_eq!(texts("I scored 2 goals"), vec!["scored", "goals"]);
    }

    #[test]
    fn spelling_with_repeats_wildcards_and_prefixes() {
        let fuck = term("fuck");
        let spells = |w: &str, prefix: bool| words(w).iter().any(|x| x.spells(&fuck, prefix));
        for evasion in [
            "fuck", "FUCK", "fuuuuck", "f4ck", "f*ck", "f@ck", "fück", "f.u.c.k",
        ] {
            assert!(spells(evasion, false), "{evasion}");
        }
        assert!(spells("fucking", true));
        assert!(!spells("fucking", false));
        assert!(!spells("duck", true));
        let ass = term("ass");
        assert!(!words("as").iter().any(|w| w.spells(&ass, false)));
        assert!(words("assss").iter().any(|w| w.spells(&ass, false)));
        assert!(!words("class").iter().any(|w| w.spells(&ass, true)));
    }
}
