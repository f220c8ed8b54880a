//! `[moderation]` settings.

use serde::{Deserialize, Serialize};
use wire::auth::Role;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// The rule is not applied.
    Off,
    /// The post is refused with code `blocked`.
    Reject,
    /// The post waits in the review queue; nobody sees it unless a moderator approves it.
    Hold,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationConfig {
    pub rules: RulesConfig,
    pub model: ModelConfig,
    pub reputation: ReputationConfig,
    pub reports: ReportsConfig,
}

/// Synchronous rules, applied before a post is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Terms matched against normalised words; a trailing `*` matches common endings.
    pub blocklist: Vec<String>,
    /// Innocent phrases containing a blocked term ("chink in the armour"); removed from the
    /// text before the blocklist is matched.
    pub allow_phrases: Vec<String>,
    pub blocklist_action: RuleAction,
    /// Links (`http://`, `www.`, `name.tld`) from users whose role is not trusted.
    pub links_action: RuleAction,
    /// Roles exempt from the links, repeat, capitals and emoji rules.
    pub trusted_roles: Vec<Role>,
    /// The same text from one user more than `repeat_max` times within `repeat_window_s`.
    pub repeat_action: RuleAction,
    pub repeat_max: u32,
    pub repeat_window_s: u64,
    /// Mostly capitals: at least `caps_min_letters` letters, `caps_ratio` of them upper case.
    pub caps_action: RuleAction,
    pub caps_min_letters: usize,
    pub caps_ratio: f32,
    /// Walls of emoji: at least `emoji_min` emoji making up `emoji_ratio` of the visible
    /// characters.
    pub emoji_action: RuleAction,
    pub emoji_min: usize,
    pub emoji_ratio: f32,
}

/// The ONNX toxicity model, applied after delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub enabled: bool,
    /// Path of `libonnxruntime.so`. Empty: `$ORT_DYLIB_PATH`, else where
    /// `scripts/install-onnxruntime` puts it.
    pub onnxruntime: String,
    /// A comment scoring at least this is retracted (and counts as a strike).
    pub retract_threshold: f32,
    /// A comment scoring at least this (and less than `retract_threshold`) goes to the review
    /// queue.
    pub review_threshold: f32,
    /// Comments scored together; a batch waits at most `batch_wait_ms` to fill.
    pub batch_size: usize,
    pub batch_wait_ms: u64,
}

/// Strikes and shadow bans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReputationConfig {
    /// Strikes within `window_s` that shadow-ban a user (0 = never).
    pub strikes: u32,
    pub window_s: u64,
    /// Length of the shadow ban (0 = permanent).
    pub shadow_ban_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// Reports from this many distinct users hide a comment until a moderator decides.
    pub hide_threshold: usize,
}

impl ModerationConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let m = &self.model;
        if !(0.0..=1.0).contains(&m.review_threshold)
            || !(0.0..=1.0).contains(&m.retract_threshold)
            || m.review_threshold > m.retract_threshold
        {
            errors.push(
                "moderation.model: need 0 <= review_threshold <= retract_threshold <= 1".into(),
            );
        }
        if m.batch_size == 0 {
            errors.push("moderation.model.batch_size must be at least 1".into());
        }
        let r = &self.rules;
        if !(0.0..=1.0).contains(&r.caps_ratio) || !(0.0..=1.0).contains(&r.emoji_ratio) {
            errors.push("moderation.rules: caps_ratio and emoji_ratio are between 0 and 1".into());
        }
        if r.repeat_window_s == 0 && r.repeat_action != RuleAction::Off {
            errors.push("moderation.rules.repeat_window_s must be at least 1".into());
        }
        for t in &r.blocklist {
            if crate::normalize::term(t).0.is_empty() {
                errors.push(format!("moderation.rules.blocklist: {t:?} has no letters"));
            }
        }
        if self.reports.hide_threshold == 0 {
            errors.push("moderation.reports.hide_threshold must be at least 1".into());
        }
        errors
    }
}
