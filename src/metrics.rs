//! Counters and histograms, rendered in the Prometheus text format for `GET /metrics`.
//!
//! Invariants:
//! - Recording is a few relaxed atomic adds: no lock, no allocation, nothing a hot path waits on.
//! - Every family is rendered from one [`Exposition`], which writes `# HELP` and `# TYPE` once
//!   per family, so the output is valid however many contributors there are.
//! - Other modules contribute their own families by implementing [`Collect`] and calling
//!   [`Metrics::register`]; the core families of the gateway are rendered by
//!   [`render`] itself, from the counters kept here, in [`crate::gateway::Stats`] and in the
//!   journal.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::gateway::Gateway;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A source of metric families other than the core ones (for example push delivery).
pub trait Collect: Send + Sync + std::fmt::Debug {
    /// Writes the source's families; called on every scrape, so keep it cheap.
    fn collect(&self, out: &mut Exposition);
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

/// A distribution of durations in fixed buckets (upper bounds in seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative: made cumulative when rendered.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Bounds for things that should take milliseconds: wake-ups, journal flushes.
pub const FAST_BOUNDS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Bounds for snapshots: from a few milliseconds (a small state) to minutes (millions of devices).
pub const SLOW_BOUNDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Why a device poll was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollEnd {
    /// With commands.
    Delivered,
    /// Empty, because the device asked not to wait (`wait=0`) or only held-back kinds were due.
    Immediate,
    /// Empty, at the end of its wait.
    Timeout,
    /// Empty, because a newer poll from the same device took its place.
    Superseded,
    /// Empty, because the server is stopping.
    Shutdown,
    /// With an error, because the device was forgotten while it waited.
    Removed,
    /// With an error before it could park: authentication, a bad report, storage.
    Refused,
}

/// Why a Hawk-signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HawkFailure {
    Header,
    UnknownDevice,
    Mac,
    Stale,
    Replay,
    /// The request failed before the signature could be checked (body too large, unreadable).
    Body,
}

/// The gateway's own counters, besides the gauges in [`crate::gateway::Stats`].
#[derive(Debug)]
pub struct Metrics {
    polls: [Counter; PollEnd::ALL.len()],
    /// Commands accepted from owners.
    pub commands_queued: Counter,
    /// Commands written into an answer to a device poll (a resend counts again).
    pub commands_delivered: Counter,
    /// From an owner's command being queued to the parked poll taking it.
    pub wake_latency: Histogram,
    hawk_failures: [Counter; HawkFailure::ALL.len()],
    /// Duration of snapshots that succeeded.
    pub snapshot_duration: Histogram,
    pub snapshot_failures: Counter,
    sources: RwLock<Vec<Arc<dyn Collect>>>,
}

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

// === Counter ===

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

// === Histogram ===

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            // One more for the observations above the largest bound (`+Inf`).
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

// === Metrics ===

impl PollEnd {
    pub const ALL: [PollEnd; 7] = [
        PollEnd::Delivered,
        PollEnd::Immediate,
        PollEnd::Timeout,
        PollEnd::Superseded,
        PollEnd::Shutdown,
        PollEnd::Removed,
        PollEnd::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PollEnd::Delivered => "delivered",
            PollEnd::Immediate => "immediate",
            PollEnd::Timeout => "timeout",
            PollEnd::Superseded => "superseded",
            PollEnd::Shutdown => "shutdown",
            PollEnd::Removed => "removed",
            PollEnd::Refused => "refused",
        }
    }
}

impl HawkFailure {
    pub const ALL: [HawkFailure; 6] = [
        HawkFailure::Header,
        HawkFailure::UnknownDevice,
        HawkFailure::Mac,
        HawkFailure::Stale,
        HawkFailure::Replay,
        HawkFailure::Body,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HawkFailure::Header => "header",
            HawkFailure::UnknownDevice => "unknown_device",
            HawkFailure::Mac => "mac",
            HawkFailure::Stale => "stale",
            HawkFailure::Replay => "replay",
            HawkFailure::Body => "body",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            polls: Default::default(),
            commands_queued: Counter::default(),
            commands_delivered: Counter::default(),
            wake_latency: Histogram::new(FAST_BOUNDS),
            hawk_failures: Default::default(),
            snapshot_duration: Histogram::new(SLOW_BOUNDS),
            snapshot_failures: Counter::default(),
            sources: RwLock::default(),
        }
    }
}

impl Metrics {
    pub fn poll_answered(&self, end: PollEnd) {
        self.polls[end as usize].inc();
    }

    pub fn polls_answered(&self, end: PollEnd) -> u64 {
        self.polls[end as usize].get()
    }

    pub fn hawk_failed(&self, failure: HawkFailure) {
        self.hawk_failures[failure as usize].inc();
    }

    pub fn hawk_failures(&self, failure: HawkFailure) -> u64 {
        self.hawk_failures[failure as usize].get()
    }

    /// Adds a source whose families are rendered after the core ones on every scrape.
    pub fn register(&self, source: Arc<dyn Collect>) {
        self.sources
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(source);
    }
}

// === Exposition ===

impl Exposition {
    /// Starts a family: its help text and type, written once.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A counter family with one sample per label set (`&[]` for an unlabelled counter).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.family(name, "counter", help);
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    /// A gauge family with one sample per label set.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.family(name, "gauge", help);
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    /// A histogram family (durations, in seconds).
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, bound) in histogram.bounds.iter().enumerate() {
            cumulative += histogram.buckets[i].load(Relaxed);
            self.sample(&bucket, &[("le", &bound.to_string())], cumulative);
        }
        cumulative += histogram.buckets[histogram.bounds.len()].load(Relaxed);
        // `+Inf` and `_count` agree even while observations race with the scrape.
        self.sample(&bucket, &[("le", "+Inf")], cumulative);
        let sum = histogram.sum_micros.load(Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative);
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// The whole metrics page of a gateway: the core families, then every registered source.
pub fn render(gateway: &Gateway) -> String {
    let mut out = Exposition::default();
    let stats = &gateway.stats;
    let metrics = &gateway.metrics;
    let gauge = |n: usize| n as f64;
    out.gauge(
        "wheresmyfox_polls_parked",
        "Device polls parked right now.",
        &[(&[], gauge(stats.parked.load(Relaxed)))],
    );
    let polls: Vec<([(&str, &str); 1], u64)> = PollEnd::ALL
        .iter()
        .map(|end| ([("reason", end.label())], metrics.polls_answered(*end)))
        .collect();
    let polls: Vec<(&[(&str, &str)], u64)> = polls.iter().map(|(l, v)| (&l[..], *v)).collect();
    out.counter(
        "wheresmyfox_polls_answered_total",
        "Device polls answered, by reason.",
        &polls,
    );
    out.counter(
        "wheresmyfox_commands_queued_total",
        "Commands accepted from owners.",
        &[(&[], metrics.commands_queued.get())],
    );
    out.counter(
        "wheresmyfox_commands_delivered_total",
        "Commands written into answers to device polls (resends count again).",
        &[(&[], metrics.commands_delivered.get())],
    );
    let journal = gateway.journal.stats();
    out.counter(
        "wheresmyfox_commands_acknowledged_total",
        "Device replies that answered a command.",
        &[(&[], journal.commands_answered.get())],
    );
    out.counter(
        "wheresmyfox_commands_receipt_confirmed_total",
        "Commands whose receipt a device confirmed with the ack extension.",
        &[(&[], journal.commands_confirmed.get())],
    );
    out.histogram(
        "wheresmyfox_wake_latency_seconds",
        "From an owner's command being queued to the device's parked poll taking it.",
        &metrics.wake_latency,
    );
    let hawk: Vec<([(&str, &str); 1], u64)> = HawkFailure::ALL
        .iter()
        .map(|f| ([("reason", f.label())], metrics.hawk_failures(*f)))
        .collect();
    let hawk: Vec<(&[(&str, &str)], u64)> = hawk.iter().map(|(l, v)| (&l[..], *v)).collect();
    out.counter(
        "wheresmyfox_hawk_failures_total",
        "Device requests refused by Hawk verification, by reason.",
        &hawk,
    );
    out.counter(
        "wheresmyfox_journal_records_total",
        "Records appended to the journal.",
        &[(&[], journal.records.get())],
    );
    out.histogram(
        "wheresmyfox_journal_flush_seconds",
        "Time to write (and fsync, when due) one group of journal records.",
        &journal.flush,
    );
    out.counter(
        "wheresmyfox_journal_flushes_inline_total",
        "Groups of journal records written by the request waiting for them rather than the journal thread.",
        &[(&[], journal.flushes_inline.get())],
    );
    out.gauge(
        "wheresmyfox_journal_bytes",
        "Size of the current journal file.",
        &[(&[], gateway.journal.len() as f64)],
    );
    out.histogram(
        "wheresmyfox_snapshot_duration_seconds",
        "Time to write a snapshot, for those that succeeded.",
        &metrics.snapshot_duration,
    );
    out.counter(
        "wheresmyfox_snapshot_failures_total",
        "Snapshots that failed.",
        &[(&[], metrics.snapshot_failures.get())],
    );
    out.gauge(
        "wheresmyfox_connections_open",
        "Open client connections.",
        &[(&[], gauge(stats.connections.load(Relaxed)))],
    );
    out.counter(
        "wheresmyfox_connections_refused_total",
        "Connections refused with 503 at the connection limit.",
        &[(&[], stats.refused.load(Relaxed) as u64)],
    );
    out.gauge(
        "wheresmyfox_devices",
        "Registered devices.",
        &[(&[], gauge(gateway.registry.len()))],
    );
    let push = gateway.push.stats.read();
    out.counter(
        "wheresmyfox_push_attempts_total",
        "Requests sent (or tried) to push services, retries included.",
        &[(&[], push.attempts)],
    );
    out.counter(
        "wheresmyfox_push_outcomes_total",
        "Wake-up pings by how they ended (retried counts tries that were retried).",
        &[
            (&[("outcome", "delivered")], push.delivered),
            (&[("outcome", "retried")], push.retried),
            (&[("outcome", "failed")], push.failed),
            (&[("outcome", "dead")], push.dead),
        ],
    );
    out.gauge(
        "wheresmyfox_push_in_flight",
        "Devices with a wake-up ping under way.",
        &[(&[], gauge(gateway.push.in_flight()))],
    );
    let sources = metrics
        .sources
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    for source in sources {
        source.collect(&mut out);
    }
    out.into_text()
}

// === The allocator ===

/// jemalloc's own account of the heap, for a process whose global allocator is jemalloc (the
/// `wheresmyfox` binary registers it; tests and tools on the system allocator do not, since
/// they would report an idle jemalloc).
///
/// Why operators want it: the process's RSS alone cannot tell live data (`allocated`) from
/// pages the allocator keeps for reuse (`resident` minus `allocated`), which is the first
/// question when memory per parked device grows.
#[derive(Debug, Default)]
pub struct JemallocStats;

impl Collect for JemallocStats {
    fn collect(&self, out: &mut Exposition) {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The figures are cached by jemalloc and refreshed only when the epoch advances.
        if epoch::advance().is_err() {
            return;
        }
        let read = |value: tikv_jemalloc_ctl::Result<usize>| value.map(|v| v as f64);
        let figures = [
            (
                "allocated",
                read(stats::allocated::read()),
                "Bytes in live allocations.",
            ),
            (
                "active",
                read(stats::active::read()),
                "Bytes in pages that hold live allocations.",
            ),
            (
                "resident",
                read(stats::resident::read()),
                "Bytes of the allocator's pages resident in memory (data and metadata).",
            ),
            (
                "metadata",
                read(stats::metadata::read()),
                "Bytes the allocator uses for its own bookkeeping.",
            ),
            (
                "mapped",
                read(stats::mapped::read()),
                "Bytes in the allocator's mapped extents.",
            ),
            (
                "retained",
                read(stats::retained::read()),
                "Bytes of virtual memory kept mapped but returned to the system.",
            ),
        ];
        for (name, value, help) in figures {
            if let Ok(value) = value {
                out.gauge(
                    &format!("wheresmyfox_allocator_{name}_bytes"),
                    &format!("jemalloc: {help}"),
                    &[(&[], value)],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let mut out = Exposition::default();
        out.histogram("x_seconds", "X.", &h);
        let text = out.into_text();
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
        assert!(
            text.contains("x_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum 3.0055\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
    }

    #[test]
    fn labels_are_escaped() {
        let mut out = Exposition::default();
        out.counter("c_total", "C.", &[(&[("path", "a\"b\\c\nd")], 2)]);
        assert!(
            out.into_text()
                .contains("c_total{path=\"a\\\"b\\\\c\\nd\"} 2\n")
        );
    }

    #[derive(Debug)]
    struct Pushes;

    impl Collect for Pushes {
        fn collect(&self, out: &mut Exposition) {
            out.counter("push_sent_total", "Pushes.", &[(&[("outcome", "ok")], 7)]);
        }
    }

    #[test]
    fn registered_sources_are_rendered() {
        let metrics = Metrics::default();
        metrics.register(Arc::new(Pushes));
        let mut out = Exposition::default();
        for source in metrics.sources.read().unwrap().iter() {
            source.collect(&mut out);
        }
        assert!(
            out.into_text()
                .contains("# TYPE push_sent_total counter\npush_sent_total{outcome=\"ok\"} 7\n")
        );
    }
}
