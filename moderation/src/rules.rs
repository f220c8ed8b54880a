//! The synchronous rules: blocklist, links, repeats, capitals, emoji walls. Microseconds per
//! post; the bridge runs them before a post is accepted.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use regex::Regex;
use unicode_segmentation::UnicodeSegmentation;
use wire::bus::Author;
use wire::UserId;

use crate::config::{RuleAction, RulesConfig};
use crate::normalize::{self, Cell, Word};

/// Which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Blocklist,
    Links,
    Repeat,
    Caps,
    Emoji,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Blocklist => "blocklist",
            Rule::Links => "links",
            Rule::Repeat => "repeat",
            Rule::Caps => "caps",
            Rule::Emoji => "emoji",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Rule::Blocklist => "the comment contains a blocked word",
            Rule::Links => "links are not allowed here",
            Rule::Repeat => "the same comment was posted too often",
            Rule::Caps => "too many capital letters",
            Rule::Emoji => "too many emoji",
        }
    }
}

/// A rule that matched and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub rule: Rule,
    pub action: RuleAction,
}

impl Hit {
    pub fn message(&self) -> String {
        format!("{} ({} rule)", self.rule.explain(), self.rule.name())
    }
}

struct Term {
    spelled: (String, Vec<u8>),
    prefix: bool,
}

pub struct Rules {
    config: RulesConfig,
    terms: Vec<Term>,
    /// Terms by their first letter: a word can only spell a term whose first letter its
    /// first cell matches, so each word is compared with a few terms, not the whole list.
    by_first: HashMap<char, Vec<usize>>,
    /// Terms starting with a vowel, which a wildcard cell (`*`, a digit) also matches.
    vowel_first: Vec<usize>,
    /// Folded allow-listed phrases.
    allow: Vec<String>,
    link: Regex,
    /// Recent texts per user (hash, when), for the repeat rule.
    recent: Mutex<HashMap<UserId, VecDeque<(u64, Instant)>>>,
}

/// `http(s)://`, `www.`, or `name.tld` for top-level domains that are not also common words
/// after a full stop without a space ("game.gg", "know.me", "match.top" are chat, not links).
const LINK: &str = r"(?i)(?:\bhttps?://|\bwww\.|\b[a-z0-9][a-z0-9-]*\.(?:com|net|org|io|ly|xyz|ru|tk|info|biz|click|link)\b)";

impl Rules {
    pub fn new(config: RulesConfig) -> Rules {
        let terms = config
            .blocklist
            .iter()
            .map(|t| Term {
                spelled: normalize::term(t),
                prefix: t.trim_end().ends_with('*'),
            })
            .filter(|t| !t.spelled.0.is_empty())
            .collect::<Vec<Term>>();
        let mut by_first: HashMap<char, Vec<usize>> = HashMap::new();
        let mut vowel_first = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            if let Some(c) = t.spelled.0.chars().next() {
                by_first.entry(c).or_default().push(i);
                if normalize::VOWELS.contains(c) {
                    vowel_first.push(i);
                }
            }
        }
        let allow = config
            .allow_phrases
            .iter()
            .map(|p| normalize::fold(p))
            .filter(|p| !p.trim().is_empty())
            .collect();
        Rules {
            config,
            terms,
            by_first,
            vowel_first,
            allow,
            // A constant pattern: compiling it cannot fail.
            link: Regex::new(LINK).unwrap_or_else(|_| Regex::new("$^").expect("trivial regex")),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// The first rule the text breaks, in order of severity.
    pub fn check(&self, author: &Author, text: &str) -> Option<Hit> {
        let c = &self.config;
        let hit = |rule, action| (action != RuleAction::Off).then_some(Hit { rule, action });
        // Folded once for the blocklist, repeat and link rules (the blocklist's word split
        // folds its input again: a copy for ASCII, and what it always did otherwise).
        let folded = normalize::fold(text);
        if c.blocklist_action != RuleAction::Off && self.blocked(&folded) {
            return hit(Rule::Blocklist, c.blocklist_action);
        }
        if c.trusted_roles.contains(&author.role) {
            return None;
        }
        // Repeats first: a spammer repeating a link is refused, not queued again and again.
        if c.repeat_action != RuleAction::Off && self.repeated(&author.id, &folded) {
            return hit(Rule::Repeat, c.repeat_action);
        }
        // On the folded text, so full-width or decorated links are links too.
        if c.links_action != RuleAction::Off && self.link.is_match(&folded) {
            return hit(Rule::Links, c.links_action);
        }
        if c.caps_action != RuleAction::Off && self.shouting(text) {
            return hit(Rule::Caps, c.caps_action);
        }
        if c.emoji_action != RuleAction::Off && self.emoji_wall(text) {
            return hit(Rule::Emoji, c.emoji_action);
        }
        None
    }

    /// `folded`: the text through [`normalize::fold`].
    fn blocked(&self, folded: &str) -> bool {
        let mut kept = std::borrow::Cow::Borrowed(folded);
        for phrase in &self.allow {
            if kept.contains(phrase.as_str()) {
                kept = std::borrow::Cow::Owned(kept.replace(phrase.as_str(), " "));
            }
        }
        normalize::any_word(&kept, |w| self.spells_a_term(w))
    }

    fn spells_a_term(&self, w: &Word) -> bool {
        let any = |idxs: &[usize]| {
            idxs.iter().any(|&i| {
                let t = &self.terms[i];
                w.spells(&t.spelled, t.prefix)
            })
        };
        match w.0.first() {
            None => false,
            Some((Cell::Letter(c), _)) => self.by_first.get(c).is_some_and(|v| any(v)),
            // A wildcard matches any vowel, and a leet digit its letter too.
            Some((Cell::Wild(leet), _)) => {
                any(&self.vowel_first)
                    || leet
                        .filter(|l| !normalize::VOWELS.contains(*l))
                        .and_then(|l| self.by_first.get(&l))
                        .is_some_and(|v| any(v))
            }
        }
    }

    /// `folded`: the text through [`normalize::fold`].
    fn repeated(&self, user: &UserId, folded: &str) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for word in folded.split_whitespace() {
            word.hash(&mut h);
        }
        let hash = h.finish();
        let now = Instant::now();
        let window = Duration::from_secs(self.config.repeat_window_s);
        let Ok(mut recent) = self.recent.lock() else {
            return false;
        };
        if recent.len() > 100_000 {
            recent.retain(|_, q| {
                q.back()
                    .is_some_and(|(_, t)| now.duration_since(*t) < window)
            });
        }
        let q = recent.entry(user.clone()).or_default();
        while q
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) >= window)
        {
            q.pop_front();
        }
        let seen = q.iter().filter(|(x, _)| *x == hash).count() as u32;
        q.push_back((hash, now));
        if q.len() > 64 {
            q.pop_front();
        }
        seen >= self.config.repeat_max
    }

    fn shouting(&self, text: &str) -> bool {
        // A repeated letter counts once: "GOOOOOOOAAAAL" is a cheer, not shouting.
        let (mut total, mut upper) = (0usize, 0usize);
        let mut last = None;
        for c in text.chars().filter(|c| c.is_alphabetic()) {
            let lower = c.to_lowercase().next();
            if lower == last {
                continue;
            }
            last = lower;
            total += 1;
            if c.is_uppercase() {
                upper += 1;
            }
        }
        total >= self.config.caps_min_letters
            && upper as f32 >= self.config.caps_ratio * total as f32
    }

    /// Counted in grapheme clusters: a flag, a skin-toned hand or a family is one emoji.
    fn emoji_wall(&self, text: &str) -> bool {
        // Most comments have no emoji at all: no need to segment them.
        if self.config.emoji_min > 0 && !text.chars().any(is_emoji) {
            return false;
        }
        let (mut visible, mut emoji) = (0usize, 0usize);
        for g in text.graphemes(true) {
            if g.chars().all(char::is_whitespace) {
                continue;
            }
            visible += 1;
            if g.chars().any(is_emoji) {
                emoji += 1;
            }
        }
        emoji >= self.config.emoji_min && emoji as f32 >= self.config.emoji_ratio * visible as f32
    }
}

/// Pictographic code points (emoji presentation and symbols), plus the joiners and
/// modifiers emoji sequences are built from.
pub fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF
        | 0xFE0F | 0x200D | 0xE0020..=0xE007F)
}

/// Whether a text is only emoji and spaces (a chat in emote-only mode). Decided per
/// grapheme against the Unicode emoji list (the `emojis` crate): keycaps, flags, ZWJ
/// sequences, skin tones and text-style symbols such as © count, while letter-like symbols
/// from the emoji blocks (🅷, a lone regional indicator) do not.
pub fn is_emote_only(text: &str) -> bool {
    let mut any = false;
    for g in text.graphemes(true) {
        if g.chars().all(char::is_whitespace) {
            continue;
        }
        any = true;
        if !is_emoji_grapheme(g) {
            return false;
        }
    }
    any
}

/// One grapheme that is an emoji, with or without its variation selector.
pub fn is_emoji_grapheme(g: &str) -> bool {
    if emojis::get(g).is_some() {
        return true;
    }
    if g.contains('\u{FE0F}') {
        let bare: String = g.chars().filter(|&c| c != '\u{FE0F}').collect();
        return emojis::get(&bare).is_some();
    }
    // A text-style symbol written without its selector (©, ™, ☺); never plain ASCII (a
    // digit is only an emoji as part of a keycap).
    if g.is_ascii() {
        return false;
    }
    let mut qualified = String::with_capacity(g.len() + 3);
    qualified.push_str(g);
    qualified.push('\u{FE0F}');
    emojis::get(&qualified).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::auth::Role;

    fn config() -> RulesConfig {
        RulesConfig {
            blocklist: vec![
                "fuck*".into(),
                "shit*".into(),
                "bitch*".into(),
                "ass".into(),
                "chink*".into(),
            ],
            allow_phrases: vec!["chink in the armour".into()],
            blocklist_action: RuleAction::Reject,
            links_action: RuleAction::Hold,
            trusted_roles: vec![Role::Broadcaster, Role::Moderator, Role::Admin],
            repeat_action: RuleAction::Reject,
            repeat_max: 2,
            repeat_window_s: 60,
            caps_action: RuleAction::Hold,
            caps_min_letters: 12,
            caps_ratio: 0.8,
            emoji_action: RuleAction::Reject,
            emoji_min: 8,
            emoji_ratio: 0.8,
        }
    }

    fn author(role: Role) -> Author {
        Author {
            id: UserId::new("u1").unwrap(),
            name: "u".into(),
            role,
            subscriber: false,
        }
    }

    #[test]
    fn blocklist_catches_evasions_and_spares_clean_words() {
        let rules = Rules::new(config());
        let v = author(Role::Viewer);
        for bad in [
            "fuck you",
            "FUCK",
            "f4ck you",
            "f*ck this",
            "fuuuuuck",
            "f u c k",
            "f.u.c.k off",
            "what the fück",
            "ｆｕｃｋ",
            "ѕһіt happens", // Cyrillic look-alikes
            "b1tch",
            "you a$$",
            "sh!t",
            "motherfucking ref", // no: prefix only at word start; checked below
        ] {
            let hit = rules.check(&v, bad);
            if bad.starts_with("motherfucking") {
                assert_eq!(hit, None, "prefix terms match word starts only");
                continue;
            }
            assert_eq!(
                hit.map(|h| h.rule),
                Some(Rule::Blocklist),
                "{bad} must be caught"
            );
        }
        for good in [
            "what a goal!",
            "classic assist",
            "as good as it gets",
            "shiitake mushrooms",
            "Scunthorpe United",
            "I passed 3 exams",
            "duck",
            "a Chink in the ARMOUR",
            "(hink",
        ] {
            assert_eq!(rules.check(&v, good), None, "{good} must pass");
        }
    }

    #[test]
    fn links_are_held_for_untrusted_users_only() {
        let rules = Rules::new(config());
        for text in [
            "see https://spam.example",
            "visit www.cheap.tv",
            "go to freecoins.xyz now",
        ] {
            assert_eq!(
                rules.check(&author(Role::Viewer), text),
                Some(Hit {
                    rule: Rule::Links,
                    action: RuleAction::Hold
                }),
                "{text}"
            );
            assert_eq!(rules.check(&author(Role::Moderator), text), None);
        }
        for chat in [
            "e.g. it works",
            "3.5 goals",
            "ok.so what",
            "close game.gg",
            "I know.me too",
            "what a match.top class",
            "you're at 4.co",
        ] {
            assert_eq!(rules.check(&author(Role::Viewer), chat), None, "{chat}");
        }
        assert_eq!(
            rules.check(&author(Role::Viewer), "ｆｒｅｅ．ｃｏｍ"),
            Some(Hit {
                rule: Rule::Links,
                action: RuleAction::Hold
            }),
            "full-width links are links"
        );
    }

    #[test]
    fn repeats_caps_and_emoji_walls() {
        let rules = Rules::new(config());
        let v = author(Role::Viewer);
        assert_eq!(rules.check(&v, "GO TEAM"), None);
        assert_eq!(rules.check(&v, "go team"), None);
        assert_eq!(
            rules.check(&v, "Go   TEAM").map(|h| h.rule),
            Some(Rule::Repeat),
            "third time within the window, whatever the case and spacing"
        );
        assert_eq!(
            rules.check(&v, "THIS REFEREE IS BLIND").map(|h| h.rule),
            Some(Rule::Caps)
        );
        assert_eq!(rules.check(&v, "NICE ONE"), None, "short shouting is fine");
        assert_eq!(
            rules.check(&v, "GOOOOOOOOOOOOOOAAAAAL"),
            None,
            "a cheer is not shouting"
        );
        assert_eq!(
            rules.check(&v, "🔥🔥🔥🔥🔥🔥🔥🔥🔥🔥").map(|h| h.rule),
            Some(Rule::Emoji)
        );
        assert_eq!(rules.check(&v, "great goal 🔥🔥"), None);
        for ok in ["🇧🇷🇧🇷🇧🇷🇧🇷🇧🇷🇧🇷", "👏🏽👏🏽👏🏽👏🏽👏🏽👏🏽", "👨‍👩‍👧‍👦👨‍👩‍👧‍👦"]
        {
            assert_eq!(rules.check(&v, ok), None, "{ok} is a few emoji, not a wall");
        }
    }

    #[test]
    fn emote_only_goes_by_the_emoji_list() {
        for ok in [
            "🔥",
            "🔥 👍🏽 ❤️",
            "1️⃣",
            "©",
            "™️",
            "🇺🇸",
            "👨‍👩‍👧",
            "🅾️",
            "  😀  ",
        ] {
            assert!(is_emote_only(ok), "{ok:?} is only emoji");
        }
        for bad in ["🅷🅴🅻🅻🅾 🆆🅾🆁🅻🅳", "hi 🔥", "1", "🇺", "", "   ", "🔥a"]
        {
            assert!(!is_emote_only(bad), "{bad:?} is not only emoji");
        }
    }

    /// The first-letter index finds exactly the words a scan of every term finds.
    #[test]
    fn the_blocklist_index_agrees_with_a_scan_of_every_term() {
        let terms = [
            "fuck*",
            "motherfuck*",
            "shit*",
            "bullshit*",
            "bitch*",
            "cunt*",
            "asshole*",
            "ass",
            "dickhead*",
            "bastard*",
            "wanker*",
            "twat*",
            "slut*",
            "whore*",
            "retard*",
            "kys",
            "spic",
            "chink*",
            "idiot",
            "ugly*",
            "yob",
        ];
        let rules = Rules::new(RulesConfig {
            blocklist: terms.iter().map(|t| t.to_string()).collect(),
            ..config()
        });
        let mut texts: Vec<String> = [
            "what a goal",
            "unbelievable save",
            "ref is blind",
            "4ever",
            "*** ***",
            "0 1 2 3",
            "1d10t",
            "*diot",
            "3ss",
            "@ss",
            "4ss",
            "$h1t",
            "5hit",
            "8itch",
            "(unt",
            "|diot",
            "7wat",
            "9lory",
            "y0b",
            "*gly",
            "ugg",
            "a",
            "ab",
            "i d i o t",
            "u g l y",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let subs = [
            '*', '4', '3', '1', '0', '5', '7', '@', '$', '8', '9', '6', '(', '!', '#',
        ];
        for t in terms {
            let word = t.trim_end_matches('*');
            texts.push(word.into());
            texts.push(format!("{word}ing"));
            texts.push(format!("super{word}"));
            for (i, _) in word.char_indices() {
                for c in subs {
                    let mut v = word.to_string();
                    v.replace_range(i..i + 1, &c.to_string());
                    texts.push(v);
                }
            }
        }
        let mut hits = 0;
        for text in &texts {
            for w in normalize::words(text) {
                let scan = rules.terms.iter().any(|t| w.spells(&t.spelled, t.prefix));
                assert_eq!(rules.spells_a_term(&w), scan, "{text:?} as {:?}", w.text());
                hits += usize::from(scan);
            }
        }
        assert!(hits > 100, "the variants include many hits ({hits})");
    }
}
