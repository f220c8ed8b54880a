//! Moderation of livecomments.
//!
//! Abuse is removed without ever slowing delivery:
//! - **Rules**, synchronous, microseconds: [`Moderation::check`] runs in the bridge before a
//!   post is accepted — a blocklist matched after normalisation (case, accents, leetspeak,
//!   separators, repeated letters, look-alike letters), links from untrusted users, repeated
//!   texts, capitals and emoji walls. Each rule rejects (`blocked`) or holds for review.
//! - **Model**, asynchronous: [`run`] consumes accepted comments after delivery, scores them in
//!   batches with an ONNX toxicity model off the async runtime, and asks the write path to
//!   retract the toxic ones (a `retract` event follows the comment within about a second) or
//!   queues borderline ones for review.
//! - **Reputation** (strikes, shadow bans), retraction, reports and the review queue are
//!   executed by the write path, which owns the stream's sequence; see `bridge`.
//!
//! # Layout
//! - [`config`] — `[moderation]` settings.
//! - [`eval`] — precision, recall, F1, ROC AUC and latency on labelled text.
//! - [`normalize`] — text folding and word matching that defeat evasions.
//! - [`rules`] — the synchronous rules.
//! - [`model`] — [`model::ToxicityModel`], the offensive-language model (ONNX, scored through
//!   ONNX Runtime loaded at run time); `model/` holds its files, licence, provenance and the
//!   script that converts it.
//! - `worker` — the asynchronous consumer: batching, scoring, retraction, review queue.

pub mod config;
pub mod eval;
pub mod model;
pub mod normalize;
pub mod rules;
mod worker;

pub use config::{ModelConfig, ModerationConfig, RuleAction};
pub use worker::{run, Queued, Scorer};

impl Scorer for model::ToxicityModel {
    fn score(&mut self, texts: &[&str]) -> Result<Vec<f32>, String> {
        model::ToxicityModel::score(self, texts).map_err(|e| e.to_string())
    }
}

use wire::bus::Author;
use wire::inbox::{RejectCode, Rejected};
use wire::StreamId;

/// What the synchronous check sees of a submission.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub stream: &'a StreamId,
    pub author: &'a Author,
    pub text: &'a str,
}

/// The synchronous check's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse the submission with this answer; nothing is stored.
    Reject(Rejected),
    /// Keep it out of view until a moderator decides; `rule` says why.
    Hold {
        rule: &'static str,
        message: String,
    },
}

/// The moderation pipeline's synchronous part and settings, shared by the write path.
pub struct Moderation {
    pub config: ModerationConfig,
    rules: rules::Rules,
}

impl Moderation {
    pub fn new(config: ModerationConfig) -> Self {
        let rules = rules::Rules::new(config.rules.clone());
        Moderation { config, rules }
    }

    /// Decides on a submission before it is accepted.
    pub fn check(&self, candidate: &Candidate<'_>) -> Verdict {
        match self.rules.check(candidate.author, candidate.text) {
            None => Verdict::Allow,
            Some(hit) => {
                metrics_hit(hit.rule.name());
                match hit.action {
                    RuleAction::Off => Verdict::Allow,
                    RuleAction::Reject => {
                        Verdict::Reject(Rejected::new(None, RejectCode::Blocked, hit.message()))
                    }
                    RuleAction::Hold => Verdict::Hold {
                        rule: hit.rule.name(),
                        message: hit.message(),
                    },
                }
            }
        }
    }
}

fn metrics_hit(rule: &'static str) {
    metrics::counter!("livecomments_rule_hits_total", "rule" => rule).increment(1);
}
