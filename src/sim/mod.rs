//! A simulated LLM, so routes, tests and load runs work without a GPU.
//!
//! The same generator backs `kind: sim` upstreams (in process) and
//! `llmgate sim` (over HTTP with vLLM's OpenAI-compatible API), so what a
//! newcomer sees through the shipped routing file is what a benchmark
//! measures over the real HTTP path.

pub(crate) mod embed;
mod server;

pub use server::{SimApi, serve, serve_api};

use std::time::Duration;

use futures_util::Stream;
use tokio::time::Instant;

use crate::chat::{ChatMessage, FinishReason, Usage};

/// How the simulated model behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimSettings {
    /// Delay before the first token.
    pub ttft: Duration,
    /// Tokens per second after the first; 0 means as fast as possible.
    pub tokens_per_second: f64,
    /// Tokens per answer unless `max_tokens` cuts it shorter.
    pub output_tokens: u32,
    /// Share of calls (0 to 1) that fail as an overloaded server would.
    pub error_rate: f64,
}

/// One simulated generation: what it will say and when.
#[derive(Debug, Clone)]
pub(crate) struct SimRun {
    settings: SimSettings,
    tokens: u32,
    finish_reason: FinishReason,
    usage: Usage,
}

/// Latest a simulated token may be due after its call starts: far beyond
/// any test or benchmark, and small enough that adding it to a clock
/// reading cannot overflow.
const MAX_OFFSET: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Words the simulator cycles through; fixed so tests can predict output.
pub(crate) const WORDS: [&str; 16] = [
    "The",
    " gateway",
    " routes",
    " every",
    " call",
    " to",
    " the",
    " least",
    " loaded",
    " endpoint",
    " and",
    " streams",
    " tokens",
    " back",
    " in",
    " order.",
];

// === impl SimSettings ===

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            ttft: Duration::from_millis(20),
            tokens_per_second: 100.0,
            output_tokens: 64,
            error_rate: 0.0,
        }
    }
}

impl SimSettings {
    /// Plans one generation for these messages, or `None` when this call is
    /// one of the `error_rate` share that fails.
    pub(crate) fn start(
        &self,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Option<SimRun> {
        if self.error_rate > 0.0 && rand::random::<f64>() < self.error_rate {
            return None;
        }
        let limit = max_tokens.unwrap_or(u32::MAX);
        let tokens = self.output_tokens.min(limit);
        let finish_reason = if limit < self.output_tokens {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let input_tokens = messages
            .iter()
            .map(|m| m.content.split_whitespace().count() as u32 + 1)
            .sum();
        Some(SimRun {
            settings: *self,
            tokens,
            finish_reason,
            usage: Usage {
                input_tokens,
                output_tokens: tokens,
            },
        })
    }
}

// === impl SimRun ===

impl SimRun {
    /// The text of token `index`.
    pub(crate) fn token(index: u32) -> &'static str {
        WORDS[index as usize % WORDS.len()]
    }

    /// Why the generation ends.
    pub(crate) fn finish_reason(&self) -> FinishReason {
        self.finish_reason
    }

    /// Tokens in and out.
    pub(crate) fn usage(&self) -> Usage {
        self.usage
    }

    /// The whole answer at once, after the time the stream would take.
    pub(crate) async fn text(&self) -> String {
        // No timer at all for an instant answer: tokio rounds every sleep up
        // to the next millisecond, which would floor a benchmark's baseline.
        if let Some(last) = self.tokens.checked_sub(1)
            && !self.offset(last).is_zero()
        {
            tokio::time::sleep(self.offset(last)).await;
        }
        (0..self.tokens).map(SimRun::token).collect()
    }

    /// The tokens, each released at its scheduled time. Times are measured
    /// from the start, so pacing does not drift with scheduling delays.
    pub(crate) fn tokens(&self) -> impl Stream<Item = &'static str> + Send + 'static {
        let start = Instant::now();
        let run = self.clone();
        futures_util::stream::unfold(0u32, move |index| {
            let run = run.clone();
            async move {
                if index >= run.tokens {
                    return None;
                }
                let due = start + run.offset(index);
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                Some((SimRun::token(index), index + 1))
            }
        })
    }

    /// When token `index` is due, from the start of the call.
    fn offset(&self, index: u32) -> Duration {
        let pace = if self.settings.tokens_per_second > 0.0 {
            // A rate too slow for a `Duration` (the CLI does not bound it)
            // waits the longest, rather than panicking.
            Duration::try_from_secs_f64(f64::from(index) / self.settings.tokens_per_second)
                .unwrap_or(MAX_OFFSET)
        } else {
            Duration::ZERO
        };
        self.settings.ttft.saturating_add(pace).min(MAX_OFFSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_too_slow_for_a_duration_waits_the_longest_instead_of_panicking() {
        let settings = SimSettings {
            ttft: Duration::MAX,
            tokens_per_second: 1e-300,
            output_tokens: 4,
            error_rate: 0.0,
        };
        let run = settings
            .start(&[], None)
            .expect("error_rate 0 always answers");
        assert_eq!(run.offset(0), MAX_OFFSET);
        assert_eq!(run.offset(3), MAX_OFFSET);
    }
}
