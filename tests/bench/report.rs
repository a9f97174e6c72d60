//! The figures: per-claim timelines turned into rates, percentiles and the
//! spans that show where the time went. Pure, so it is unit-tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Seconds since the benchmark started, as seen by the parent.
pub type Secs = f64;

/// What the parent saw of one claim, each time taken when the watch event arrived.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// The create request was sent.
    pub create_sent: Option<Secs>,
    /// The create request returned.
    pub created: Option<Secs>,
    /// First seen with `volume.kubernetes.io/storage-provisioner` (the binder's hand-over).
    pub annotated: Option<Secs>,
    /// Its PersistentVolume `pvc-<uid>` first seen.
    pub pv: Option<Secs>,
    /// First seen `Bound`.
    pub bound: Option<Secs>,
    /// Its PersistentVolume seen deleted.
    pub pv_gone: Option<Secs>,
}

/// A distribution summary in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Dist {
    /// How many samples.
    pub n: usize,
    /// Median.
    pub p50: Secs,
    /// 99th percentile.
    pub p99: Secs,
    /// Largest.
    pub max: Secs,
}

impl Dist {
    /// Nearest-rank percentiles of `samples` (empty: all zero).
    pub fn of(mut samples: Vec<Secs>) -> Dist {
        if samples.is_empty() {
            return Dist::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[i - 1]
        };
        Dist { n: samples.len(), p50: rank(0.50), p99: rank(0.99), max: samples[samples.len() - 1] }
    }
}

/// The first and last of one kind of timestamp over all claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Span {
    /// How many claims had this timestamp.
    pub n: usize,
    /// Earliest.
    pub first: Secs,
    /// Latest.
    pub last: Secs,
}

impl Span {
    fn of(times: impl Iterator<Item = Secs>) -> Span {
        times.fold(Span { n: 0, first: f64::INFINITY, last: f64::NEG_INFINITY }, |s, t| Span {
            n: s.n + 1,
            first: s.first.min(t),
            last: s.last.max(t),
        })
    }
    /// `n` over the time between `from` and the last one (0 when it took no time).
    pub fn rate_since(&self, from: Secs) -> f64 {
        let took = self.last - from;
        if self.n == 0 || took <= 0.0 { 0.0 } else { self.n as f64 / took }
    }
}

/// The provisioning figures of phase 1, all times relative to the first create.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Provisioning {
    /// Claims created.
    pub claims: usize,
    /// Claims that reached each stage.
    pub annotated: usize,
    /// PVs seen.
    pub volumes: usize,
    /// Claims Bound.
    pub bound: usize,
    /// N / (last PV − first annotated): the engine's throughput as the brief defines it.
    pub volumes_per_sec: f64,
    /// Per claim: annotated → PV seen (the engine's share).
    pub engine_latency: Dist,
    /// Per claim: create sent → annotated (the binder's hand-over).
    pub annotate_latency: Dist,
    /// Per claim: PV seen → Bound (the binder's bind).
    pub bind_latency: Dist,
    /// Per claim: create sent → Bound.
    pub total_latency: Dist,
    /// Create requests: first sent → last returned.
    pub creating: Secs,
    /// First create → last annotated.
    pub until_last_annotated: Secs,
    /// Last annotated → last PV (what the engine adds after the binder's last hand-over).
    pub engine_tail: Secs,
    /// Last PV → last Bound (what the binder adds after the engine's last PV).
    pub bind_tail: Secs,
    /// First create → all Bound.
    pub until_all_bound: Secs,
    /// Annotations per second (first create → last annotated).
    pub annotate_rate: f64,
    /// Binds per second (first PV → last Bound).
    pub bind_rate: f64,
}

fn latencies(timelines: &[Timeline], from: fn(&Timeline) -> Option<Secs>, to: fn(&Timeline) -> Option<Secs>) -> Dist {
    Dist::of(timelines.iter().filter_map(|t| Some(to(t)? - from(t)?)).collect())
}

impl Provisioning {
    /// Summarises the timelines of one run.
    pub fn of(timelines: &[Timeline]) -> Provisioning {
        let start = Span::of(timelines.iter().filter_map(|t| t.create_sent));
        let created = Span::of(timelines.iter().filter_map(|t| t.created));
        let annotated = Span::of(timelines.iter().filter_map(|t| t.annotated));
        let pv = Span::of(timelines.iter().filter_map(|t| t.pv));
        let bound = Span::of(timelines.iter().filter_map(|t| t.bound));
        let t0 = if start.n > 0 { start.first } else { 0.0 };
        let since = |s: &Span| if s.n > 0 { s.last - t0 } else { 0.0 };
        Provisioning {
            claims: start.n,
            annotated: annotated.n,
            volumes: pv.n,
            bound: bound.n,
            volumes_per_sec: pv.rate_since(annotated.first),
            engine_latency: latencies(timelines, |t| t.annotated, |t| t.pv),
            annotate_latency: latencies(timelines, |t| t.create_sent, |t| t.annotated),
            bind_latency: latencies(timelines, |t| t.pv, |t| t.bound),
            total_latency: latencies(timelines, |t| t.create_sent, |t| t.bound),
            creating: since(&created),
            until_last_annotated: since(&annotated),
            engine_tail: if pv.n > 0 && annotated.n > 0 { (pv.last - annotated.last).max(0.0) } else { 0.0 },
            bind_tail: if bound.n > 0 && pv.n > 0 { (bound.last - pv.last).max(0.0) } else { 0.0 },
            until_all_bound: since(&bound),
            annotate_rate: annotated.rate_since(t0),
            bind_rate: bound.rate_since(pv.first),
        }
    }

    /// The stage that added the most to the wall time, in words.
    pub fn bottleneck(&self) -> &'static str {
        let stages = [
            (self.until_last_annotated, "the binder annotating claims (kube-controller-manager)"),
            (self.engine_tail, "the engine"),
            (self.bind_tail, "the binder binding claims (kube-controller-manager)"),
        ];
        stages.iter().max_by(|a, b| a.0.total_cmp(&b.0)).map_or("nothing", |s| s.1)
    }
}

/// The deletion figures: all claims deleted at once, until every PV is gone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Deletion {
    /// PVs seen gone.
    pub volumes: usize,
    /// Delete request sent → last PV gone.
    pub took: Secs,
    /// Volumes deleted per second.
    pub volumes_per_sec: f64,
    /// Per volume: delete request sent → PV gone.
    pub latency: Dist,
}

impl Deletion {
    /// Summarises a deletion started at `sent`.
    pub fn of(timelines: &[Timeline], sent: Secs) -> Deletion {
        let gone = Span::of(timelines.iter().filter_map(|t| t.pv_gone));
        Deletion {
            volumes: gone.n,
            took: if gone.n > 0 { gone.last - sent } else { 0.0 },
            volumes_per_sec: gone.rate_since(sent),
            latency: Dist::of(timelines.iter().filter_map(|t| Some(t.pv_gone? - sent)).collect()),
        }
    }
}

/// What the engine child reports about itself (one JSON line on its stdout).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// `ready`, `report` or `final`.
    pub event: String,
    /// Workers the engine runs.
    pub workers: usize,
    /// Requests its client sent, by kind.
    pub reads: u64,
    /// POST, PUT, PATCH, DELETE.
    pub writes: u64,
    /// Watches started.
    pub watches: u64,
    /// The engine's own `provisioner_api_writes_total`.
    pub api_writes_metric: u64,
    /// `controller_persistentvolumeclaim_provision_total` for the class.
    pub provisioned: u64,
    /// `controller_persistentvolumeclaim_provision_failed_total` for the class.
    pub provision_failed: u64,
    /// `controller_persistentvolume_delete_total` for the class.
    pub deleted: u64,
    /// `provisioner_retries_total`.
    pub retries: u64,
    /// `provisioner_queue_depth` (refreshed once a second).
    pub queue_depth: i64,
    /// `provisioner_in_flight_operations`.
    pub in_flight: i64,
    /// `provisioner_journal_commits_total`.
    #[serde(default)]
    pub journal_commits: u64,
    /// The main client's writes by kind (`"POST persistentvolumes"`, ...).
    #[serde(default)]
    pub write_kinds: BTreeMap<String, u64>,
    /// Writes of the events' own client.
    #[serde(default)]
    pub event_writes: u64,
    /// The engine's event counters (`provisioner_events_total{type="Normal"}`,
    /// `provisioner_events_dropped_total{...}`, ...), as exported.
    #[serde(default)]
    pub event_metrics: BTreeMap<String, u64>,
}

impl EngineReport {
    /// Requests between `earlier` and this report.
    pub fn since(&self, earlier: &EngineReport) -> RequestDelta {
        RequestDelta {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
            watches: self.watches.saturating_sub(earlier.watches),
            api_writes_metric: self.api_writes_metric.saturating_sub(earlier.api_writes_metric),
            journal_commits: self.journal_commits.saturating_sub(earlier.journal_commits),
            write_kinds: delta(&self.write_kinds, &earlier.write_kinds),
            event_writes: self.event_writes.saturating_sub(earlier.event_writes),
            event_metrics: delta(&self.event_metrics, &earlier.event_metrics),
        }
    }
}

fn delta(now: &BTreeMap<String, u64>, earlier: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(earlier.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Requests of the engine's client over a stretch of time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestDelta {
    /// Gets and lists.
    pub reads: u64,
    /// Creates, patches, deletes.
    pub writes: u64,
    /// Watches started.
    pub watches: u64,
    /// The engine's `provisioner_api_writes_total` over the same stretch.
    pub api_writes_metric: u64,
    /// The engine's `provisioner_journal_commits_total` over the same stretch.
    pub journal_commits: u64,
    /// The main client's writes by kind.
    pub write_kinds: BTreeMap<String, u64>,
    /// Writes of the events' own client.
    pub event_writes: u64,
    /// The engine's event counters over the same stretch.
    pub event_metrics: BTreeMap<String, u64>,
}

impl RequestDelta {
    /// Writes per volume for `volumes` volumes.
    pub fn writes_per(&self, volumes: usize) -> f64 {
        per(self.writes, volumes)
    }
    /// Main-client writes of `kind` (`"POST persistentvolumes"`).
    pub fn kind(&self, kind: &str) -> u64 {
        self.write_kinds.get(kind).copied().unwrap_or(0)
    }
    /// Both stretches together (provisioning, then deletion).
    pub fn plus(&self, other: &RequestDelta) -> RequestDelta {
        let sum = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            let mut s = a.clone();
            for (k, v) in b {
                *s.entry(k.clone()).or_default() += v;
            }
            s
        };
        RequestDelta {
            reads: self.reads + other.reads,
            writes: self.writes + other.writes,
            watches: self.watches + other.watches,
            api_writes_metric: self.api_writes_metric + other.api_writes_metric,
            journal_commits: self.journal_commits + other.journal_commits,
            write_kinds: sum(&self.write_kinds, &other.write_kinds),
            event_writes: self.event_writes + other.event_writes,
            event_metrics: sum(&self.event_metrics, &other.event_metrics),
        }
    }
}

/// `count` per volume for `volumes` volumes (0 without volumes).
pub fn per(count: u64, volumes: usize) -> f64 {
    if volumes == 0 { 0.0 } else { count as f64 / volumes as f64 }
}

/// Counters of the API server's own `/metrics` that show it, not the engine, limiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ApiServerCounters {
    /// Watches it closed because their client did not read fast enough
    /// (`apiserver_terminated_watchers_total`); the client then re-watches.
    pub terminated_watchers: u64,
    /// Requests it answered 429 Too Many Requests (`--max-requests-inflight`,
    /// priority and fairness).
    pub throttled: u64,
}

impl ApiServerCounters {
    /// Sums the counters in a Prometheus text exposition.
    pub fn parse(text: &str) -> ApiServerCounters {
        let mut c = ApiServerCounters::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let value = value.parse::<f64>().unwrap_or(0.0) as u64;
            if series.starts_with("apiserver_terminated_watchers_total") {
                c.terminated_watchers += value;
            } else if series.starts_with("apiserver_request_total{") && series.contains("code=\"429\"") {
                c.throttled += value;
            }
        }
        c
    }
    /// The counts from `earlier` to `self`.
    pub fn since(&self, earlier: &ApiServerCounters) -> ApiServerCounters {
        ApiServerCounters {
            terminated_watchers: self.terminated_watchers.saturating_sub(earlier.terminated_watchers),
            throttled: self.throttled.saturating_sub(earlier.throttled),
        }
    }
}

/// `(rss − baseline) / n` in KiB, from KiB figures.
pub fn kib_per_volume(rss_kib: u64, baseline_kib: u64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { (rss_kib as f64 - baseline_kib as f64) / n as f64 }
}

/// Seconds as a short human figure.
pub fn human_secs(s: Secs) -> String {
    if s < 1.0 { format!("{:.1} ms", s * 1000.0) } else { format!("{s:.2} s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(sent: Secs, annotated: Secs, pv: Secs, bound: Secs) -> Timeline {
        Timeline {
            create_sent: Some(sent),
            created: Some(sent + 0.01),
            annotated: Some(annotated),
            pv: Some(pv),
            bound: Some(bound),
            pv_gone: None,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let d = Dist::of((1..=100).map(f64::from).collect());
        assert_eq!((d.n, d.p50, d.p99, d.max), (100, 50.0, 99.0, 100.0));
        let one = Dist::of(vec![3.0]);
        assert_eq!((one.p50, one.p99), (3.0, 3.0));
        assert_eq!(Dist::of(vec![]), Dist::default());
    }

    #[test]
    fn throughput_runs_from_the_first_annotation_to_the_last_volume() {
        let t = [claim(10.0, 11.0, 11.5, 12.0), claim(10.0, 12.0, 13.0, 14.0), claim(10.5, 12.5, 15.0, 16.0)];
        let p = Provisioning::of(&t);
        assert_eq!(p.claims, 3);
        assert!((p.volumes_per_sec - 3.0 / 4.0).abs() < 1e-9, "3 volumes in 15 - 11 s: {}", p.volumes_per_sec);
        assert_eq!(p.engine_latency.p50, 1.0);
        assert_eq!(p.engine_latency.max, 2.5);
        assert_eq!(p.until_all_bound, 6.0);
        // The three tail spans add up to the wall time.
        assert_eq!(p.until_last_annotated + p.engine_tail + p.bind_tail, p.until_all_bound);
        assert_eq!(p.bottleneck(), "the engine");
    }

    #[test]
    fn a_slow_binder_is_named_as_the_bottleneck() {
        let t = [claim(0.0, 9.0, 9.1, 9.2), claim(0.0, 1.0, 1.1, 1.2)];
        assert_eq!(Provisioning::of(&t).bottleneck(), "the binder annotating claims (kube-controller-manager)");
    }

    #[test]
    fn claims_that_never_got_a_volume_are_counted_but_not_timed() {
        let mut unfinished = claim(0.0, 1.0, 0.0, 0.0);
        unfinished.pv = None;
        unfinished.bound = None;
        let p = Provisioning::of(&[claim(0.0, 1.0, 2.0, 3.0), unfinished]);
        assert_eq!((p.claims, p.annotated, p.volumes, p.bound), (2, 2, 1, 1));
        assert_eq!(p.engine_latency.n, 1);
    }

    #[test]
    fn deletion_rate_counts_from_the_delete_request() {
        let gone = |s| Timeline { pv_gone: Some(s), ..Timeline::default() };
        let d = Deletion::of(&[gone(21.0), gone(22.0), Timeline::default()], 20.0);
        assert_eq!((d.volumes, d.took, d.volumes_per_sec), (2, 2.0, 1.0));
    }

    #[test]
    fn api_server_counters_are_summed_over_series() {
        let text = "# HELP apiserver_terminated_watchers_total Counter\n\
            apiserver_terminated_watchers_total{group=\"\",resource=\"persistentvolumeclaims\"} 19\n\
            apiserver_terminated_watchers_total{group=\"\",resource=\"persistentvolumes\"} 1\n\
            apiserver_request_total{code=\"201\",verb=\"POST\"} 5000\n\
            apiserver_request_total{code=\"429\",verb=\"POST\"} 3\n\
            apiserver_request_total{code=\"429\",verb=\"PATCH\"} 4\n";
        let c = ApiServerCounters::parse(text);
        assert_eq!((c.terminated_watchers, c.throttled), (20, 7));
        assert_eq!(c.since(&ApiServerCounters { terminated_watchers: 5, throttled: 7 }).terminated_watchers, 15);
    }

    #[test]
    fn request_deltas_and_memory_per_volume() {
        let a = EngineReport { writes: 10, reads: 3, ..Default::default() };
        let b = EngineReport { writes: 40, reads: 3, api_writes_metric: 30, ..Default::default() };
        let d = b.since(&a);
        assert_eq!((d.writes, d.reads, d.api_writes_metric), (30, 0, 30));
        assert_eq!(d.writes_per(10), 3.0);
        assert_eq!(kib_per_volume(30_000, 10_000, 10_000), 2.0);
    }
}
