//! What `GET /metrics` reports, in Prometheus' text format: counters the request path bumps, a
//! histogram of time to first token, and gauges read when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How a chat request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A 4xx the client caused.
    ClientError,
    /// Refused at once because every session was busy and the queue full.
    Rejected,
    /// The client went away or the request timed out.
    Cancelled,
    ServerError,
}

impl Outcome {
    const ALL: [Outcome; 5] = [Outcome::Ok, Outcome::ClientError, Outcome::Rejected, Outcome::Cancelled, Outcome::ServerError];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::ServerError => "server_error",
        }
    }
}

/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What one answered request adds.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestCounts {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub visual_tokens_before: u64,
    pub visual_tokens_after: u64,
    pub decode_steps: u64,
    pub fresh_selections: u64,
}

/// Media work, added by the media store.
#[derive(Clone, Copy, Debug, Default)]
pub struct MediaCounts {
    pub vision_encodes: u64,
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub frames_encoded: u64,
    pub frames_reused: u64,
}

/// The gauges, read at scrape time.
pub struct Gauges {
    pub sessions: usize,
    pub busy: usize,
    pub queued: usize,
}

#[derive(Default)]
pub struct Metrics {
    outcomes: [AtomicU64; 5],
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    visual_tokens_before: AtomicU64,
    visual_tokens_after: AtomicU64,
    decode_steps: AtomicU64,
    fresh_selections: AtomicU64,
    vision_encodes: AtomicU64,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    frames_encoded: AtomicU64,
    frames_reused: AtomicU64,
    ttft: Mutex<Histogram>,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn outcome(&self, o: Outcome) {
        let i = Outcome::ALL.iter().position(|x| *x == o).expect("every outcome is listed");
        add(&self.outcomes[i], 1);
    }

    pub fn request(&self, c: &RequestCounts) {
        add(&self.prompt_tokens, c.prompt_tokens);
        add(&self.cached_tokens, c.cached_tokens);
        add(&self.completion_tokens, c.completion_tokens);
        add(&self.visual_tokens_before, c.visual_tokens_before);
        add(&self.visual_tokens_after, c.visual_tokens_after);
        add(&self.decode_steps, c.decode_steps);
        add(&self.fresh_selections, c.fresh_selections);
    }

    pub fn media(&self, c: &MediaCounts) {
        add(&self.vision_encodes, c.vision_encodes);
        add(&self.memory_hits, c.memory_hits);
        add(&self.disk_hits, c.disk_hits);
        add(&self.frames_encoded, c.frames_encoded);
        add(&self.frames_reused, c.frames_reused);
    }

    pub fn ttft(&self, seconds: f64) {
        let mut h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
        for (i, bound) in TTFT_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP dycoke_requests_total Chat completion requests by outcome.\n# TYPE dycoke_requests_total counter");
        for (o, c) in Outcome::ALL.iter().zip(&self.outcomes) {
            let _ = writeln!(out, "dycoke_requests_total{{outcome=\"{}\"}} {}", o.label(), get(c));
        }
        let counters: [(&str, &str, &AtomicU64); 12] = [
            ("dycoke_prompt_tokens_total", "Prompt positions of answered requests (visual rows included).", &self.prompt_tokens),
            ("dycoke_prompt_tokens_cached_total", "Of those, positions reused from a session's cache.", &self.cached_tokens),
            ("dycoke_completion_tokens_total", "Generated tokens.", &self.completion_tokens),
            ("dycoke_visual_tokens_before_ttm_total", "Video tokens before DyCoke's temporal merging.", &self.visual_tokens_before),
            ("dycoke_visual_tokens_after_ttm_total", "Video tokens the language model received.", &self.visual_tokens_after),
            ("dycoke_pruning_decode_steps_total", "Decode steps that ran with DyCoke's pruned cache view.", &self.decode_steps),
            ("dycoke_pruning_fresh_selections_total", "Decode steps with a fresh pruning selection.", &self.fresh_selections),
            ("dycoke_vision_encodes_total", "Videos and images run through the vision model.", &self.vision_encodes),
            ("dycoke_media_memory_hits_total", "Media whose embeddings came from the in-memory cache.", &self.memory_hits),
            ("dycoke_media_disk_hits_total", "Videos whose embeddings came from --cache-dir.", &self.disk_hits),
            ("dycoke_frames_encoded_total", "Video frames run through the vision tower.", &self.frames_encoded),
            ("dycoke_frames_reused_total", "Repeated video frames copied instead of encoded.", &self.frames_reused),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", get(c));
        }
        {
            let h = self.ttft.lock().unwrap_or_else(|e| e.into_inner());
            let name = "dycoke_time_to_first_token_seconds";
            let _ = writeln!(out, "# HELP {name} From the request's arrival to its first generated token.\n# TYPE {name} histogram");
            for (bound, n) in TTFT_BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", h.count, h.sum, h.count);
        }
        let gauges = [
            ("dycoke_sessions", "Sessions that answer at once (-np).", g.sessions),
            ("dycoke_sessions_busy", "Sessions answering now.", g.busy),
            ("dycoke_queue_length", "Requests waiting for a session.", g.queued),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_and_cumulative_buckets() {
        let m = Metrics::default();
        m.outcome(Outcome::Ok);
        m.outcome(Outcome::Rejected);
        m.ttft(0.3);
        m.ttft(7.0);
        m.request(&RequestCounts { prompt_tokens: 10, completion_tokens: 3, ..Default::default() });
        let text = m.render(&Gauges { sessions: 2, busy: 1, queued: 0 });
        assert!(text.contains("dycoke_requests_total{outcome=\"ok\"} 1"));
        assert!(text.contains("dycoke_requests_total{outcome=\"rejected\"} 1"));
        assert!(text.contains("dycoke_prompt_tokens_total 10"));
        assert!(text.contains("dycoke_time_to_first_token_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("dycoke_time_to_first_token_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("dycoke_time_to_first_token_seconds_bucket{le=\"10\"} 2"));
        assert!(text.contains("dycoke_time_to_first_token_seconds_count 2"));
        assert!(text.contains("dycoke_sessions_busy 1"));
        // Every sample line belongs to a family announced by a TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
