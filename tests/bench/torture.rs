//! `torture`: our engine under abuse, at a size CI can afford.
//!
//! Two replicas of `crash-target` (the engine with a journaled file backend,
//! see `tests/bin/crash_target.rs`) share one backend directory and elect a
//! leader. In each burst the harness creates claims and deletes a random part
//! of the live ones, all at once, and at a random moment of the burst does one
//! of, in turn: SIGKILL a replica (then restart it), SIGKILL the API server
//! (then start it again with the same command line; needs the plane's state
//! directory, `--plane-dir`), SIGINT the leader (a graceful failover, then
//! restart it), make the leader abort inside a provision call right after
//! its intent journal commit (before the backend) or right after the backend
//! volume exists (before its PV; both through trigger files crash-target
//! takes), delete the intent journal by hand, or empty it by hand (with an
//! operator's note left in it). The first kind is chosen at random, so that
//! runs with fewer bursts than kinds cover every kind between them. After the last burst it waits for the cluster to settle and
//! prints the counts: live claims bound to exactly one volume, volumes
//! without a claim, backend volumes without a PV, PVs without a backend
//! volume, and per-volume duplicates of backend effects (created or deleted
//! twice) and of calls (provision or delete called more than once). It exits
//! non-zero when any invariant fails.
//!
//! ```text
//! eval "$(CONTROLPLANE_STATE_DIR=/tmp/torture-plane tests/controlplane/up)"
//! cargo build -p provisioner-e2e --bin torture --bin crash-target
//! target/debug/torture --plane-dir /tmp/torture-plane
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use e2e_support::fixtures;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::process::{Child, Command};

/// The kinds of abuse a burst gets, in turn: SIGKILL a replica, restart the
/// API server, SIGINT a replica, abort the leader after its journal commit,
/// abort it after the backend call, delete the journal, empty the journal.
const CHAOS_KINDS: usize = 7;

#[derive(Parser)]
struct Args {
    /// Bursts.
    #[arg(long, default_value_t = 6)]
    bursts: usize,
    /// Claims created per burst.
    #[arg(long, default_value_t = 30)]
    claims: usize,
    /// Share of the live claims deleted in each burst.
    #[arg(long, default_value_t = 0.3)]
    delete_share: f64,
    /// The control plane's state directory (for the API server restart);
    /// without it that step is skipped, and said so.
    #[arg(long, env = "CONTROLPLANE_STATE_DIR")]
    plane_dir: Option<PathBuf>,
    /// The engine binary (default: `crash-target` next to this one).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Backend delay in ms after a volume file is created or removed (the
    /// windows a kill can hit).
    #[arg(long, default_value_t = 100)]
    backend_delay_ms: u64,
    /// Seconds to wait for the cluster to settle at the end. After an API
    /// server restart kube-controller-manager may take minutes to bind and
    /// release again (its informers back off up to 30 s, its per-claim
    /// operations up to about 2 minutes), and the engine waits for it.
    #[arg(long, default_value_t = 300)]
    settle_timeout: u64,
}

struct Replica {
    id: String,
    child: Option<Child>,
    starts: usize,
}

struct Harness {
    bin: PathBuf,
    name: String,
    dir: PathBuf,
    delay: u64,
    replicas: Vec<Replica>,
    /// Engine processes killed with SIGKILL: a call they made may have
    /// been cut short, so the next leader calling again is expected.
    killed: BTreeSet<u32>,
}

impl Harness {
    fn start(&mut self, i: usize) -> std::io::Result<()> {
        let r = &mut self.replicas[i];
        r.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("{}-{}.log", r.id, r.starts)))?;
        let child = Command::new(&self.bin)
            .args(["--name", &self.name, "--dir"])
            .arg(&self.dir)
            .args(["--provision-delay-ms", &self.delay.to_string(), "--delete-delay-ms", &self.delay.to_string()])
            .args(["--leader-elect", "--identity", &r.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        r.child = Some(child);
        Ok(())
    }
    async fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            if let Some(pid) = c.id() {
                self.killed.insert(pid);
            }
            let _ = c.kill().await;
        }
    }
    /// Waits up to `timeout` for a replica to die on its own (a trigger
    /// file made it abort), counts it as killed and restarts it.
    async fn restart_the_aborted(&mut self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for i in 0..self.replicas.len() {
                let Some(c) = self.replicas[i].child.as_mut() else { continue };
                let pid = c.id();
                if matches!(c.try_wait(), Ok(Some(_))) {
                    if let Some(pid) = pid {
                        self.killed.insert(pid);
                    }
                    self.replicas[i].child = None;
                    let _ = self.start(i);
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn sigint(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
            }
            if tokio::time::timeout(Duration::from_secs(20), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

/// Kills the plane's kube-apiserver (by its recorded pid, if that pid is
/// still kube-apiserver) and starts it again with the same command line.
async fn restart_apiserver(plane: &Path, client: &Client) -> Result<Duration, String> {
    let pidfile = plane.join("kube-apiserver.pid");
    let pid: u32 =
        std::fs::read_to_string(&pidfile).map_err(|e| e.to_string())?.trim().parse().map_err(|_| "bad pid")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
    let argv: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    if !argv.first().is_some_and(|a| a.ends_with("kube-apiserver")) {
        return Err(format!("pid {pid} is not kube-apiserver"));
    }
    let t = Instant::now();
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    // Gone, or a zombie: after an earlier restart the server is our own
    // child, which nobody waits for, so it stays a zombie; look at its state.
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("X");
        if stat.is_empty() || state == "Z" || state == "X" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A multi-threaded process shows as a zombie before its last thread has
    // closed the listener: wait until the port is free.
    let port: u16 = std::fs::read_to_string(plane.join("apiserver.port"))
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "bad port")?;
    let free_by = Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < free_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(plane.join("logs/kube-apiserver.log"))
        .map_err(|e| e.to_string())?;
    let child = std::process::Command::new("setsid")
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    // setsid execs the server in place, so the child's pid is the server's.
    std::fs::write(&pidfile, format!("{}\n", child.id())).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if client.apiserver_version().await.is_ok() {
            let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
            if pvcs.list_metadata(&ListParams::default().limit(1)).await.is_ok() {
                return Ok(t.elapsed());
            }
        }
        if Instant::now() > deadline {
            return Err("the API server did not come back in 90 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Default)]
struct Backend {
    created: BTreeMap<String, usize>,
    deleted: BTreeMap<String, usize>,
    /// Per volume, the process ids of the engines that called, in order.
    provision_calls: BTreeMap<String, Vec<u32>>,
    delete_calls: BTreeMap<String, Vec<u32>>,
    /// Engine processes that aborted on a trigger file (as if SIGKILLed).
    aborted: BTreeSet<u32>,
    volumes: BTreeSet<String>,
}

/// Volumes with a repeated call, split into repeats after the previous
/// caller was SIGKILLed (its call may have been cut short: calling again is
/// how the work gets finished) and all other repeats (duplicates).
fn repeats(calls: &BTreeMap<String, Vec<u32>>, killed: &BTreeSet<u32>) -> (usize, Vec<String>) {
    let mut after_kill = 0;
    let mut duplicates = Vec::new();
    for (pv, pids) in calls.iter().filter(|(_, p)| p.len() > 1) {
        if pids.windows(2).all(|w| killed.contains(&w[0]) && w[0] != w[1]) {
            after_kill += 1;
        } else {
            duplicates.push(format!("{pv} by {pids:?}"));
        }
    }
    (after_kill, duplicates)
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn read_backend(dir: &Path) -> Backend {
    let mut b = Backend::default();
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    for line in text("journal").lines() {
        match line.split_once(' ') {
            Some(("created", pv)) => *b.created.entry(pv.into()).or_default() += 1,
            Some(("deleted", pv)) => *b.deleted.entry(pv.into()).or_default() += 1,
            _ => {}
        }
    }
    for line in text("calls").lines() {
        let mut words = line.split(' ');
        let (kind, pv, pid) = (words.next(), words.next(), words.next().and_then(|p| p.parse().ok()));
        match (kind, pv, pid) {
            (Some("provision"), Some(pv), Some(pid)) => b.provision_calls.entry(pv.into()).or_default().push(pid),
            (Some("delete"), Some(pv), Some(pid)) => b.delete_calls.entry(pv.into()).or_default().push(pid),
            (Some("abort"), Some(_), Some(pid)) => {
                b.aborted.insert(pid);
            }
            _ => eprintln!("torture: unexpected call line {line:?}"),
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("volumes")) {
        b.volumes = rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    }
    b
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::try_default().await?;
    let run = format!("t{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 100_000);
    let name = format!("torture.test/{run}");
    let class = format!("torture-{run}");
    let dir = std::env::temp_dir().join(format!("torture-{run}"));
    std::fs::create_dir_all(&dir)?;
    let bin = match args.target.clone() {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("crash-target"),
    };
    let classes: Api<StorageClass> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    classes.create(&PostParams::default(), &fixtures::storage_class(&class, &name)).await?;
    let mut h = Harness {
        bin,
        name: name.clone(),
        dir: dir.clone(),
        delay: args.backend_delay_ms,
        replicas: vec![
            Replica { id: format!("{run}-a"), child: None, starts: 0 },
            Replica { id: format!("{run}-b"), child: None, starts: 0 },
        ],
        killed: BTreeSet::new(),
    };
    h.start(0)?;
    h.start(1)?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut live: Vec<String> = Vec::new();
    let mut deleted_total = 0usize;
    let mut actions: Vec<String> = Vec::new();
    // A random first kind, so that runs of fewer bursts than kinds cover them all between them.
    let mut next = rand::rng().random_range(0..CHAOS_KINDS);
    let label = BTreeMap::from([("torture-run".to_string(), run.clone())]);
    for burst in 0..args.bursts {
        if let Some(i) = h.restart_the_aborted(Duration::ZERO).await {
            actions.push(format!("burst {burst}: replica {i} had died; restarted"));
        }
        let new: Vec<String> = (0..args.claims).map(|i| format!("{run}-{burst}-{i:03}")).collect();
        let mut rng = rand::rng();
        live.shuffle(&mut rng);
        let n_del = ((live.len() as f64) * args.delete_share) as usize;
        let doomed: Vec<String> = live.drain(..n_del).collect();
        deleted_total += doomed.len();
        let at = Duration::from_millis(rng.random_range(0..1500));
        let creates = futures::stream::iter(new.clone())
            .map(|n| {
                let claims = claims.clone();
                let mut c = fixtures::claim(&n, &class, "1Mi");
                c.metadata.labels = Some(label.clone());
                async move {
                    // Retried: the API server may be down for a while.
                    for _ in 0..600 {
                        match claims.create(&PostParams::default(), &c).await {
                            Ok(_) => return,
                            Err(kube::Error::Api(e)) if e.code == 409 => return,
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                    eprintln!("torture: could not create {}", c.name_any());
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>();
        let deletes = futures::stream::iter(doomed.clone())
            .map(|n| {
                let claims = claims.clone();
                async move {
                    for _ in 0..600 {
                        match claims.delete(&n, &DeleteParams::default()).await {
                            Ok(_) => return,
                            Err(kube::Error::Api(e)) if e.code == 404 => return,
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                    eprintln!("torture: could not delete {n}");
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>();
        let kind = next % CHAOS_KINDS;
        next += 1;
        let journals: Api<ConfigMap> = Api::default_namespaced(client.clone());
        let journal_name = provisioner_core::journal::name_for(&name, None);
        let chaos = async {
            // An abort trigger is set before the burst's claims arrive, so
            // that one of their provision calls takes it.
            if kind != 3 && kind != 4 {
                tokio::time::sleep(at).await;
            }
            let victim = rand::rng().random_range(0..2);
            match kind {
                0 => {
                    h.kill9(victim).await;
                    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..1000))).await;
                    h.start(victim)
                        .map(|_| format!("burst {burst}: SIGKILL replica {victim} at {at:?}, restarted"))
                        .unwrap_or_else(|e| format!("burst {burst}: restart failed: {e}"))
                }
                1 => match &args.plane_dir {
                    Some(plane) => match restart_apiserver(plane, &client).await {
                        Ok(d) => format!("burst {burst}: SIGKILL kube-apiserver at {at:?}, back after {d:.1?}"),
                        Err(e) => format!("burst {burst}: API server restart FAILED: {e}"),
                    },
                    None => format!("burst {burst}: API server restart skipped (no --plane-dir)"),
                },
                2 => {
                    h.sigint(victim).await;
                    h.start(victim)
                        .map(|_| format!("burst {burst}: SIGINT replica {victim} (graceful) at {at:?}, restarted"))
                        .unwrap_or_else(|e| format!("burst {burst}: restart failed: {e}"))
                }
                3 | 4 => {
                    // The leader dies inside a provision call: after its
                    // journal commit and before the backend, or after the
                    // backend and before the PV.
                    let trigger = if kind == 3 { "abort-before-backend" } else { "abort-after-backend" };
                    let _ = std::fs::write(dir.join(trigger), b"");
                    match h.restart_the_aborted(Duration::from_secs(15)).await {
                        Some(i) => format!("burst {burst}: replica {i} aborted at {trigger}, restarted"),
                        None => {
                            let _ = std::fs::remove_file(dir.join(trigger));
                            format!("burst {burst}: no provision call took {trigger} (no abort)")
                        }
                    }
                }
                5 => match journals.delete(&journal_name, &DeleteParams::default()).await {
                    Ok(_) => format!("burst {burst}: journal deleted by hand at {at:?}"),
                    Err(e) => format!("burst {burst}: deleting the journal: {e}"),
                },
                _ => {
                    // An operator empties the journal and leaves a note.
                    let patch = match journals.get(&journal_name).await {
                        Ok(cm) => {
                            let mut data: BTreeMap<String, Option<String>> =
                                cm.data.unwrap_or_default().into_keys().map(|k| (k, None)).collect();
                            data.insert("operator-note".into(), Some("emptied by hand".into()));
                            serde_json::json!({ "data": data })
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => {
                            return format!(
                                "burst {burst}: no journal to empty (nothing in flight since it was deleted)"
                            );
                        }
                        Err(e) => return format!("burst {burst}: reading the journal: {e}"),
                    };
                    match journals.patch(&journal_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => format!("burst {burst}: journal emptied by hand at {at:?}"),
                        Err(e) => format!("burst {burst}: editing the journal: {e}"),
                    }
                }
            }
        };
        let (_, _, what) = tokio::join!(creates, deletes, chaos);
        eprintln!("torture: {what}");
        actions.push(what);
        live.extend(new);
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..1500))).await;
    }
    // Last: SIGKILL whichever holds the lease is unknown to us; kill replica 0 and restart it.
    h.kill9(0).await;
    h.start(0)?;
    actions.push("end: SIGKILL replica 0, restarted".into());

    // Settle: every live claim Bound, no volume of the class without a live claim.
    let live_set: BTreeSet<String> = live.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(args.settle_timeout);
    let t_settle = Instant::now();
    let (claim_list, pv_list) = loop {
        let lp = ListParams::default().labels(&format!("torture-run={run}"));
        let cl = claims.list(&lp).await;
        let pl = pvs.list(&ListParams::default()).await;
        if let (Ok(cl), Ok(pl)) = (cl, pl) {
            let ours: Vec<PersistentVolume> = pl
                .items
                .into_iter()
                .filter(|v| v.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()) == Some(class.as_str()))
                .collect();
            let all_bound =
                cl.items.len() == live_set.len() && cl.items.iter().all(|c| fixtures::claim_phase(c) == "Bound");
            if (all_bound && ours.len() == live_set.len()) || Instant::now() > deadline {
                break (cl.items, ours);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let settle = t_settle.elapsed();
    // Every entry of the intent journal has done its job by now (each live
    // claim has its PV): they leave within the linger (10 s) of the last one.
    let mut journal_left = BTreeSet::new();
    for _ in 0..60 {
        journal_left = e2e_support::journal::entries_of(&client, &name).await.unwrap_or_default();
        if journal_left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // let the last journal lines land
    let backend = read_backend(&dir);

    // Counts.
    let mut pv_by_claim_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let pv_names: BTreeSet<String> = pv_list.iter().map(|v| v.name_any()).collect();
    for v in &pv_list {
        if let Some(uid) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone()) {
            pv_by_claim_uid.entry(uid).or_default().push(v.name_any());
        }
    }
    let claim_uids: BTreeSet<String> = claim_list.iter().filter_map(|c| c.uid()).collect();
    let bound_exactly_one = claim_list
        .iter()
        .filter(|c| {
            let uid = c.uid().unwrap_or_default();
            let vn = c.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            fixtures::claim_phase(c) == "Bound"
                && pv_by_claim_uid.get(&uid).is_some_and(|v| v.len() == 1 && v[0] == vn)
                && backend.volumes.contains(&vn)
        })
        .count();
    let pv_without_claim =
        pv_by_claim_uid.iter().filter(|(uid, _)| !claim_uids.contains(*uid)).map(|(_, v)| v.len()).sum::<usize>();
    let backend_without_pv = backend.volumes.iter().filter(|v| !pv_names.contains(*v)).count();
    let pv_without_backend = pv_names.iter().filter(|v| !backend.volumes.contains(*v)).count();
    let dup_created = backend.created.values().filter(|n| **n > 1).count();
    let dup_deleted = backend.deleted.values().filter(|n| **n > 1).count();
    h.killed.extend(backend.aborted.iter().copied());
    let (prov_after_kill, prov_dups) = repeats(&backend.provision_calls, &h.killed);
    let (del_after_kill, del_dups) = repeats(&backend.delete_calls, &h.killed);
    let starts: Vec<usize> = h.replicas.iter().map(|r| r.starts).collect();

    println!(
        "torture run {run}: {} bursts of {} creates, {} claims deleted in all",
        args.bursts, args.claims, deleted_total
    );
    for a in &actions {
        println!("  {a}");
    }
    println!("  replica starts: {starts:?}; settled in {settle:.1?}");
    println!("live claims:                        {}", live_set.len());
    println!("  bound to exactly one volume:      {bound_exactly_one}");
    println!("volumes (PVs) of the class:         {}", pv_list.len());
    println!("  PVs whose claim is gone:          {pv_without_claim}");
    println!("  PVs without a backend volume:     {pv_without_backend}");
    println!("backend volumes:                    {}", backend.volumes.len());
    println!("  backend volumes without a PV:     {backend_without_pv}");
    println!("backend effects: {} created, {} deleted", backend.created.len(), backend.deleted.len());
    println!("  volumes created more than once:   {dup_created}");
    println!("  volumes deleted more than once:   {dup_deleted}");
    println!(
        "backend calls: {} provision, {} delete",
        backend.provision_calls.values().map(Vec::len).sum::<usize>(),
        backend.delete_calls.values().map(Vec::len).sum::<usize>()
    );
    println!("  provision repeated after a kill:  {prov_after_kill}");
    println!("  provision repeated otherwise:     {}", prov_dups.len());
    println!("  delete repeated after a kill:     {del_after_kill}");
    println!("  delete repeated otherwise:        {}", del_dups.len());
    println!("intent journal entries left:        {}", journal_left.len());
    println!("backend directory: {}", dir.display());

    let ok = bound_exactly_one == live_set.len()
        && pv_without_claim == 0
        && backend_without_pv == 0
        && pv_without_backend == 0
        && dup_created == 0
        && dup_deleted == 0
        && prov_dups.is_empty()
        && del_dups.is_empty()
        && journal_left.is_empty();
    if !ok {
        // What was left, for whoever reads a failed run (CI keeps only the output).
        for d in prov_dups.iter().take(3) {
            println!("  duplicate provision calls: {d}");
        }
        for d in del_dups.iter().take(3) {
            println!("  duplicate delete calls: {d}");
        }
        let stuck = pv_list.iter().filter(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.as_ref())
                .is_none_or(|u| !claim_uids.contains(u))
        });
        for v in stuck.take(3) {
            println!(
                "  PV without claim: {} phase={} deleting={} finalizers={:?}",
                v.name_any(),
                v.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default(),
                v.metadata.deletion_timestamp.is_some(),
                v.finalizers()
            );
        }
        for c in claim_list.iter().filter(|c| fixtures::claim_phase(c) != "Bound").take(3) {
            println!(
                "  claim not bound: {} annotations={:?}",
                c.name_any(),
                c.annotations().keys().collect::<Vec<_>>()
            );
        }
        let leases: Api<Lease> = Api::default_namespaced(client.clone());
        let holder = leases
            .get(&provisioner_core::leader::lease_name_for(&name))
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity);
        println!("  lease holder: {holder:?}");
        for r in &h.replicas {
            let log = std::fs::read_to_string(dir.join(format!("{}-{}.log", r.id, r.starts))).unwrap_or_default();
            let warnings: Vec<String> =
                log.lines().map(strip_ansi).filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            for w in warnings.iter().rev().take(3).rev() {
                println!("  {} (start {}): {}", r.id, r.starts, w.chars().take(220).collect::<String>());
            }
        }
    }
    // Clean up only on success (on failure leave everything for inspection):
    // delete the claims and let the replicas delete the volumes before they stop.
    if ok {
        let _ = claims
            .delete_collection(&DeleteParams::default(), &ListParams::default().labels(&format!("torture-run={run}")))
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = pvs
                .list_metadata(&ListParams::default())
                .await
                .map(|l| l.items.iter().filter(|v| pv_names.contains(&v.name_any())).count());
            if matches!(left, Ok(0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = classes.delete(&class, &DeleteParams::default()).await;
    }
    for i in 0..h.replicas.len() {
        h.sigint(i).await;
    }
    println!("{}", if ok { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}
