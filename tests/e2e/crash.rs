//! Crash safety against the real control plane. The engine runs as a child
//! process (`crash-target`, whose file backend journals every real effect)
//! and is killed with SIGKILL in the middle of a burst of claims: first
//! right after a backend volume was created and before its PersistentVolume
//! could be saved, then at random moments of the burst, and last right after
//! a backend volume was deleted and before its PersistentVolume was. While it
//! is down, some claims are deleted, taking in turn claims in each stage,
//! those caught in the window first. After the last restart every surviving
//! claim must be bound to its own volume, and the backend must hold exactly
//! their volumes, each created once and none deleted twice.
//!
//! `CRASH_CLAIMS` sets the size of the burst (default 60, at least 10).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use e2e_support::engine::provisioner_name;
use e2e_support::fixtures::{claim, claim_phase, storage_class};
use e2e_support::{TestEnv, default_timeout};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use provisioner_core::keys;
use rand::seq::SliceRandom;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How many times the engine is killed while provisioning the burst.
const PROVISIONING_KILLS: usize = 3;
/// How long `provision` takes after creating the volume file, and `delete`
/// after removing it: the windows the kills aim at.
const BACKEND_DELAY_MS: u64 = 400;
/// How often another process's journal is read while waiting for it to grow.
const JOURNAL_POLL: Duration = Duration::from_millis(10);

/// The engine in a child process, with its backend directory.
struct Target {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Target {
    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log(self.starts)).expect("engine log file");
        let child = Command::new(env!("CARGO_BIN_EXE_crash-target"))
            .arg("--name")
            .arg(&self.name)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--provision-delay-ms")
            .arg(BACKEND_DELAY_MS.to_string())
            .arg("--delete-delay-ms")
            .arg(BACKEND_DELAY_MS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start crash-target");
        self.child = Some(child);
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill crash-target");
        }
    }

    fn log(&self, start: usize) -> PathBuf {
        self.dir.join(format!("engine-{start}.log"))
    }

    /// Panics with the log when the engine died on its own.
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = std::fs::read_to_string(self.log(self.starts)).unwrap_or_default();
            panic!("crash-target exited by itself ({status}); its log:\n{log}");
        }
    }

    /// Waits until the backend's files show `what`, reading them every
    /// [`JOURNAL_POLL`] (they belong to another process: there is nothing to watch).
    async fn wait_for_backend(&mut self, what: &str, cond: impl Fn(&Backend) -> bool) {
        let deadline = Instant::now() + default_timeout();
        loop {
            if cond(&Backend::read(&self.dir)) {
                return;
            }
            self.assert_running();
            assert!(Instant::now() < deadline, "the backend never showed {what}: {:?}", Backend::read(&self.dir));
            tokio::time::sleep(JOURNAL_POLL).await;
        }
    }
}

/// What the backend's files say.
#[derive(Debug, Default)]
struct Backend {
    /// `created` lines per volume name.
    created: BTreeMap<String, usize>,
    /// `deleted` lines per volume name.
    deleted: BTreeMap<String, usize>,
    /// Volume files that exist.
    volumes: BTreeSet<String>,
    /// Every call, as `provision <pv> <pid>` or `delete <pv> <pid>`, in order.
    calls: Vec<String>,
}

impl Backend {
    fn read(dir: &Path) -> Backend {
        let mut b = Backend::default();
        let text = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        for line in text("journal").lines() {
            match line.split_once(' ') {
                Some(("created", pv)) => *b.created.entry(pv.to_string()).or_default() += 1,
                Some(("deleted", pv)) => *b.deleted.entry(pv.to_string()).or_default() += 1,
                _ => panic!("unexpected journal line {line:?}"),
            }
        }
        b.calls = text("calls").lines().map(str::to_string).collect();
        if let Ok(entries) = std::fs::read_dir(dir.join("volumes")) {
            b.volumes = entries.map(|e| e.expect("volume entry").file_name().to_string_lossy().into_owned()).collect();
        }
        b
    }

    fn created_total(&self) -> usize {
        self.created.values().sum()
    }

    fn deleted_total(&self) -> usize {
        self.deleted.values().sum()
    }

    fn calls_of(&self, kind: &str) -> usize {
        self.calls.iter().filter(|c| c.split_once(' ').is_some_and(|(k, _)| k == kind)).count()
    }

    /// Calls that repeat an earlier call of the same engine process, as
    /// (run, call); runs end at the given positions in `calls`.
    fn repeats_within_runs(&self, run_ends: &[usize]) -> Vec<(usize, &str)> {
        let mut repeats = Vec::new();
        let mut start = 0;
        for (run, end) in run_ends.iter().copied().chain([self.calls.len()]).enumerate() {
            let mut seen = BTreeSet::new();
            repeats.extend(self.calls[start..end].iter().filter(|c| !seen.insert(*c)).map(|c| (run + 1, c.as_str())));
            start = end;
        }
        repeats
    }
}

/// When the engine is killed.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// Once the journal shows this many created backend volumes.
    Created(usize),
    /// Right after the next deletion of a backend volume (its PV still exists).
    NextDeletion,
}

/// Where a claim stood when the engine died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// A backend volume exists and no PV records it: the window that leaks in the Go library.
    BackendWithoutVolume,
    /// The journal records the intent; the backend was not reached yet.
    IntentOnly,
    /// The PV is saved.
    VolumeSaved,
    /// Nothing was done yet.
    Untouched,
}

fn pv_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.uid().expect("claim uid"))
}

fn stage(
    c: &PersistentVolumeClaim,
    volumes: &BTreeSet<String>,
    backend: &Backend,
    journaled: &BTreeSet<String>,
) -> Stage {
    let pv = pv_name(c);
    if volumes.contains(&pv) {
        Stage::VolumeSaved
    } else if backend.volumes.contains(&pv) {
        Stage::BackendWithoutVolume
    } else if journaled.contains(&pv) {
        Stage::IntentOnly
    } else {
        Stage::Untouched
    }
}

/// The names of this test's PVs: those bound to its claims, or made by its engine.
async fn volumes_of(env: &TestEnv, name: &str) -> Vec<PersistentVolume> {
    let all = env.cluster_api::<PersistentVolume>().list(&ListParams::default()).await.expect("list volumes");
    all.items
        .into_iter()
        .filter(|v| {
            let ns = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.namespace.as_deref());
            ns == Some(env.namespace.as_str())
                || v.annotations().get(keys::PROVISIONED_BY).map(String::as_str) == Some(name)
        })
        .collect()
}

/// A claim deleted while the engine was down.
#[derive(Debug)]
struct Victim {
    claim: String,
    pv: String,
    stage: Stage,
}

/// Chooses `count` of `claims` to delete, taking one of each stage in turn,
/// the hard case (a backend volume without a PV) first.
fn choose_victims(
    claims: &[PersistentVolumeClaim],
    count: usize,
    stage_of: impl Fn(&PersistentVolumeClaim) -> Stage,
) -> Vec<Victim> {
    let mut rng = rand::rng();
    let mut pools: BTreeMap<Stage, Vec<&PersistentVolumeClaim>> = BTreeMap::new();
    for c in claims {
        pools.entry(stage_of(c)).or_default().push(c);
    }
    pools.values_mut().for_each(|p| p.shuffle(&mut rng));
    let mut victims = Vec::new();
    while victims.len() < count && pools.values().any(|p| !p.is_empty()) {
        for (stage, pool) in &mut pools {
            if victims.len() < count
                && let Some(c) = pool.pop()
            {
                victims.push(Victim { claim: c.name_any(), pv: pv_name(c), stage: *stage });
            }
        }
    }
    victims
}

/// The backend directory; kept when the test fails, for its journal and engine logs.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("crash: keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn kill_9_during_a_burst_leaves_no_leak_and_no_duplicate() {
    let claims_total: usize = std::env::var("CRASH_CLAIMS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    assert!(claims_total >= 10, "CRASH_CLAIMS must be at least 10");
    let to_delete_total = claims_total / 6;

    let env = TestEnv::new("crash-kill-9").await;
    let name = provisioner_name(&env);
    let class = env.name("crash");
    env.create(&env.cluster_api(), storage_class(&class, &name)).await;
    let dir = TempDir(std::env::temp_dir().join(format!("provisioner-rs-crash-{}", env.id)));
    std::fs::create_dir_all(&dir.0).expect("backend dir");
    let mut target = Target { name: name.clone(), dir: dir.0.clone(), child: None, starts: 0 };
    target.start();

    let claims = env.api::<PersistentVolumeClaim>();
    let names: Vec<String> = (0..claims_total).map(|i| format!("c-{i:03}")).collect();
    futures::future::join_all(names.iter().map(|n| env.create(&claims, claim(n, &class, "1Gi")))).await;

    // Kill points: rising numbers of created volumes, at random within bands
    // that stay below what the surviving claims alone will create, then the
    // first deletion after a restart.
    let mut plan: Vec<KillPoint> = Vec::new();
    let band = claims_total * 15 / 100;
    for i in 0..PROVISIONING_KILLS {
        let low = claims_total * (10 + 25 * i) / 100;
        let previous = match plan.last() {
            Some(KillPoint::Created(n)) => *n,
            _ => 0,
        };
        plan.push(KillPoint::Created((low + rand::random_range(0..=band)).max(previous + 1)));
    }
    plan.push(KillPoint::NextDeletion);

    let mut deleted: Vec<Victim> = Vec::new();
    let mut run_ends = Vec::new();
    let mut kills = 0;
    for (i, point) in plan.iter().enumerate() {
        match *point {
            KillPoint::Created(count) => {
                target.wait_for_backend(&format!("{count} created volumes"), |b| b.created_total() >= count).await;
                // The first kill lands right after a creation, inside the
                // window; later ones at a random moment up to two delays on,
                // when some of the burst's PVs may be saved. (A random
                // moment, not a wait for some state.)
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..=2 * BACKEND_DELAY_MS))).await;
                }
            }
            KillPoint::NextDeletion => {
                let before = Backend::read(&target.dir);
                if !deleted.iter().any(|v| before.volumes.contains(&v.pv)) {
                    println!("crash: no backend volume of a deleted claim is left to delete; no kill while deleting");
                    continue;
                }
                let count = before.deleted_total() + 1;
                target.wait_for_backend("the next deletion", |b| b.deleted_total() >= count).await;
            }
        }
        target.kill().await;
        kills += 1;
        let backend = Backend::read(&target.dir);
        run_ends.push(backend.calls.len());

        // The engine is down: delete some claims.
        let volumes: BTreeSet<String> = volumes_of(&env, &name).await.iter().map(|v| v.name_any()).collect();
        let live: Vec<PersistentVolumeClaim> = claims
            .list(&ListParams::default())
            .await
            .expect("list claims")
            .items
            .into_iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .collect();
        let quota = to_delete_total * (i + 1) / plan.len() - to_delete_total * i / plan.len();
        let journaled = e2e_support::journal::entries_of(&env.client, &name).await.expect("read the journal");
        let victims = choose_victims(&live, quota, |c| stage(c, &volumes, &backend, &journaled));
        for v in &victims {
            claims.delete(&v.claim, &DeleteParams::default()).await.expect("delete claim");
        }
        println!(
            "crash: kill {kills} at {point:?}: {} created, {} deleted, {} PVs; deleted while down: {:?}",
            backend.created_total(),
            backend.deleted_total(),
            volumes.len(),
            victims.iter().map(|v| (&v.claim, v.stage)).collect::<Vec<_>>()
        );
        deleted.extend(victims);
        target.start();
    }

    // The last engine runs on: wait until it has settled everything.
    let survivors: BTreeSet<String> =
        names.iter().filter(|n| !deleted.iter().any(|v| &v.claim == *n)).cloned().collect();
    for n in &survivors {
        env.wait_for(&claims, n, "the claim to be Bound", |c| c.is_some_and(|c| claim_phase(c) == "Bound")).await;
    }
    let volumes_api = env.cluster_api::<PersistentVolume>();
    for v in &deleted {
        env.wait_for(&claims, &v.claim, "the deleted claim to be gone", |c| c.is_none()).await;
        env.wait_for(&volumes_api, &v.pv, "the volume of a deleted claim to be gone", |v| v.is_none()).await;
    }
    target.assert_running();

    // Every surviving claim: Bound, not terminating, to exactly one volume named after its uid.
    let live = claims.list(&ListParams::default()).await.expect("list claims").items;
    assert_eq!(
        live.iter().map(|c| c.name_any()).collect::<BTreeSet<_>>(),
        survivors,
        "exactly the claims not deleted remain"
    );
    let mut live_pvs = BTreeSet::new();
    let volumes = volumes_of(&env, &name).await;
    for c in &live {
        assert!(c.metadata.deletion_timestamp.is_none(), "claim {} is stuck terminating", c.name_any());
        assert_eq!(claim_phase(c), "Bound", "claim {}", c.name_any());
        let expected_pv = pv_name(c);
        assert_eq!(c.spec.as_ref().and_then(|s| s.volume_name.as_deref()), Some(expected_pv.as_str()));
        let bound_to_it: Vec<String> = volumes
            .iter()
            .filter(|v| {
                v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.as_deref()) == c.uid().as_deref()
            })
            .map(|v| v.name_any())
            .collect();
        assert_eq!(bound_to_it, vec![expected_pv.clone()], "claim {} has exactly one volume", c.name_any());
        live_pvs.insert(expected_pv);
    }

    // The backend holds exactly the volumes of the surviving claims, and the
    // journal shows each created once and deleted at most once.
    let backend = Backend::read(&target.dir);
    let pv_names: BTreeSet<String> = volumes.iter().map(|v| v.name_any()).collect();
    assert_eq!(pv_names, live_pvs, "no PV without a live claim");
    assert_eq!(backend.volumes, live_pvs, "no backend volume without a PV, no PV without a backend volume");
    for (pv, n) in &backend.created {
        assert_eq!(*n, 1, "backend volume {pv} created {n} times");
    }
    for (pv, n) in &backend.deleted {
        assert_eq!(*n, 1, "backend volume {pv} deleted {n} times");
        assert!(backend.created.contains_key(pv), "{pv} deleted but never created");
    }
    for pv in &live_pvs {
        assert!(backend.created.contains_key(pv), "{pv} has a PV but was never created");
        assert!(!backend.deleted.contains_key(pv), "{pv} is in use but was deleted");
    }
    let journaled: BTreeSet<String> =
        backend.created.keys().filter(|pv| !backend.deleted.contains_key(*pv)).cloned().collect();
    assert_eq!(journaled, backend.volumes, "the journal agrees with the volume files");
    let mut by_stage: BTreeMap<Stage, usize> = BTreeMap::new();
    for v in &deleted {
        *by_stage.entry(v.stage).or_default() += 1;
    }
    assert!(
        by_stage.get(&Stage::BackendWithoutVolume).is_some_and(|n| *n > 0),
        "no claim was deleted while its backend volume had no PV: the kills missed the window ({by_stage:?})"
    );
    let stage_count = |s: Stage| by_stage.get(&s).copied().unwrap_or(0);
    println!(
        "crash: claims={claims_total} killed={kills} deleted_while_down={} (backend_without_pv={} intent_only={} \
         pv_saved={} untouched={}) created={} deleted={} provision_calls={} delete_calls={} \
         repeated_calls_within_a_run={}",
        deleted.len(),
        stage_count(Stage::BackendWithoutVolume),
        stage_count(Stage::IntentOnly),
        stage_count(Stage::VolumeSaved),
        stage_count(Stage::Untouched),
        backend.created_total(),
        backend.deleted_total(),
        backend.calls_of("provision"),
        backend.calls_of("delete"),
        backend.repeats_within_runs(&run_ends).len(),
    );
    // Repeats across a kill are the price of crash safety. Within one run
    // the engine knows what it did: a repeat means it acted on a stale cache
    // (this plane's API server is healthy, so no call fails and is retried).
    let repeats = backend.repeats_within_runs(&run_ends);
    assert!(repeats.is_empty(), "backend calls repeated within one run of the engine (run, call): {repeats:?}");

    target.kill().await;
    env.cleanup().await;
}
