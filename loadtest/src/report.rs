//! The run's result: `result.json` for machines, `summary.md` for people.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Args, Scenario, Shared, Target};

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Command-to-device latency of the commands due in one second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondLatency {
    /// Seconds since the tool started.
    pub at_secs: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Result {
    pub target: Target,
    pub scenario: Scenario,
    pub devices: usize,
    pub rate_target: f64,
    pub duration_secs: f64,
    pub wait_secs: u64,
    pub source_ips: u8,
    /// Seconds until every device was parked, at the start.
    pub parked_in_secs: f64,
    /// Reconnect storm: seconds until every device was parked again.
    pub storm_recovery_secs: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub acknowledged: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Commands not sent because every sampled device still had one on its way.
    pub skipped: u64,
    pub commands_per_sec: f64,
    pub polls_per_sec: f64,
    pub command_to_device: Latency,
    /// The same, second by second.
    pub command_to_device_by_second: Vec<SecondLatency>,
    pub owner_request: Latency,
    /// Owner connections the run made: `--owner-connections` at the start, and one more each
    /// time a command fell due while every one was waiting for an answer.
    pub owner_connections: u64,
    /// From a command's due time to the tool starting its request: the load generator's own
    /// share of the two latencies above.
    pub send_lag: Latency,
    /// How late a 1 ms sleep woke during the load: the machine's own scheduling noise.
    pub oversleep: Latency,
    pub errors: BTreeMap<String, u64>,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_parked_bytes: Option<u64>,
    pub bytes_per_parked_device: Option<f64>,
    /// The server's RSS at the end of the load, every command delivered and its device
    /// parked again: connections that have carried an exchange, and device records that
    /// hold its history, cost more than freshly parked ones.
    pub server_rss_after_load_bytes: Option<u64>,
    pub bytes_per_parked_device_after_load: Option<f64>,
}

/// The server's resident memory at the three moments a run samples it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerRss {
    /// Devices registered, none connected.
    pub before: Option<u64>,
    /// Every device parked, no command sent yet.
    pub parked: Option<u64>,
    /// The load over, every device parked again.
    pub after_load: Option<u64>,
}

/// Microseconds as milliseconds.
fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn latency(histogram: &Histogram<u64>) -> Latency {
    Latency {
        count: histogram.len(),
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p90_ms: ms(histogram.value_at_quantile(0.9)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    }
}

/// Every second's latency figures, in order.
pub fn by_second(shared: &Shared) -> Vec<SecondLatency> {
    shared
        .latency_by_second
        .lock()
        .unwrap()
        .iter()
        .map(|(at_secs, h)| SecondLatency {
            at_secs: *at_secs,
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
        .collect()
}

impl Result {
    #[allow(clippy::too_many_arguments)]
    pub fn collect(
        args: &Args,
        shared: &Shared,
        devices: usize,
        load_secs: f64,
        parked_in: Duration,
        storm_recovery_secs: Option<f64>,
        rss: ServerRss,
    ) -> Result {
        let received = shared.received.load(Ordering::Relaxed);
        let lost = shared.inflight.lock().unwrap().len() as u64;
        let per_device = |after: Option<u64>| match (rss.before, after) {
            (Some(before), Some(after)) if devices > 0 => {
                Some((after as f64 - before as f64) / devices as f64)
            }
            _ => None,
        };
        Result {
            target: args.target,
            scenario: args.scenario,
            devices,
            rate_target: args.rate,
            duration_secs: load_secs,
            wait_secs: args.wait,
            source_ips: args.source_ips,
            parked_in_secs: parked_in.as_secs_f64(),
            storm_recovery_secs,
            sent: shared.sent.load(Ordering::Relaxed),
            received,
            acknowledged: shared.acknowledged.load(Ordering::Relaxed),
            lost,
            duplicated: shared.duplicates.load(Ordering::Relaxed),
            skipped: shared.skipped.load(Ordering::Relaxed),
            commands_per_sec: received as f64 / load_secs.max(1e-9),
            polls_per_sec: shared.polls.load(Ordering::Relaxed) as f64
                / shared.started.elapsed().as_secs_f64(),
            command_to_device: latency(&shared.latency.lock().unwrap()),
            command_to_device_by_second: by_second(shared),
            owner_connections: shared.owner_connections.load(Ordering::Relaxed),
            owner_request: latency(&shared.owner_latency.lock().unwrap()),
            send_lag: latency(&shared.send_lag.lock().unwrap()),
            oversleep: latency(&shared.oversleep.lock().unwrap()),
            errors: shared.errors.lock().unwrap().clone(),
            server_rss_before_bytes: rss.before,
            server_rss_parked_bytes: rss.parked,
            bytes_per_parked_device: per_device(rss.parked),
            server_rss_after_load_bytes: rss.after_load,
            bytes_per_parked_device_after_load: per_device(rss.after_load),
        }
    }

    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out.join("result.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(out.join("summary.md"), self.summary_markdown())?;
        Ok(())
    }

    pub fn summary_markdown(&self) -> String {
        let l = &self.command_to_device;
        let o = &self.owner_request;
        let lag = &self.send_lag;
        let noise = &self.oversleep;
        let mut text = format!(
            "# Load test of {}: {:?}, {} devices, {} commands/s for {:.0} s\n\n\
             | figure | value |\n|---|---:|\n\
             | all devices parked after | {:.2} s |\n",
            match self.target {
                Target::Gateway => "the gateway",
                Target::Nchan => "nginx + Nchan",
            },
            self.scenario,
            self.devices,
            self.rate_target,
            self.duration_secs,
            self.parked_in_secs
        );
        if let Some(storm) = self.storm_recovery_secs {
            text += &format!("| reconnect storm: all parked again after | {storm:.2} s |\n");
        }
        text += &format!(
            "| commands sent / received / acknowledged | {} / {} / {} |\n\
             | lost / duplicated | {} / {} |\n\
             | sustained commands/s | {:.0} |\n\
             | poll cycles/s | {:.0} |\n\
             | command to device p50 / p90 / p99 / p99.9 / max | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms |\n\
             | owner request p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n\
             | owner connections (opened at the start, or when every one was busy) | {} |\n\
             | the tool's own send lag (due time to request start) p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n\
             | the machine's noise: lateness of a 1 ms sleep p50 / p99 / p99.9 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |\n",
            self.sent,
            self.received,
            self.acknowledged,
            self.lost,
            self.duplicated,
            self.commands_per_sec,
            self.polls_per_sec,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            o.p50_ms,
            o.p99_ms,
            o.max_ms,
            self.owner_connections,
            lag.p50_ms,
            lag.p99_ms,
            lag.max_ms,
            noise.p50_ms,
            noise.p99_ms,
            noise.p999_ms,
            noise.max_ms
        );
        if let (Some(before), Some(after), Some(per)) = (
            self.server_rss_before_bytes,
            self.server_rss_parked_bytes,
            self.bytes_per_parked_device,
        ) {
            text += &format!(
                "| server RSS before / with all parked | {:.1} / {:.1} MiB |\n| server memory per parked device | {:.0} bytes ({:.2} KiB) |\n",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                per,
                per / 1024.0
            );
        }
        if let (Some(after), Some(per)) = (
            self.server_rss_after_load_bytes,
            self.bytes_per_parked_device_after_load,
        ) {
            text += &format!(
                "| server RSS after the load, all parked again | {:.1} MiB |\n| server memory per parked device after the load | {:.0} bytes ({:.2} KiB) |\n",
                after as f64 / 1048576.0,
                per,
                per / 1024.0
            );
        }
        if self.skipped > 0 {
            text += &format!(
                "| commands skipped (all sampled devices busy) | {} |\n",
                self.skipped
            );
        }
        if self.errors.is_empty() {
            text += "\nNo errors.\n";
        } else {
            text += "\nErrors by kind:\n\n";
            for (kind, n) in &self.errors {
                text += &format!("- {kind}: {n}\n");
            }
        }
        if self.target == Target::Nchan {
            text += "\nNchan has no acknowledgement: a message counts as acknowledged when received. \
                     Nor does it authenticate, validate or journal anything (see loadtest/src/nchan.rs).\n";
        }
        text
    }
}
