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
use crate::normalize::{self, Word};

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
            .collect();
        let allow = config
            .allow_phrases
            .iter()
            .map(|p| normalize::fold(p))
            .filter(|p| !p.trim().is_empty())
            .collect();
        Rules {
            config,
            terms,
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
        if c.blocklist_action != RuleAction::Off && self.blocked(text) {
            return hit(Rule::Blocklist, c.blocklist_action);
        }
        if c.trusted_roles.contains(&author.role) {
            return None;
        }
        // Repeats first: a spammer repeating a link is refused, not queued again and again.
        if c.repeat_action != RuleAction::Off && self.repeated(&author.id, text) {
            return hit(Rule::Repeat, c.repeat_action);
        }
        // On the folded text, so full-width or decorated links are links too.
        if c.links_action != RuleAction::Off && self.link.is_match(&normalize::fold(text)) {
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

    fn blocked(&self, text: &str) -> bool {
        let mut folded = normalize::fold(text);
        for phrase in &self.allow {
            folded = folded.replace(phrase.as_str(), " ");
        }
        let words: Vec<Word> = normalize::words(&folded);
        words
            .iter()
            .any(|w| self.terms.iter().any(|t| w.spells(&t.spelled, t.prefix)))
    }

    fn repeated(&self, user: &UserId, text: &str) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        normalize::fold(text)
            .split_whitespace()
            .collect::<Vec<_>>()
            .hash(&mut h);
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
        let visible: Vec<&str> = text
            .graphemes(true)
            .filter(|g| !g.chars().all(char::is_whitespace))
            .collect();
        let emoji = visible.iter().filter(|g| g.chars().any(is_emoji)).count();
        emoji >= self.config.emoji_min
            && emoji as f32 >= self.config.emoji_ratio * visible.len() as f32
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
}
