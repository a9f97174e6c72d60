//! `side-by-side`: our engine (`noop-engine`) and the Go library
//! (`tests/peer`, sig-storage-lib-external-provisioner v13) against one
//! control plane, in alternation, with the same no-op backend.
//!
//! For each configuration, round and side: start the side's process, wait
//! for it to settle, create N claims at once, and measure from the harness's
//! own watches: volumes per second (first binder annotation to last PV),
//! p50/p99 latency from a claim's binder annotation to its PV, time to all
//! Bound; then delete every claim in one request and wait for every PV to be
//! gone (time to all deleted); then read the process's CPU seconds
//! (`/proc/<pid>/stat`) and peak RSS (`VmHWM`), stop it with SIGTERM and read
//! its API request counts (one JSON line it prints). Prints one table with
//! the medians over the rounds and the ratios ours/theirs. Configurations:
//! `defaults` (each side at its own), `equal` (both at `--workers`, `--qps`,
//! `--burst`), `protected` (equal settings with the Go library's
//! `AddFinalizer(true)`, the deletion protection our engine has by default),
//! `steady` (equal settings, the N claims created at `--rate` per second
//! instead of all at once, which shows latency under a sustained load) and
//! `unthrottled` (`--unthrottled-claims` at once, both clients at
//! `--unthrottled-qps`, so the API server is the limit). Writes are reported
//! apart for events: ours go through a client of their own, the Go library's
//! through its one client (counted by path).
//!
//! `--rss-cached N` instead measures memory: each side's RSS with an empty
//! cluster and with N bound claims and their volumes, either provisioned by
//! our side (`--rss-owner ours`: both sides keep them), by no provisioner
//! (`--rss-owner other`: only the Go library keeps them), or by another
//! provisioner the way a CSI driver's are (`--rss-owner csi`: the claim's
//! `volume.kubernetes.io/storage-provisioner` and the volume's
//! `pv.kubernetes.io/provisioned-by` name `csi.example.com/other`, the volume
//! has reclaim policy Delete and carries the finalizer
//! `external-provisioner.volume.kubernetes.io/finalizer` that every CSI
//! external-provisioner shares; only the Go library should keep them). The
//! volumes are `hostPath` in every mode, so the modes differ only in those
//! fields. The second reading waits until the binder has bound every pair
//! (up to `--timeout`).
//!
//! `KUBECONFIG` names the plane; use a fresh one (`tests/controlplane/up` with
//! its own `CONTROLPLANE_STATE_DIR`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e_support::fixtures;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use provisioner_core::keys;
use tokio::io::AsyncReadExt;

#[derive(Parser, Clone)]
struct Args {
    /// Claims created at once per run.
    #[arg(long, default_value_t = 1000)]
    claims: usize,
    /// Claims per run in the `defaults` configuration (the Go library's
    /// client defaults to 5 requests/s, so a large N takes many minutes).
    #[arg(long)]
    defaults_claims: Option<usize>,
    /// Rounds (each side once per round, alternating).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Configurations, comma-separated: `defaults` (each side at its own
    /// defaults), `equal` (both at `--workers`/`--qps`/`--burst`),
    /// `protected` (equal, with the Go library's finalizer on), `steady`
    /// (equal settings, claims created at a steady `--rate` instead of at
    /// once), `unthrottled` (`--unthrottled-claims` at `--unthrottled-qps`).
    #[arg(long, default_value = "defaults,equal,protected")]
    configs: String,
    /// Claims in the `unthrottled` configuration.
    #[arg(long, default_value_t = 5000)]
    unthrottled_claims: usize,
    /// Client QPS of both sides in the `unthrottled` configuration (burst twice that).
    #[arg(long, default_value_t = 1000.0)]
    unthrottled_qps: f64,
    /// Claims per second in the `steady` configuration.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Workers for both sides in the `equal` configuration.
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Client QPS for both sides in the `equal` configuration.
    #[arg(long, default_value_t = 50.0)]
    qps: f64,
    /// Client burst for both sides in the `equal` configuration.
    #[arg(long, default_value_t = 100)]
    burst: u32,
    /// The Go peer binary (default: what `tests/peer/build` prints).
    #[arg(long)]
    go_peer: Option<PathBuf>,
    /// Our binary (default: `noop-engine` next to this one).
    #[arg(long)]
    ours: Option<PathBuf>,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Namespace for the claims.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Instead of the runs: memory with this many bound claims (and their
    /// volumes) in the cluster. Measures each side's RSS after it has listed
    /// them, before creating them and once the binder has bound them all, and
    /// prints MiB and KiB per volume.
    #[arg(long)]
    rss_cached: Option<usize>,
    /// Whose volumes the `--rss-cached` pairs are: `ours` (annotated as
    /// provisioned by our side's provisioner name, so our engine must keep
    /// them; the Go library keeps every claim and volume whoever owns it),
    /// `other` (no provisioner of either side, reclaim policy Retain) or `csi`
    /// (another provisioner's, as a CSI driver's: annotated
    /// `csi.example.com/other`, reclaim policy Delete, with the shared
    /// finalizer `external-provisioner.volume.kubernetes.io/finalizer`).
    #[arg(long, default_value = "ours")]
    rss_owner: String,
    /// Seconds each side gets to list and settle before its RSS is read.
    #[arg(long, default_value_t = 20)]
    settle: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Side {
    Ours,
    Theirs,
}

#[derive(Default, Clone, Debug)]
struct Times {
    annotated: Option<Instant>,
    pv: Option<Instant>,
    bound: Option<Instant>,
}

#[derive(Default, Clone, Debug)]
struct RunResult {
    n: usize,
    vols_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    all_bound_s: f64,
    all_deleted_s: f64,
    reads_per_vol: f64,
    /// Writes but events (for us: the main client's budget).
    main_writes_per_vol: f64,
    event_writes_per_vol: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    complete: bool,
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command name (which may contain spaces) start at ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
    ticks / 100.0
}

fn proc_status_kib(pid: u32, key: &str) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return f64::NAN };
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

struct Setting {
    workers: Option<usize>,
    qps: Option<f64>,
    burst: Option<u32>,
    /// The Go library's `AddFinalizer(true)` (ours has its finalizer on by default).
    peer_finalizer: bool,
}

fn command_for(side: Side, bin: &PathBuf, name: &str, s: &Setting, counts: &PathBuf) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--provisioner").arg(name).arg("--counts-file").arg(counts);
    if side == Side::Ours {
        // No metrics endpoint: nothing to compare it with on the Go side.
        cmd.arg("--metrics-address").arg("");
    }
    if let Some(w) = s.workers {
        cmd.arg("--workers").arg(w.to_string());
    }
    if let Some(q) = s.qps {
        cmd.arg("--kube-api-qps").arg(q.to_string());
    }
    if let Some(b) = s.burst {
        cmd.arg("--kube-api-burst").arg(b.to_string());
    }
    if side == Side::Theirs && s.peer_finalizer {
        // A Go bool flag takes its value only after `=`.
        cmd.arg("--add-finalizer=true");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn one_run(
    client: &Client,
    args: &Args,
    side: Side,
    bin: &PathBuf,
    setting: &Setting,
    n: usize,
    rate: Option<f64>,
    tag: &str,
) -> Result<RunResult, Box<dyn std::error::Error>> {
    let side_name = if side == Side::Ours { "ours" } else { "theirs" };
    let run_id = format!("{tag}-{side_name}");
    let name = format!("bench.peer/{run_id}");
    let class = format!("sbs-{run_id}");
    let classes: Api<StorageClass> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &args.namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    classes.create(&PostParams::default(), &fixtures::storage_class(&class, &name)).await?;

    let counts_file = std::env::temp_dir().join(format!("sbs-counts-{run_id}.json"));
    let _ = std::fs::remove_file(&counts_file);
    let mut child = command_for(side, bin, &name, setting, &counts_file).spawn()?;
    let pid = child.id().ok_or("the process exited at once")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(status) = child.try_wait()? {
        return Err(format!("{side_name} exited during start-up: {status}").into());
    }

    // The harness's watches: claims of this run, volumes of this class.
    let times: Arc<Mutex<HashMap<String, Times>>> = Arc::default();
    let pv_count = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let label = format!("sbs-run={run_id}");
    let w1 = {
        let times = times.clone();
        let claims = claims.clone();
        let cfg = watcher::Config::default().labels(&label);
        tokio::spawn(async move {
            let mut s = watcher(claims, cfg).boxed();
            while let Ok(Some(ev)) = s.try_next().await {
                if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = ev {
                    let now = Instant::now();
                    let uid = c.uid().unwrap_or_default();
                    let mut t = times.lock().unwrap();
                    let e = t.entry(uid).or_default();
                    let ann = c.annotations().get("volume.kubernetes.io/storage-provisioner").is_some();
                    if ann && e.annotated.is_none() {
                        e.annotated = Some(now);
                    }
                    let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
                    if bound && e.bound.is_none() {
                        e.bound = Some(now);
                    }
                }
            }
        })
    };
    let w2 = {
        let times = times.clone();
        let pv_count = pv_count.clone();
        let class = class.clone();
        tokio::spawn(async move {
            let mut s = watcher(pvs, watcher::Config::default()).boxed();
            while let Ok(Some(ev)) = s.try_next().await {
                match ev {
                    watcher::Event::Apply(v) | watcher::Event::InitApply(v) => {
                        if v.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()) != Some(class.as_str()) {
                            continue;
                        }
                        let now = Instant::now();
                        pv_count.lock().unwrap().insert(v.name_any());
                        let uid = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
                        if let Some(uid) = uid {
                            let mut t = times.lock().unwrap();
                            let e = t.entry(uid).or_default();
                            if e.pv.is_none() {
                                e.pv = Some(now);
                            }
                        }
                    }
                    watcher::Event::Delete(v) => {
                        pv_count.lock().unwrap().remove(&v.name_any());
                    }
                    _ => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu0 = proc_cpu_seconds(pid);
    let t0 = Instant::now();
    let labels = BTreeMap::from([("sbs-run".to_string(), run_id.clone())]);
    futures::stream::iter(0..n)
        .map(|i| {
            let claims = claims.clone();
            let mut c = fixtures::claim(&format!("{run_id}-{i:05}"), &class, "1Mi");
            c.metadata.labels = Some(labels.clone());
            // At a steady rate, claim i is created i/rate seconds in.
            let at = rate.map(|r| tokio::time::Instant::from_std(t0) + Duration::from_secs_f64(i as f64 / r));
            async move {
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                }
                claims.create(&PostParams::default(), &c).await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let created_s = t0.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut complete = true;
    loop {
        let bound = times.lock().unwrap().values().filter(|t| t.bound.is_some()).count();
        if bound >= n {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("side-by-side: {run_id}: only {bound}/{n} bound after {}s", args.timeout);
            complete = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = times.lock().unwrap().clone();
    let first_ann = t.values().filter_map(|x| x.annotated).min();
    let last_pv = t.values().filter_map(|x| x.pv).max();
    let last_bound = t.values().filter_map(|x| x.bound).max();
    let mut lat: Vec<f64> =
        t.values().filter_map(|x| Some(x.pv?.saturating_duration_since(x.annotated?).as_secs_f64() * 1000.0)).collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let provisioned = t.values().filter(|x| x.pv.is_some()).count();
    let vols_per_s = match (first_ann, last_pv) {
        (Some(a), Some(b)) => provisioned as f64 / b.saturating_duration_since(a).as_secs_f64().max(1e-3),
        _ => f64::NAN,
    };
    let all_bound_s = last_bound.map(|b| b.saturating_duration_since(t0).as_secs_f64()).unwrap_or(f64::NAN);

    // Delete every claim in one request, wait for every volume to go.
    let td = Instant::now();
    claims.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&label)).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let left = pv_count.lock().unwrap().len();
        let claims_left = claims.list_metadata(&ListParams::default().labels(&label)).await?.items.len();
        if left == 0 && claims_left == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("side-by-side: {run_id}: {left} volumes, {claims_left} claims left after {}s", args.timeout);
            complete = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_deleted_s = td.elapsed().as_secs_f64();
    let cpu_s = proc_cpu_seconds(pid) - cpu0;
    let peak_rss_mib = proc_status_kib(pid, "VmHWM:") / 1024.0;
    w1.abort();
    w2.abort();

    // SIGTERM, then the counts line.
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = tokio::time::timeout(Duration::from_secs(15), so.read_to_string(&mut out)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    let line = out.lines().rev().find(|l| l.starts_with('{')).map(str::to_string);
    let line = line.or_else(|| std::fs::read_to_string(&counts_file).ok()).unwrap_or_default();
    let counts: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    let reads = counts["reads"].as_f64().unwrap_or(f64::NAN);
    let writes = counts["writes"].as_f64().unwrap_or(f64::NAN);
    let event_writes = counts["event_writes"].as_f64().unwrap_or(f64::NAN);
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    eprintln!(
        "side-by-side: {run_id}: n={n} created in {created_s:.1}s, {vols_per_s:.1} vol/s, p50 {:.0} ms, p99 {:.0} ms, \
         all Bound {all_bound_s:.1}s, all deleted {all_deleted_s:.1}s, cpu {cpu_s:.2}s, peak RSS {peak_rss_mib:.1} MiB, counts {line}",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        line = line.trim()
    );
    Ok(RunResult {
        n,
        vols_per_s,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        all_bound_s,
        all_deleted_s,
        reads_per_vol: reads / n as f64,
        main_writes_per_vol: (writes - event_writes) / n as f64,
        event_writes_per_vol: event_writes / n as f64,
        cpu_s,
        peak_rss_mib,
        complete,
    })
}

fn default_go_peer() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer/build");
    let out = std::process::Command::new(&script).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("{} failed", script.display()).into());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::try_default().await?;
    let theirs = match &args.go_peer {
        Some(p) => p.clone(),
        None => default_go_peer()?,
    };
    let ours = match &args.ours {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("noop-engine"),
    };
    if let Some(n) = args.rss_cached {
        return rss_cached(&client, &args, &ours, &theirs, n).await;
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 100_000;
    let mut table: Vec<(String, usize, bool, BTreeMap<Side, Vec<RunResult>>)> = Vec::new();
    for config in args.configs.split(',').map(str::trim) {
        let (n, mine, peer) = match config {
            "defaults" => (
                args.defaults_claims.unwrap_or(args.claims),
                Setting { workers: None, qps: None, burst: None, peer_finalizer: false },
                Setting { workers: None, qps: None, burst: None, peer_finalizer: false },
            ),
            "equal" | "steady" | "protected" => (
                args.claims,
                Setting {
                    workers: Some(args.workers),
                    qps: Some(args.qps),
                    burst: Some(args.burst),
                    peer_finalizer: false,
                },
                Setting {
                    workers: Some(args.workers),
                    qps: Some(args.qps),
                    burst: Some(args.burst),
                    peer_finalizer: config == "protected",
                },
            ),
            "unthrottled" => {
                let (qps, burst) = (Some(args.unthrottled_qps), Some((args.unthrottled_qps * 2.0).ceil() as u32));
                (
                    args.unthrottled_claims,
                    Setting { workers: Some(args.workers), qps, burst, peer_finalizer: false },
                    Setting { workers: Some(args.workers), qps, burst, peer_finalizer: false },
                )
            }
            other => return Err(format!("unknown configuration {other:?}").into()),
        };
        let mut by_side: BTreeMap<Side, Vec<RunResult>> = BTreeMap::new();
        for round in 0..args.rounds {
            // Alternate which side goes first, so neither always meets a warmer plane.
            let order = if round % 2 == 0 { [Side::Ours, Side::Theirs] } else { [Side::Theirs, Side::Ours] };
            for side in order {
                let (bin, setting) = if side == Side::Ours { (&ours, &mine) } else { (&theirs, &peer) };
                let tag = format!("{stamp}-{config}-{round}");
                let rate = (config == "steady").then_some(args.rate);
                let r = one_run(&client, &args, side, bin, setting, n, rate, &tag).await?;
                by_side.entry(side).or_default().push(r);
            }
        }
        table.push((config.to_string(), n, peer.peer_finalizer, by_side));
    }

    println!();
    println!(
        "| config | N | side | vol/s | p50 ms | p99 ms | all Bound s | all deleted s | reads/vol | writes/vol but events | event writes/vol | CPU s | peak RSS MiB | complete |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (config, n, peer_finalizer, by_side) in &table {
        let med = |side: Side, f: fn(&RunResult) -> f64| median(by_side[&side].iter().map(f).collect());
        let fields: [(&str, fn(&RunResult) -> f64); 10] = [
            ("vol/s", |r| r.vols_per_s),
            ("p50", |r| r.p50_ms),
            ("p99", |r| r.p99_ms),
            ("bound", |r| r.all_bound_s),
            ("deleted", |r| r.all_deleted_s),
            ("reads", |r| r.reads_per_vol),
            ("writes", |r| r.main_writes_per_vol),
            ("events", |r| r.event_writes_per_vol),
            ("cpu", |r| r.cpu_s),
            ("rss", |r| r.peak_rss_mib),
        ];
        for side in [Side::Ours, Side::Theirs] {
            let complete = by_side[&side].iter().all(|r| r.complete && r.n == *n);
            let cells: Vec<String> = fields.iter().map(|(_, f)| format!("{:.2}", med(side, *f))).collect();
            let label = match (side, peer_finalizer) {
                (Side::Ours, _) => "ours (Rust)",
                (Side::Theirs, false) => "theirs (Go lib v13)",
                (Side::Theirs, true) => "theirs (Go lib v13, AddFinalizer(true))",
            };
            println!("| {config} | {n} | {label} | {} | {complete} |", cells.join(" | "));
        }
        let ratios: Vec<String> =
            fields.iter().map(|(_, f)| format!("{:.2}", med(Side::Ours, *f) / med(Side::Theirs, *f))).collect();
        println!("| {config} | {n} | ratio ours/theirs | {} | |", ratios.join(" | "));
    }
    println!("\n(medians over {} round(s); vol/s higher is better, every other column lower is better)", args.rounds);
    Ok(())
}

fn claim_phase(c: &PersistentVolumeClaim) -> Option<&str> {
    c.status.as_ref()?.phase.as_deref()
}

fn volume_phase(v: &PersistentVolume) -> Option<&str> {
    v.status.as_ref()?.phase.as_deref()
}

/// The other provisioner of `--rss-owner csi`, named like a CSI driver.
const CSI_OTHER: &str = "csi.example.com/other";

/// Starts a side, lets it list and settle, reads VmRSS and VmHWM (MiB), stops it.
fn rss_name(side: Side) -> String {
    format!("bench.peer/rss-{}", if side == Side::Ours { "ours" } else { "theirs" })
}

async fn settled_rss(side: Side, bin: &PathBuf, settle: u64) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let name = rss_name(side);
    let counts = std::env::temp_dir().join("sbs-rss-counts.json");
    let setting = Setting { workers: None, qps: None, burst: None, peer_finalizer: false };
    let mut child = command_for(side, bin, &name, &setting, &counts).spawn()?;
    let pid = child.id().ok_or("exited at once")?;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss = proc_status_kib(pid, "VmRSS:") / 1024.0;
    let hwm = proc_status_kib(pid, "VmHWM:") / 1024.0;
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    Ok((rss, hwm))
}

async fn rss_cached(
    client: &Client,
    args: &Args,
    ours: &PathBuf,
    theirs: &PathBuf,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &args.namespace);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut before = BTreeMap::new();
    for side in [Side::Ours, Side::Theirs] {
        before.insert(side, settled_rss(side, if side == Side::Ours { ours } else { theirs }, args.settle).await?);
    }
    // Pre-bound pairs: the binder binds them; no provisioner is involved.
    // With owner `ours` they carry the annotations of a volume our side
    // provisioned, so our engine caches them as its own. With `csi` they
    // carry another provisioner's annotations and, as every CSI
    // external-provisioner's Delete-policy volumes do, the shared finalizer.
    let (owned, finalizer, policy, whose) = match args.rss_owner.as_str() {
        "ours" => (Some(rss_name(Side::Ours)), false, "Retain", "provisioned by our side".to_string()),
        "other" => (None, false, "Retain", "of another provisioner".to_string()),
        "csi" => (
            Some(CSI_OTHER.to_string()),
            true,
            "Delete",
            format!("provisioned by {CSI_OTHER}, policy Delete, with the shared finalizer {}", keys::VOLUME_FINALIZER),
        ),
        o => return Err(format!("--rss-owner {o}: expected ours, other or csi").into()),
    };
    let class = "sbs-cached";
    let label = BTreeMap::from([("sbs-cached".to_string(), "yes".to_string())]);
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (claims, pvs, label, owned) = (claims.clone(), pvs.clone(), label.clone(), owned.clone());
            async move {
                let name = format!("cached-{i:06}");
                let mut c = fixtures::claim(&name, class, "1Mi");
                c.metadata.labels = Some(label.clone());
                if let Some(p) = &owned {
                    c.metadata.annotations = Some(BTreeMap::from([(keys::STORAGE_PROVISIONER.to_string(), p.clone())]));
                }
                c.spec.as_mut().unwrap().volume_name = Some(format!("pv-{name}"));
                let c = match claims.create(&PostParams::default(), &c).await {
                    Ok(c) => c,
                    Err(kube::Error::Api(e)) if e.code == 409 => claims.get(&name).await?,
                    Err(e) => return Err(e),
                };
                let mut v = fixtures::volume_for(&format!("pv-{name}"), &c, policy);
                v.metadata.labels = Some(label);
                if let Some(p) = owned {
                    v.metadata.annotations = Some(BTreeMap::from([(keys::PROVISIONED_BY.to_string(), p)]));
                }
                if finalizer {
                    v.metadata.finalizers = Some(vec![keys::VOLUME_FINALIZER.to_string()]);
                }
                match pvs.create(&PostParams::default(), &v).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!("side-by-side: created {n} pre-bound claims and volumes in {:.0?}", t.elapsed());
    // Measure the bound state: on a busy machine the binder can take minutes.
    let tb = Instant::now();
    let deadline = tb + Duration::from_secs(args.timeout);
    let selector = ListParams::default().labels("sbs-cached=yes");
    loop {
        let bound_claims =
            claims.list(&selector).await?.items.iter().filter(|c| claim_phase(c) == Some("Bound")).count();
        let bound_pvs = pvs.list(&selector).await?.items.iter().filter(|v| volume_phase(v) == Some("Bound")).count();
        if bound_claims >= n && bound_pvs >= n {
            eprintln!("side-by-side: all {n} claims and volumes Bound {:.0?} after the creates", tb.elapsed());
            break;
        }
        if Instant::now() > deadline {
            eprintln!("side-by-side: only {bound_claims} claims and {bound_pvs} volumes Bound after {}s", args.timeout);
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut after = BTreeMap::new();
    for side in [Side::Ours, Side::Theirs] {
        after.insert(side, settled_rss(side, if side == Side::Ours { ours } else { theirs }, args.settle).await?);
    }
    println!();
    println!("\n{n} bound claims and their volumes, {whose}:");
    println!("| side | RSS empty MiB | RSS with {n} bound claims MiB | peak RSS MiB | KiB per cached claim+volume |");
    println!("|---|---|---|---|---|");
    let mut per = BTreeMap::new();
    for side in [Side::Ours, Side::Theirs] {
        let (b, _) = before[&side];
        let (a, h) = after[&side];
        let kib = (a - b) * 1024.0 / n as f64;
        per.insert(side, kib);
        let label = if side == Side::Ours { "ours (Rust)" } else { "theirs (Go lib v13)" };
        println!("| {label} | {b:.1} | {a:.1} | {h:.1} | {kib:.2} |");
    }
    println!("| ratio ours/theirs | | | | {:.2} |", per[&Side::Ours] / per[&Side::Theirs]);
    if finalizer {
        println!("(the {n} pairs stay and the finalizer holds the volumes; tear the plane down)");
    } else {
        println!("(the {n} pairs stay; delete them with: kubectl delete pvc,pv -l sbs-cached=yes)");
    }
    Ok(())
}
