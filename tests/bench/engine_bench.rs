//! `engine-bench`: how fast the engine provisions, how many API writes a
//! volume costs, and how much memory a cached volume takes, measured against
//! the real control plane in `KUBECONFIG` with a backend that does no I/O.
//!
//! ```text
//! eval "$(CONTROLPLANE_STATE_DIR=/tmp/bench-plane tests/controlplane/up)"
//! cargo run --release -p provisioner-e2e --bin engine-bench -- --claims 1000 --cached 10000
//! ```
//!
//! The engine runs in a child process (this program, re-executed with the
//! hidden `engine` subcommand) so that its RSS and CPU come from `/proc` and
//! its client's request counts are its own. The parent creates the objects,
//! watches claims and volumes with a timestamp on every event, and prints a
//! table and one JSON line.
//!
//! 1. Provisioning: N claims created at once; per claim the time it was
//!    annotated by the binder, its PV appeared, and it was Bound. Then all
//!    claims are deleted at once and the engine deletes the volumes.
//! 2. Memory: an engine over an empty cluster state, then one over `--cached`
//!    claims with bound volumes that look exactly like the engine's own.

mod child;
mod cluster;
mod kinds;
mod procfs;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::Client;
use provisioner_core::engine::EngineConfig;
use serde_json::json;

use crate::child::{EngineArgs, EngineChild};
use crate::cluster::{Clock, RunNames, Tracker, progress};
use crate::procfs::{Memory, PlaneProcess};
use crate::report::{
    ApiServerCounters, Deletion, EngineReport, Provisioning, RequestDelta, human_secs, kib_per_volume, per,
};

/// The targets the figures are held against: main-budget writes over a
/// volume's life (PV create, PV delete, PV finalizer removal; the journal's
/// share on top must stay a small fraction).
const MAX_WRITES_PER_VOLUME: f64 = 3.0;
const MAX_KIB_PER_CACHED_VOLUME: f64 = 10.0;

#[derive(Parser, Debug)]
#[command(
    name = "engine-bench",
    about = "Throughput, API writes and memory of the provisioning engine against the control plane in KUBECONFIG",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Runs the engine under test (started by the benchmark itself).
    #[command(hide = true)]
    Engine(EngineArgs),
    /// Removes what a run left behind with --keep (or an interrupted run).
    Cleanup {
        /// The run id the benchmark printed.
        id: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct BenchArgs {
    /// Claims created at once in the provisioning phase.
    #[arg(long, default_value_t = 1000)]
    claims: usize,
    /// Engine workers [default: the engine's default].
    #[arg(long)]
    workers: Option<usize>,
    /// Request rate of the engine's client [default: unlimited].
    #[arg(long)]
    qps: Option<f64>,
    /// Burst of the engine's client [default: twice the qps].
    #[arg(long, requires = "qps")]
    burst: Option<u32>,
    /// Bound claims (with their volumes) in the engine's cache in the memory phase.
    #[arg(long, default_value_t = 10_000)]
    cached: usize,
    /// Skip the memory phase.
    #[arg(long)]
    skip_memory: bool,
    /// Leave the claims, volumes, class and namespace in place (and skip the deletion measurement).
    #[arg(long)]
    keep: bool,
    /// Requests the benchmark itself keeps in flight when creating objects.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to wait for each phase to finish, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("engine-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Sub::Engine(args)) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .init();
            runtime.block_on(child::run_engine(args)).map_err(|e| format!("engine child: {e}"))
        }
        Some(Sub::Cleanup { id }) => runtime.block_on(cleanup(&id)),
        None => runtime.block_on(bench(cli.bench)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cleanup(id: &str) -> Result<(), String> {
    let client = Client::try_default().await.map_err(|e| format!("cannot load KUBECONFIG: {e}"))?;
    let names = RunNames::of(id);
    cluster::remove_everything(&client, &names, 64).await?;
    eprintln!("removed namespace {}, its claims and volumes, and class {}", names.namespace, names.class);
    Ok(())
}

/// What the benchmark found about the plane it runs on.
struct Plane {
    server: String,
    version: String,
    processes: Vec<PlaneProcess>,
}

async fn bench(args: BenchArgs) -> Result<(), String> {
    let clock = Clock::start();
    let kubeconfig = std::env::var_os("KUBECONFIG").map(PathBuf::from).ok_or(
        "KUBECONFIG is not set; start a plane of your own with\n  \
         eval \"$(CONTROLPLANE_STATE_DIR=/tmp/bench-plane tests/controlplane/up)\"",
    )?;
    let config = kube::Config::infer().await.map_err(|e| format!("cannot load KUBECONFIG: {e}"))?;
    let server = config.cluster_url.to_string();
    // The benchmark's own client has no client-side rate limit at all.
    let client = Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
    let version =
        client.apiserver_version().await.map_err(|e| format!("the control plane at {server} does not answer: {e}"))?;
    let plane = Plane { server, version: version.git_version, processes: procfs::plane_processes(&kubeconfig) };
    let names = RunNames::new();
    let workers = args.workers.unwrap_or(EngineConfig::default().workers);
    progress(
        &clock,
        format!(
            "run {}: {} claims, {workers} workers, provisioner {}, namespace {}, plane {} ({})",
            names.id, args.claims, names.provisioner, names.namespace, plane.server, plane.version
        ),
    );
    let class = cluster::create_namespace_and_class(&client, &names).await?;
    let engine_args = EngineArgs {
        name: names.provisioner.clone(),
        class: names.class.clone(),
        workers: args.workers,
        qps: args.qps,
        burst: args.burst,
    };

    let outcome = tokio::select! {
        r = phases(&client, &names, &class, &engine_args, &args, &plane, &clock) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    if let Ok(figures) = &outcome {
        print_figures(figures, &args, workers, &plane);
    }
    if args.keep {
        progress(
            &clock,
            format!(
                "--keep: left namespace {}, its claims, their volumes and class {}; remove them with: engine-bench cleanup {}",
                names.namespace, names.class, names.id
            ),
        );
    } else {
        progress(&clock, "removing everything the benchmark created");
        cluster::remove_everything(&client, &names, args.concurrency).await?;
        progress(&clock, "removed");
    }
    match outcome {
        Ok(Figures { memory_error: Some(e), .. }) => Err(format!("the memory phase failed: {e}")),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// All figures of one run.
struct Figures {
    provisioning: ProvisioningFigures,
    memory: Option<MemoryFigures>,
    /// Why the memory phase failed, if it did (the provisioning figures still stand).
    memory_error: Option<String>,
}

struct ProvisioningFigures {
    result: Provisioning,
    /// Engine requests from ready to settled after the last bind.
    requests: RequestDelta,
    /// Engine requests to start (initial lists and watches).
    startup: EngineReport,
    /// After the provisioning settled.
    settled: EngineReport,
    engine_ready_after: f64,
    engine_memory: Memory,
    engine_rss_at_ready_kib: u64,
    engine_cpu: f64,
    /// CPU seconds during first create → all Bound, per plane process.
    plane_cpu: Vec<(&'static str, f64)>,
    bench_cpu: f64,
    /// The API server's counters over first create → all Bound.
    apiserver: Option<ApiServerCounters>,
    wall: f64,
    timed_out: Option<String>,
    deletion: Option<DeletionFigures>,
}

struct DeletionFigures {
    result: Deletion,
    requests: RequestDelta,
    timed_out: Option<String>,
}

struct MemoryFigures {
    cached: usize,
    baseline: Memory,
    loaded: Memory,
    baseline_ready_after: f64,
    loaded_ready_after: f64,
    populate_secs: f64,
    bind_secs: f64,
    settled: EngineReport,
}

async fn phases(
    client: &Client,
    names: &RunNames,
    class: &k8s_openapi::api::storage::v1::StorageClass,
    engine_args: &EngineArgs,
    args: &BenchArgs,
    plane: &Plane,
    clock: &Clock,
) -> Result<Figures, String> {
    let provisioning = provisioning_phase(client, names, engine_args, args, plane, clock).await?;
    let (memory, memory_error) = if args.skip_memory || args.cached == 0 {
        (None, None)
    } else {
        match memory_phase(client, names, class, engine_args, args, clock).await {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        }
    };
    Ok(Figures { provisioning, memory, memory_error })
}

fn self_cpu() -> f64 {
    procfs::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

async fn provisioning_phase(
    client: &Client,
    names: &RunNames,
    engine_args: &EngineArgs,
    args: &BenchArgs,
    plane: &Plane,
    clock: &Clock,
) -> Result<ProvisioningFigures, String> {
    let timeout = Duration::from_secs(args.timeout);
    let n = args.claims;
    let tracker = Tracker::start(client, &names.namespace, *clock).await?;
    let mut engine = EngineChild::spawn(engine_args, timeout).await?;
    let engine_ready_after = engine.ready_after;
    progress(clock, format!("engine child {} ready after {}", engine.pid(), human_secs(engine_ready_after)));
    let startup = engine.ready.clone();
    let engine_rss_at_ready_kib = engine.memory().rss_kib;

    let before = engine.report().await?;
    let (cpu0, bench0, plane0) = (engine.cpu(), self_cpu(), procfs::cpu_of(&plane.processes));
    let apiserver0 = cluster::apiserver_counters(client).await;
    let t0 = clock.now();
    progress(clock, format!("creating {n} claims, {} at a time", args.concurrency));
    cluster::create_claims(client, names, n, args.concurrency, &tracker).await?;
    progress(clock, "all claims created; waiting until all are Bound");
    let timed_out = match tracker.wait("all claims Bound", timeout, |c| c.bound >= n).await {
        Ok(_) => None,
        Err(c) => Some(format!("only {} of {n} claims Bound after {timeout:?} ({c:?})", c.bound)),
    };
    let wall = clock.now() - t0;
    let (cpu1, bench1, plane1) = (engine.cpu(), self_cpu(), procfs::cpu_of(&plane.processes));
    let apiserver = match (apiserver0, cluster::apiserver_counters(client).await) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    let settled = engine.settle(Duration::from_millis(1500), Duration::from_secs(30)).await?;
    let result = Provisioning::of(&tracker.timelines());
    if tracker.counts().misnamed > 0 {
        progress(clock, format!("warning: {} volumes were not named pvc-<claim uid>", tracker.counts().misnamed));
    }
    let engine_memory = engine.memory();

    let deletion = if args.keep {
        None
    } else {
        let before_delete = settled.clone();
        let sent = clock.now();
        progress(clock, format!("deleting all {n} claims in one request; the engine deletes their volumes"));
        cluster::delete_all_claims(client, &names.namespace).await?;
        let volumes = tracker.counts().volumes;
        let timed_out = match tracker.wait("all volumes deleted", timeout, |c| c.volumes_gone >= volumes).await {
            Ok(_) => None,
            Err(c) => Some(format!("only {} of {volumes} volumes deleted after {timeout:?}", c.volumes_gone)),
        };
        let after = engine.settle(Duration::from_millis(1500), Duration::from_secs(30)).await?;
        Some(DeletionFigures {
            result: Deletion::of(&tracker.timelines(), sent),
            requests: after.since(&before_delete),
            timed_out,
        })
    };
    let engine_cpu = cpu1 - cpu0;
    let engine_memory = Memory { hwm_kib: engine.memory().hwm_kib, ..engine_memory };
    let last = engine.stop().await?;
    progress(
        clock,
        format!("engine child stopped: {} writes, {} reads, {} watches in all", last.writes, last.reads, last.watches),
    );
    Ok(ProvisioningFigures {
        result,
        requests: settled.since(&before),
        startup,
        settled,
        engine_ready_after,
        engine_memory,
        engine_rss_at_ready_kib,
        engine_cpu,
        plane_cpu: plane.processes.iter().zip(plane1.iter().zip(&plane0)).map(|(p, (b, a))| (p.name, b - a)).collect(),
        bench_cpu: bench1 - bench0,
        apiserver,
        wall,
        timed_out,
        deletion,
    })
}

async fn memory_phase(
    client: &Client,
    names: &RunNames,
    class: &k8s_openapi::api::storage::v1::StorageClass,
    engine_args: &EngineArgs,
    args: &BenchArgs,
    clock: &Clock,
) -> Result<MemoryFigures, String> {
    let n = args.cached;
    let timeout = Duration::from_secs(args.timeout.max(n as u64 / 20));
    let quiet = Duration::from_secs(2);

    progress(clock, "memory: starting an engine over an empty cluster state for the baseline");
    let mut base = EngineChild::spawn(engine_args, timeout).await?;
    base.settle(quiet, Duration::from_secs(30)).await?;
    let baseline = base.memory();
    let baseline_ready_after = base.ready_after;
    base.stop().await?;

    let tracker = Tracker::start(client, &names.namespace, *clock).await?;
    // Claims left Bound by the provisioning phase (with --keep) are not the cached ones.
    let already = tracker.counts().bound;
    let t0 = clock.now();
    progress(
        clock,
        format!("memory: creating {n} claims with bound volumes as the engine would, {} at a time", args.concurrency),
    );
    cluster::create_provisioned(client, names, class, n, args.concurrency, clock).await?;
    let populate_secs = clock.now() - t0;
    progress(clock, "memory: waiting for the binder to bind them");
    tracker
        .wait("all cached claims Bound", timeout, |c| c.bound >= already + n)
        .await
        .map_err(|c| format!("only {} of {n} cached claims Bound after {timeout:?}", c.bound - already))?;
    let bind_secs = clock.now() - t0 - populate_secs;
    drop(tracker);

    progress(clock, format!("memory: starting an engine over {n} bound claims and volumes"));
    let mut loaded = EngineChild::spawn(engine_args, timeout).await?;
    let loaded_ready_after = loaded.ready_after;
    let settled = loaded.settle(quiet, Duration::from_secs(60)).await?;
    let memory = loaded.memory();
    loaded.stop().await?;
    Ok(MemoryFigures {
        cached: n,
        baseline,
        loaded: memory,
        baseline_ready_after,
        loaded_ready_after,
        populate_secs,
        bind_secs,
        settled,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn rate_text(args: &BenchArgs) -> String {
    match args.qps {
        Some(q) => format!("engine client {q} qps, burst {}", args.burst.unwrap_or_else(|| child::default_burst(q))),
        None => "engine client unlimited".to_string(),
    }
}

fn print_figures(f: &Figures, args: &BenchArgs, workers: usize, plane: &Plane) {
    let p = &f.provisioning;
    let r = &p.result;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "engine-bench: {} claims, {workers} workers, {}; plane {} (Kubernetes {}), {cores} cores",
        args.claims,
        rate_text(args),
        plane.server,
        plane.version
    );
    println!();
    println!("Provisioning: {} claims created at once ({} requests in flight)", args.claims, args.concurrency);
    if let Some(t) = &p.timed_out {
        println!("  INCOMPLETE: {t}");
    }
    println!("  volumes/s (N / (last PV - first annotated))   {:.1}", r.volumes_per_sec);
    println!(
        "  annotated -> PV, p50 / p99 / max              {} / {} / {}",
        human_secs(r.engine_latency.p50),
        human_secs(r.engine_latency.p99),
        human_secs(r.engine_latency.max)
    );
    println!("  first create -> all Bound                     {}", human_secs(r.until_all_bound));
    println!("  annotated / PVs / Bound                       {} / {} / {}", r.annotated, r.volumes, r.bound);
    println!();
    println!("Where the time goes (from the first create; the three spans add up to all Bound)");
    println!(
        "  binder hands over: first create -> last annotated   {:>9}  ({:.0} claims/s; create -> annotated p50 {}, p99 {})",
        human_secs(r.until_last_annotated),
        r.annotate_rate,
        human_secs(r.annotate_latency.p50),
        human_secs(r.annotate_latency.p99)
    );
    println!(
        "  engine: last annotated -> last PV                   {:>9}  (annotated -> PV p50 {}, p99 {})",
        human_secs(r.engine_tail),
        human_secs(r.engine_latency.p50),
        human_secs(r.engine_latency.p99)
    );
    println!(
        "  binder binds: last PV -> last Bound                 {:>9}  ({:.0} binds/s; PV -> Bound p50 {}, p99 {})",
        human_secs(r.bind_tail),
        r.bind_rate,
        human_secs(r.bind_latency.p50),
        human_secs(r.bind_latency.p99)
    );
    println!(
        "  (the benchmark's own create requests took {}; create -> Bound per claim p50 {}, p99 {})",
        human_secs(r.creating),
        human_secs(r.total_latency.p50),
        human_secs(r.total_latency.p99)
    );
    println!("  longest stage: {}", r.bottleneck());
    println!();
    println!(
        "CPU seconds while provisioning ({} wall x {cores} cores = {:.1} CPU-s available)",
        human_secs(p.wall),
        p.wall * cores as f64
    );
    let mut cpu: Vec<String> = p.plane_cpu.iter().map(|(name, s)| format!("{name} {s:.2}")).collect();
    cpu.push(format!("engine {:.2}", p.engine_cpu));
    cpu.push(format!("engine-bench itself {:.2}", p.bench_cpu));
    println!("  {}", cpu.join(" | "));
    if let Some(a) = &p.apiserver {
        println!(
            "  kube-apiserver closed {} watches whose client fell behind (all clients; they re-watch) \
             and answered 429 to {} requests",
            a.terminated_watchers, a.throttled
        );
    }
    println!();
    println!("Engine API requests (counted at its client), ready -> all Bound and settled");
    println!(
        "  writes {} = {:.2} per volume (provisioner_api_writes_total +{}); reads +{}; watches +{}",
        p.requests.writes,
        p.requests.writes_per(r.volumes),
        p.requests.api_writes_metric,
        p.requests.reads,
        p.requests.watches
    );
    println!(
        "  to start: {} reads (lists), {} watches; provisioned {} (failed attempts {}, retries {})",
        p.startup.reads, p.startup.watches, p.settled.provisioned, p.settled.provision_failed, p.settled.retries
    );
    println!();
    println!("Engine process");
    println!(
        "  peak RSS (VmHWM) {}; RSS at ready {}; synced {} after start",
        mib(p.engine_memory.hwm_kib),
        mib(p.engine_rss_at_ready_kib),
        human_secs(p.engine_ready_after)
    );
    println!(
        "  CPU while provisioning {:.2} s ({:.2} ms per volume)",
        p.engine_cpu,
        if r.volumes > 0 { p.engine_cpu * 1000.0 / r.volumes as f64 } else { 0.0 }
    );
    if let Some(d) = &p.deletion {
        println!();
        println!("Deletion: all claims deleted in one request; the engine deletes the volumes");
        if let Some(t) = &d.timed_out {
            println!("  INCOMPLETE: {t}");
        }
        println!(
            "  {} volumes gone after {} ({:.1} volumes/s; per volume p50 {}, p99 {})",
            d.result.volumes,
            human_secs(d.result.took),
            d.result.volumes_per_sec,
            human_secs(d.result.latency.p50),
            human_secs(d.result.latency.p99)
        );
        println!(
            "  engine writes {} = {:.2} per volume (PV delete, PV finalizer removal, journal); reads +{}",
            d.requests.writes,
            d.requests.writes_per(d.result.volumes),
            d.requests.reads
        );
    }
    print_writes_by_kind(p);
    if let Some(e) = &f.memory_error {
        println!();
        println!("Memory: FAILED: {e}");
    }
    if let Some(m) = &f.memory {
        println!();
        println!("Memory: engine restarted over {} bound claims with their volumes", m.cached);
        println!(
            "  (created in {}, bound by the binder {} later)",
            human_secs(m.populate_secs),
            human_secs(m.bind_secs)
        );
        println!(
            "  baseline (before):   RSS {} (VmHWM {}), synced {} after start",
            mib(m.baseline.rss_kib),
            mib(m.baseline.hwm_kib),
            human_secs(m.baseline_ready_after)
        );
        println!(
            "  {} cached:        RSS {} (VmHWM {}), synced {} after start",
            m.cached,
            mib(m.loaded.rss_kib),
            mib(m.loaded.hwm_kib),
            human_secs(m.loaded_ready_after)
        );
        println!(
            "  per cached volume: {:.2} KiB of RSS ({:.2} KiB of VmHWM)",
            kib_per_volume(m.loaded.rss_kib, m.baseline.rss_kib, m.cached),
            kib_per_volume(m.loaded.hwm_kib, m.baseline.hwm_kib, m.cached)
        );
        println!(
            "  requests to start and settle: {} reads (list pages), {} watches, {} writes",
            m.settled.reads, m.settled.watches, m.settled.writes
        );
    }
    println!();
    println!("Targets");
    let life = lifecycle(p);
    let wpv = per(life.writes, r.volumes);
    let journal = per(life.journal_commits, r.volumes);
    let scope = if p.deletion.is_some() { "lifecycle" } else { "provisioning only, --keep" };
    println!(
        "  main-budget API writes per volume ({scope}): {wpv:.3}; without the journal's share of {journal:.3}: \
         {:.3} (target <= {MAX_WRITES_PER_VOLUME}, plus a small fraction for the journal): {}",
        wpv - journal,
        met(r.volumes > 0 && wpv - journal <= MAX_WRITES_PER_VOLUME && journal < 0.5)
    );
    if let Some(m) = &f.memory {
        let kpv = kib_per_volume(m.loaded.rss_kib, m.baseline.rss_kib, m.cached);
        println!(
            "  RSS per cached volume: {kpv:.2} KiB (target < {MAX_KIB_PER_CACHED_VOLUME} KiB): {}",
            met(kpv < MAX_KIB_PER_CACHED_VOLUME)
        );
    }
    println!("{}", figures_json(f, args, workers, plane, cores));
}

/// The engine's requests over a volume's whole life: provisioning, then deletion.
fn lifecycle(p: &ProvisioningFigures) -> RequestDelta {
    match &p.deletion {
        Some(d) => p.requests.plus(&d.requests),
        None => p.requests.clone(),
    }
}

/// Main-budget writes filed by what they are, at the client and in the
/// engine's metrics.
struct WriteBreakdown {
    pv_creates: u64,
    pv_deletes: u64,
    pv_patches: u64,
    journal_client: u64,
    journal_commits: u64,
    claim_writes: u64,
    other: u64,
    main_client: u64,
    main_metric: u64,
    event_writes: u64,
    events_normal: u64,
    events_warning: u64,
    events_dropped: u64,
    events_coalesced: u64,
}

impl WriteBreakdown {
    fn of(d: &RequestDelta) -> WriteBreakdown {
        let kinds = |pred: &dyn Fn(&str, &str) -> bool| -> u64 {
            d.write_kinds
                .iter()
                .filter(|(k, _)| k.split_once(' ').is_some_and(|(m, r)| pred(m, r)))
                .map(|(_, v)| v)
                .sum()
        };
        let pv_creates = d.kind("POST persistentvolumes");
        let pv_deletes = d.kind("DELETE persistentvolumes");
        let pv_patches = kinds(&|m, r| (m == "PATCH" || m == "PUT") && r == "persistentvolumes");
        let journal_client = kinds(&|_, r| r == "configmaps");
        let claim_writes = kinds(&|_, r| r.starts_with("persistentvolumeclaims"));
        let main_client: u64 = d.write_kinds.values().sum();
        let metric = |prefix: &str| -> u64 {
            d.event_metrics.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
        };
        WriteBreakdown {
            pv_creates,
            pv_deletes,
            pv_patches,
            journal_client,
            journal_commits: d.journal_commits,
            claim_writes,
            other: main_client - pv_creates - pv_deletes - pv_patches - journal_client - claim_writes,
            main_client,
            main_metric: d.api_writes_metric,
            event_writes: d.event_writes,
            events_normal: metric("provisioner_events_total{type=\"Normal\"}"),
            events_warning: metric("provisioner_events_total{type=\"Warning\"}"),
            events_dropped: metric("provisioner_events_dropped_total"),
            events_coalesced: metric("provisioner_events_coalesced_total"),
        }
    }

    fn json(&self, volumes: usize) -> serde_json::Value {
        let p = |c: u64| per(c, volumes);
        json!({
            "volumes": volumes,
            "main_budget": {
                "pv_creates": p(self.pv_creates),
                "pv_deletes": p(self.pv_deletes),
                "pv_patches": p(self.pv_patches),
                "journal_writes": p(self.journal_client),
                "journal_commits_metric": p(self.journal_commits),
                "claim_writes": p(self.claim_writes),
                "other": p(self.other),
                "total_client": p(self.main_client),
                "total_metric": p(self.main_metric),
            },
            "events": {
                "writes": p(self.event_writes),
                "normal": p(self.events_normal),
                "warning": p(self.events_warning),
                "dropped": p(self.events_dropped),
                "coalesced": p(self.events_coalesced),
            },
        })
    }
}

fn print_writes_by_kind(p: &ProvisioningFigures) {
    let volumes = p.result.volumes;
    let phases: Vec<(&str, RequestDelta)> = match &p.deletion {
        Some(d) => vec![("provision", p.requests.clone()), ("delete", d.requests.clone()), ("lifecycle", lifecycle(p))],
        None => vec![("provision", p.requests.clone())],
    };
    let rows: Vec<(&str, WriteBreakdown)> = phases.iter().map(|(n, d)| (*n, WriteBreakdown::of(d))).collect();
    let f = |c: u64| format!("{:>10.3}", per(c, volumes));
    let line = |label: &str, get: &dyn Fn(&WriteBreakdown) -> u64| {
        let cells: Vec<String> = rows.iter().map(|(_, b)| f(get(b))).collect();
        println!("  {label:<44}{}", cells.join(""));
    };
    println!();
    println!("Writes per volume by kind ({volumes} volumes; main client counted by kind at its transport)");
    let heads: Vec<String> = rows.iter().map(|(n, _)| format!("{n:>10}")).collect();
    println!("  {:<44}{}", "", heads.join(""));
    println!("  main budget");
    line("PV creates (POST persistentvolumes)", &|b| b.pv_creates);
    line("PV deletes (DELETE persistentvolumes)", &|b| b.pv_deletes);
    line("PV finalizer removals (PATCH/PUT PV)", &|b| b.pv_patches);
    line("journal commits (writes to its ConfigMap)", &|b| b.journal_client);
    line("  provisioner_journal_commits_total", &|b| b.journal_commits);
    line("claim writes", &|b| b.claim_writes);
    line("other", &|b| b.other);
    line("total at the client", &|b| b.main_client);
    line("  provisioner_api_writes_total", &|b| b.main_metric);
    println!("  events (their own client and lane)");
    line("event writes at the events' client", &|b| b.event_writes);
    line("  provisioner_events_total{type=\"Normal\"}", &|b| b.events_normal);
    line("  provisioner_events_total{type=\"Warning\"}", &|b| b.events_warning);
    line("  provisioner_events_dropped_total", &|b| b.events_dropped);
    line("  provisioner_events_coalesced_total", &|b| b.events_coalesced);
    if let Some((_, life)) = rows.last() {
        println!(
            "  journal commits per volume over the lifecycle: {:.3} ({} commits for {volumes} volumes)",
            per(life.journal_commits, volumes),
            life.journal_commits
        );
    }
}

fn figures_json(f: &Figures, args: &BenchArgs, workers: usize, plane: &Plane, cores: usize) -> serde_json::Value {
    let p = &f.provisioning;
    let memory = f.memory.as_ref().map(|m| {
        json!({
            "cached": m.cached,
            "baseline_rss_kib": m.baseline.rss_kib,
            "baseline_hwm_kib": m.baseline.hwm_kib,
            "rss_kib": m.loaded.rss_kib,
            "hwm_kib": m.loaded.hwm_kib,
            "rss_kib_per_volume": kib_per_volume(m.loaded.rss_kib, m.baseline.rss_kib, m.cached),
            "hwm_kib_per_volume": kib_per_volume(m.loaded.hwm_kib, m.baseline.hwm_kib, m.cached),
            "baseline_synced_secs": m.baseline_ready_after,
            "synced_secs": m.loaded_ready_after,
            "populate_secs": m.populate_secs,
            "bind_secs": m.bind_secs,
            "startup_reads": m.settled.reads,
            "startup_watches": m.settled.watches,
            "writes_after_restart": m.settled.writes,
        })
    });
    let deletion = p.deletion.as_ref().map(|d| {
        json!({
            "result": d.result,
            "requests": d.requests,
            "writes_per_volume": d.requests.writes_per(d.result.volumes),
            "incomplete": d.timed_out,
        })
    });
    json!({
        "bench": "engine",
        "claims": args.claims,
        "workers": workers,
        "qps": args.qps,
        "burst": args.burst,
        "cores": cores,
        "kubernetes": plane.version,
        "provisioning": p.result,
        "incomplete": p.timed_out,
        "requests": p.requests,
        "writes_per_volume": p.requests.writes_per(p.result.volumes),
        "lifecycle_writes_by_kind": WriteBreakdown::of(&lifecycle(p)).json(p.result.volumes),
        "startup_reads": p.startup.reads,
        "startup_watches": p.startup.watches,
        "engine_hwm_kib": p.engine_memory.hwm_kib,
        "engine_rss_at_ready_kib": p.engine_rss_at_ready_kib,
        "engine_cpu_secs": p.engine_cpu,
        "plane_cpu_secs": p.plane_cpu.iter().map(|(n, s)| (n.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "bench_cpu_secs": p.bench_cpu,
        "apiserver": p.apiserver,
        "wall_secs": p.wall,
        "bottleneck": p.result.bottleneck(),
        "deletion": deletion,
        "memory": memory,
    })
}
