//! One RolloutRun, driven by the leader with the same executor, steps and
//! gates as `rollwright run`.
//!
//! Before anything runs the plan is checked again, as if it were a file
//! given to `run`: its digest against its spec, then lint's checks on the
//! expanded spec and its rendered manifests (`Linter::prepare_planned`),
//! the policy for the cluster the controller reaches, the policy's minimum
//! gate and the gate guards (`runnable::build`). A RolloutRun runs only in
//! its target namespace: the right to create one there is the right to
//! deploy there.
//!
//! The journal is kept in the cluster ([`super::store`]); every record a
//! step needs durable before it changes anything is there before the
//! change. A leader that takes over reads it, proves its integrity chain
//! with the controllers' shared key, and resumes exactly as `rollwright
//! resume` does: no completed step runs again.

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Seek as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource as _, ResourceExt as _};
use rollwright_engine::exec::{self, BoxFuture, Event, Options, Resume, Sink};
use rollwright_engine::journal::{self, GroupCommit, Journal};
use rollwright_engine::spec::Spec;
use tokio::sync::watch;

use super::Ctl;
use super::status::{self, Book, Said, TERMINAL, WriteError};
use super::store::{ClusterJournal, PushError};
use crate::rolloutrun::{Holder, Intent, RolloutRun};
use crate::run_cmd::{self, Effective, Header};

/// A checked plan, ready to build.
struct Prepared {
    spec: Spec,
    eff: Effective,
}

/// The checks `run` makes on a spec file, made on the RolloutRun's plan.
fn prepare(ctl: &Ctl, rr: &RolloutRun) -> Result<Prepared, String> {
    let plan = &rr.spec.plan;
    let ns = rr.namespace().unwrap_or_default();
    let name = rr.name_any();
    if rollwright_engine::digest::canonical(&plan.spec) != plan.digest {
        return Err(format!(
            "the plan's digest ({}) is not its spec's: make RolloutRuns with `rollwright submit` or `rollwright plan --format rolloutrun`",
            plan.digest
        ));
    }
    if plan.submitter.is_empty() {
        return Err("spec.plan.submitter is empty: the admission policy of `rollwright schema --crd` sets who may create the run".into());
    }
    let manifests: Vec<(String, String, String)> = plan
        .manifests
        .iter()
        .map(|m| (m.step.clone(), m.template.clone(), m.text.clone()))
        .collect();
    let label = PathBuf::from(format!("rolloutrun/{ns}/{name}"));
    let (exp, spec, _) = ctl
        .linter
        .prepare_planned(&label, &plan.spec, &manifests)
        .map_err(|diags| {
            let all: Vec<String> = diags
                .iter()
                .filter(|d| d.severity == rollwright_engine::Severity::Error)
                .map(|d| format!("[{}] {}", d.code.as_str(), d.message))
                .collect();
            format!("the plan has errors: {}", all.join("; "))
        })?;
    if spec.metadata.name != plan.name {
        return Err(format!(
            "spec.plan.name is `{}` but the plan's Rollout is `{}`",
            plan.name, spec.metadata.name
        ));
    }
    if let Some(m) = &plan.model
        && spec
            .model
            .as_ref()
            .is_none_or(|sm| sm.name != m.name || sm.version != m.version || sm.registry != m.registry)
    {
        return Err("spec.plan.model is not the plan's model".into());
    }
    let Some(target) = &spec.target else {
        return Err("the plan has no `target`".into());
    };
    if target.namespace != ns {
        return Err(format!(
            "a RolloutRun runs in its target namespace: this plan deploys to `{}`, the RolloutRun is in `{ns}`",
            target.namespace
        ));
    }
    let eff = run_cmd::decide(&ctl.linter, &exp, &spec, &ctl.reach, None).map_err(|u| u.message())?;
    Ok(Prepared { spec, eff })
}

/// Copies the local journal's new lines into the cluster.
struct Mirror {
    journal: tokio::sync::Mutex<ClusterJournal>,
    path: PathBuf,
    pushed: AtomicU64,
    ctl: Arc<Ctl>,
}

impl Mirror {
    async fn push(&self) -> Result<(), PushError> {
        let mut j = self.journal.lock().await;
        if !self.ctl.leadership.valid() {
            return Err(PushError::NotLeading);
        }
        let from = self.pushed.load(Ordering::SeqCst);
        if std::fs::metadata(&self.path).map_err(PushError::Local)?.len() <= from {
            return Ok(());
        }
        let mut f = std::fs::File::open(&self.path).map_err(PushError::Local)?;
        f.seek(std::io::SeekFrom::Start(from)).map_err(PushError::Local)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(PushError::Local)?;
        // Whole lines only: the writer may be in the middle of one.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&bytes[..=end]).into_owned();
        j.append(&text).await?;
        self.pushed.fetch_add(end as u64 + 1, Ordering::SeqCst);
        Ok(())
    }
}

/// Drives `rr` to its end (or until this replica is deposed).
pub async fn drive(ctl: Arc<Ctl>, rr: Arc<RolloutRun>, intent: watch::Receiver<Intent>) {
    let Ok(getting_ready) = ctl.starting.acquire().await else {
        return;
    };
    let name = rr.name_any();
    let ns = rr.namespace().unwrap_or_default();
    let api: Api<RolloutRun> = Api::namespaced(ctl.client.clone(), &ns);
    let epoch = ctl.epoch();
    let holder = Holder {
        identity: ctl.identity.clone(),
        epoch,
    };
    let reference = rr.object_ref(&());
    let mut version = rr.resource_version().unwrap_or_default();
    let said = {
        let (ctl, reference) = (ctl.clone(), reference.clone());
        move |s: Said| {
            let ctl = ctl.clone();
            let reference = reference.clone();
            async move { ctl.publish(&s, &reference).await }
        }
    };
    let first_version = version.clone();
    // Refused (`Refused`: nothing was changed), or stopped for a person
    // to look at (`Stopped`: a run that had started, whose journal cannot
    // be trusted).
    let halt = |phase: &'static str, why: String| {
        let api = api.clone();
        let name = name.clone();
        let holder = holder.clone();
        let ctl = ctl.clone();
        let generation = rr.metadata.generation;
        let mut version = first_version.clone();
        let said = said.clone();
        let ns = ns.clone();
        async move {
            tracing::warn!("RolloutRun {ns}/{name}: {phase}: {why}");
            let book = Book::new(&[], holder, generation);
            book.phase(phase, phase, &why);
            if let Some(st) = book.take() {
                report(
                    &ctl,
                    status::write(&api, &name, &st, epoch, &mut version, &ctl.fence()).await,
                );
            }
            ctl.metrics.phase(None, phase);
            said(Said {
                warning: true,
                reason: phase,
                note: why,
                action: "Run".into(),
            })
            .await;
        }
    };
    let refuse = |why: String| halt("Refused", why);
    let p = match prepare(&ctl, &rr) {
        Ok(p) => p,
        Err(why) => return refuse(why).await,
    };
    if let Err(e) = finalizer(&ctl, &rr, true).await {
        tracing::warn!("RolloutRun {ns}/{name}: cannot add its finalizer ({e}); trying again later");
        return;
    }
    let plan = &rr.spec.plan;
    let dir = ctl.state_dir.join("runs").join(format!("{ns}.{name}"));
    let files = ctl.files.clone().unwrap_or_else(|| dir.clone());
    let header = Header {
        run: name.clone(),
        digest: plan.digest.clone(),
        spec: files.join(format!("{name}.rolloutrun.yaml")),
        overrides: Vec::new(),
        started_by: plan.submitter.clone(),
        policy: ctl.policy.as_ref().map(|p| p.path.clone()),
        reach: ctl.reach.clone(),
        root: None,
    };
    // Every step must be buildable before the run exists.
    let cx = run_cmd::build_context(&p.spec, dir.clone(), &header, p.eff.production, &ctl.key);
    let mut runnable = match rollwright_steps::runnable::build(
        &p.spec,
        &run_cmd::registry(),
        &cx,
        p.eff.min_gate.as_ref(),
    ) {
        Ok(r) => r,
        Err(errors) => return refuse(format!("steps cannot be built: {}", errors.join("; "))).await,
    };
    // The journal: the cluster's copy is the truth, fenced with our epoch.
    let owner = OwnerReference {
        api_version: "rollwright.dev/v1alpha1".into(),
        kind: "RolloutRun".into(),
        name: name.clone(),
        uid: rr.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctl.client.clone(), &ns);
    let (cj, text) = match ClusterJournal::open(cms, &name, owner, epoch, ctl.fence()).await {
        Ok(x) => x,
        Err(PushError::Deposed(e)) => {
            return ctl.depose(format!("run {ns}/{name}: a leader of epoch {e} holds it"));
        }
        Err(e) => {
            tracing::warn!("run {ns}/{name}: {e}; trying again later");
            return;
        }
    };
    let path = dir.join("journal.jsonl");
    // A journal that had records belongs to a run that may have changed
    // the target: stopped for a person, never called refused.
    let fail = |e: String| {
        halt(
            if text.is_empty() { "Refused" } else { "Stopped" },
            format!("the run's journal: {e}"),
        )
    };
    // The local copy is the cluster's, nothing else (a file left by an
    // earlier term of this replica is replaced).
    let copied = std::fs::create_dir_all(&dir).and_then(|()| match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ if text.is_empty() => Ok(()),
        _ => std::fs::write(&path, &text),
    });
    if let Err(e) = copied {
        // This replica's scratch space, not the run: try again later.
        tracing::warn!(
            "RolloutRun {ns}/{name}: {}: {e}; trying again later",
            path.display()
        );
        return;
    }
    let policy = ctl.policy.as_ref();
    let (journal, records) = if text.is_empty() {
        match Journal::create(&path, ctl.key.clone()) {
            Ok(mut j) => match j.append(&header.record(policy)) {
                Ok(()) => (j, Vec::new()),
                Err(e) => return fail(e.to_string()).await,
            },
            Err(e) => return fail(e.to_string()).await,
        }
    } else {
        let records = match journal::read(&path, &ctl.key) {
            Ok(r) => r,
            Err(e) => {
                return fail(format!(
                    "{e} (the copy in the cluster was changed, or written with another key)"
                ))
                .await;
            }
        };
        match Header::of(&records) {
            Some(h) if h.run == name && h.digest == plan.digest => {}
            _ => return fail("it belongs to another run or plan".into()).await,
        }
        match Journal::reopen(&path, ctl.key.clone()) {
            Ok(j) => (j, records),
            Err(e) => return fail(e.to_string()).await,
        }
    };
    let state = journal::state(&records);
    let ids: Vec<String> = p.spec.steps.iter().map(|s| s.id.clone()).collect();
    let book = Arc::new(Book::new(&ids, holder.clone(), rr.metadata.generation));
    // What a previous leader finished (nothing, for a new run).
    book.done(
        &state
            .completed
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
    );
    if let Some(done) = &state.finished {
        // Ended under a previous leader, before it wrote the status.
        let phase = match done.as_str() {
            "succeeded" => "Succeeded",
            "rolled-back" => "RolledBack",
            _ => "RollbackFailed",
        };
        book.phase(phase, "Finished", &format!("the run ended: {phase}"));
        if let Some(st) = book.take() {
            report(
                &ctl,
                status::write(&api, &name, &st, epoch, &mut version, &ctl.fence()).await,
            );
        }
        return;
    }
    let resumed = records.len() > 1;
    let resume = if resumed {
        run_cmd::resume_of(state, &p.spec, &mut runnable)
    } else {
        Resume::default()
    };
    let mirror = Arc::new(Mirror {
        journal: tokio::sync::Mutex::new(cj),
        path: path.clone(),
        pushed: AtomicU64::new(text.len() as u64),
        ctl: ctl.clone(),
    });
    if let Err(e) = mirror.push().await {
        return ctl.depose_if(&e, &format!("run {ns}/{name}"));
    }
    // The status is ours from now on (a write that also fences an older leader).
    if resumed {
        book.phase(
            "Running",
            "Resumed",
            &format!("resumed by {} (epoch {epoch})", ctl.identity),
        );
    }
    if let Some(st) = book.take()
        && let Err(e) = status::write(&api, &name, &st, epoch, &mut version, &ctl.fence()).await
    {
        return report(&ctl, Err(e));
    }
    ctl.metrics.phase(None, "Running");
    said(Said {
        warning: false,
        reason: if resumed { "Resumed" } else { "Started" },
        note: format!(
            "{} by {} (epoch {epoch})",
            if resumed { "resumed" } else { "started" },
            ctl.identity
        ),
        action: "Run".into(),
    })
    .await;
    // Ready; waiting for the target (if another run holds it) must not
    // hold up the others.
    drop(getting_ready);
    // One run per target, as for `rollwright run`.
    let target_ns = p
        .spec
        .target
        .as_ref()
        .map(|t| t.namespace.clone())
        .unwrap_or_default();
    let cluster = match rollwright_steps::cluster::Cluster::at(ctl.reach.clone(), &target_ns) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("RolloutRun {ns}/{name}: {e}; trying again later");
            return;
        }
    };
    let lease = loop {
        match rollwright_steps::lease::TargetLease::acquire(cluster.clone(), &format!("rolloutrun/{name}"))
            .await
        {
            Ok(l) => break l,
            Err(rollwright_steps::lease::LeaseError::Held(who)) => {
                book.phase(
                    "Running",
                    "TargetHeld",
                    &format!("waiting: the target is held by {who}"),
                );
                if let Some(st) = book.take() {
                    report(
                        &ctl,
                        status::write(&api, &name, &st, epoch, &mut version, &ctl.fence()).await,
                    );
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(rollwright_steps::lease::LeaseError::Api(e)) if !resumed => {
                return refuse(format!("cannot take the target's Lease: {e}")).await;
            }
            Err(rollwright_steps::lease::LeaseError::Api(e)) => {
                // A run under way is never called refused: try again later.
                tracing::warn!("RolloutRun {ns}/{name}: the target's Lease: {e}; trying again later");
                return;
            }
        }
    };
    let writer = Arc::new(GroupCommit::start(journal));
    let (said_tx, mut said_rx) = tokio::sync::mpsc::unbounded_channel::<Said>();
    let sink = sink(
        &ctl,
        &p.spec,
        book.clone(),
        writer.clone(),
        mirror.clone(),
        said_tx.clone(),
    );
    // Background: events, status, the journal's unflushed lines, approvals.
    let events = {
        let said = said.clone();
        tokio::spawn(async move {
            while let Some(s) = said_rx.recv().await {
                said(s).await;
            }
        })
    };
    let status_writer = {
        let (ctl, book, api, name) = (ctl.clone(), book.clone(), api.clone(), name.clone());
        let mut version = version.clone();
        let mirror = mirror.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                if let Some(st) = book.take() {
                    report(
                        &ctl,
                        status::write(&api, &name, &st, epoch, &mut version, &ctl.fence()).await,
                    );
                }
                if n.is_multiple_of(4)
                    && let Err(e) = mirror.push().await
                {
                    ctl.depose_if(&e, &name);
                }
            }
        })
    };
    let approvals = approvals(
        &ctl,
        &p.spec,
        &dir,
        &name,
        plan.submitter.clone(),
        intent.clone(),
        said_tx.clone(),
    );
    let lost = lease.lost();
    let mut intent_rx = intent.clone();
    let stop: BoxFuture<'static, String> = Box::pin(async move {
        let aborted = async move {
            loop {
                if let Some(a) = intent_rx.borrow_and_update().abort.clone() {
                    return format!("aborted by {}: {}", a.by, a.reason);
                }
                if intent_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            why = aborted => why,
            why = lost => why,
        }
    });
    let mut deposed = ctl.deposed.subscribe();
    let outcome = tokio::select! {
        o = exec::execute_resumed(runnable.steps, runnable.handlers, Options::default(), sink, resume, Some(stop)) => Some(o),
        _ = deposed.wait_for(Option::is_some) => None,
    };
    approvals.abort();
    let Some(outcome) = outcome else {
        // Deposed: stop at once, write nothing more.
        status_writer.abort();
        events.abort();
        return;
    };
    let _ = writer.flush();
    status_writer.abort();
    if let Err(e) = mirror.push().await {
        return ctl.depose_if(&e, &name);
    }
    let phase = match outcome.state {
        exec::FinalState::Succeeded => "Succeeded",
        exec::FinalState::RolledBack => "RolledBack",
        exec::FinalState::RollbackFailed => "RollbackFailed",
    };
    let message = match &outcome.failure {
        Some((step, error)) => format!("failed at {step}: {error}"),
        None => "every step succeeded".into(),
    };
    book.phase(phase, phase, &message);
    if let Some(st) = book.take() {
        report(
            &ctl,
            status::write(&api, &name, &st, epoch, &mut version, &ctl.fence()).await,
        );
    }
    ctl.metrics.phase(Some("Running"), phase);
    lease.release().await;
    if api
        .get_opt(&name)
        .await
        .ok()
        .flatten()
        .is_some_and(|o| o.metadata.deletion_timestamp.is_some())
        && let Err(e) = finalizer(&ctl, &rr, false).await
    {
        tracing::warn!("RolloutRun {ns}/{name}: cannot release its finalizer: {e}");
    }
    drop(said_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), events).await;
}

/// A status write's failure: deposed (stop everything), or said in the log.
fn report(ctl: &Ctl, r: Result<(), WriteError>) {
    match r {
        Ok(()) => {}
        Err(WriteError::Deposed(e)) => ctl.depose(format!("a leader of epoch {e} writes the status now")),
        Err(e) => tracing::warn!("{e}"),
    }
}

/// Journals events (and pushes each record a step needs durable to the
/// cluster before the step goes on), keeps the status and says what
/// happened.
fn sink(
    ctl: &Arc<Ctl>,
    spec: &Spec,
    book: Arc<Book>,
    writer: Arc<GroupCommit>,
    mirror: Arc<Mirror>,
    said: tokio::sync::mpsc::UnboundedSender<Said>,
) -> Sink {
    let observed = Mutex::new(HashMap::<String, run_cmd::Observed>::new());
    let kinds: HashMap<String, String> = spec
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.kind.clone()))
        .collect();
    let started = Mutex::new(HashMap::<String, Instant>::new());
    let handle = tokio::runtime::Handle::current();
    let ctl = ctl.clone();
    Arc::new(move |e: &Event| {
        if let Some(s) = book.event(e) {
            let _ = said.send(s);
        }
        let timing = |step: &str, result: &str| {
            let t = started.lock().ok().and_then(|mut m| m.remove(step));
            if let (Some(t), Some(kind)) = (t, kinds.get(step)) {
                ctl.metrics.step(kind, result, t.elapsed().as_secs_f64());
            }
        };
        match e {
            Event::Started { step, attempt: 1 } => {
                if let Ok(mut m) = started.lock() {
                    m.insert(step.clone(), Instant::now());
                }
            }
            Event::Succeeded { step, .. } => timing(step, "succeeded"),
            Event::Failed { step, .. } => timing(step, "failed"),
            _ => {}
        }
        let Some((r, flush_now)) = run_cmd::journal_entry(&observed, e) else {
            return Ok(());
        };
        writer.append(r);
        if flush_now {
            writer.flush().map_err(|e| e.to_string())?;
            let pushed = tokio::task::block_in_place(|| handle.block_on(mirror.push()));
            if let Err(e) = pushed {
                ctl.depose_if(&e, "journal");
                return Err(e.to_string());
            }
        }
        Ok(())
    })
}

/// Records the approvals people add to the RolloutRun (the API server has
/// checked each is by the user who sent it) for the run's approval steps;
/// the step's own rules still apply (who may, and never the submitter).
fn approvals(
    ctl: &Arc<Ctl>,
    spec: &Spec,
    dir: &std::path::Path,
    run: &str,
    started_by: String,
    mut intent: watch::Receiver<Intent>,
    said: tokio::sync::mpsc::UnboundedSender<Said>,
) -> tokio::task::JoinHandle<()> {
    let reg = run_cmd::registry();
    let steps: HashMap<String, serde_json::Value> = spec
        .steps
        .iter()
        .filter(|s| reg.get(&s.kind).is_some_and(|k| k.approvable()))
        .map(|s| (s.id.clone(), s.with.clone()))
        .collect();
    let (dir, run, ctl) = (dir.to_path_buf(), run.to_owned(), ctl.clone());
    tokio::spawn(async move {
        let mut done: HashSet<(String, String)> = HashSet::new();
        loop {
            let list = intent.borrow_and_update().approvals.clone();
            for a in list {
                if !done.insert((a.step.clone(), a.by.clone())) {
                    continue;
                }
                let Some(with) = steps.get(&a.step) else {
                    let _ = said.send(Said {
                        warning: true,
                        reason: "ApprovalRefused",
                        note: format!(
                            "{} approved `{}`, which is not an approval step of this run",
                            a.by, a.step
                        ),
                        action: "Run".into(),
                    });
                    continue;
                };
                let r = rollwright_steps::approval::record(&rollwright_steps::approval::Approver {
                    run_dir: &dir,
                    run: &run,
                    step: &a.step,
                    with,
                    started_by: &started_by,
                    identity: rollwright_steps::approval::Identity::Cluster {
                        who: a.by.clone(),
                        server: ctl.reach.server.clone().unwrap_or_default(),
                    },
                    key: &ctl.key,
                });
                let _ = said.send(match r {
                    Ok(()) => Said {
                        warning: false,
                        reason: "Approved",
                        note: format!("{} approved `{}`", a.by, a.step),
                        action: "Run".into(),
                    },
                    Err(e) => Said {
                        warning: true,
                        reason: "ApprovalRefused",
                        note: format!("approval of `{}` refused: {e}", a.step),
                        action: "Run".into(),
                    },
                });
            }
            if intent.changed().await.is_err() {
                return;
            }
        }
    })
}

/// The finalizer that keeps a running RolloutRun (and its journal) until
/// its rollback is done.
pub const FINALIZER: &str = "rollwright.dev/rollback";

/// Adds (`hold`) or removes the finalizer, conditional on the version read.
pub async fn finalizer(ctl: &Ctl, rr: &RolloutRun, hold: bool) -> Result<(), kube::Error> {
    let api: Api<RolloutRun> = Api::namespaced(ctl.client.clone(), &rr.namespace().unwrap_or_default());
    for _ in 0..5 {
        let Some(now) = api.get_opt(&rr.name_any()).await? else {
            return Ok(());
        };
        let mut list = now.metadata.finalizers.clone().unwrap_or_default();
        let has = list.iter().any(|f| f == FINALIZER);
        if has == hold {
            return Ok(());
        }
        if hold {
            list.push(FINALIZER.into());
        } else {
            list.retain(|f| f != FINALIZER);
        }
        let patch = serde_json::json!({"metadata": {"finalizers": list, "resourceVersion": now.metadata.resource_version}});
        match api
            .patch(
                &rr.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a phase is final.
pub fn terminal(rr: &RolloutRun) -> bool {
    rr.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| TERMINAL.contains(&p))
}

impl Ctl {
    /// Publishes what people should see as an Event on the RolloutRun.
    pub async fn publish(&self, s: &Said, reference: &k8s_openapi::api::core::v1::ObjectReference) {
        let ev = KubeEvent {
            type_: if s.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: s.reason.into(),
            note: Some(rollwright_engine::secrets::scrub(&s.note)),
            action: s.action.chars().take(128).collect(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::debug!("event not published: {e}");
        }
    }
}
