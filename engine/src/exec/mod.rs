//! The executor core: runs a DAG of steps with bounded concurrency,
//! per-attempt timeouts, per-step and per-run deadlines, retries with
//! backoff on transient errors only, and compensation in reverse completion
//! order when the run fails.
//!
//! Why steps return [`Progress::Wait`] instead of sleeping: the caller owns
//! the clock. The CLI sleeps; a future Kubernetes controller requeues. Long
//! steps (hold, wait-ready, approval) therefore never block inside `run`, and
//! one executor serves both. Every `.await` of a step is a cancellation
//! point: when the run fails, running steps are dropped at their next await.
//!
//! This module knows no journal and no display: it reports [`Event`]s to a
//! sink, which the journal, the progress display and the report consume.

mod attempt;
mod compensation;
mod contract;
mod scheduler;

pub use attempt::Limits;
pub use contract::*;
pub use scheduler::*;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::Map;
    use tokio::time::{Instant, sleep};

    use super::attempt::Jitter;
    use super::*;
    use crate::retry::{Backoff, RetryPolicy};

    /// A scripted step: each call pops the next result; records call times.
    struct Script {
        results: Mutex<Vec<Result<Progress, StepError>>>,
        calls: Mutex<Vec<Duration>>,
        start: Instant,
        compensations: Arc<Mutex<Vec<String>>>,
        id: String,
        fail_compensation: bool,
        hang: bool,
    }

    impl Step for Script {
        fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(self.start.elapsed());
                if self.hang {
                    sleep(Duration::from_secs(3600)).await;
                }
                let mut r = self.results.lock().unwrap();
                if r.is_empty() {
                    Ok(Progress::Done { outputs: Map::new() })
                } else {
                    r.remove(0)
                }
            })
        }
        fn compensate<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
            Box::pin(async move {
                self.compensations.lock().unwrap().push(self.id.clone());
                if self.fail_compensation {
                    Err(StepError::failed("cannot restore"))
                } else {
                    Ok(())
                }
            })
        }
    }

    struct Bed {
        comps: Arc<Mutex<Vec<String>>>,
        events: Arc<Mutex<Vec<Event>>>,
        start: Instant,
    }

    impl Bed {
        fn new() -> Self {
            Bed {
                comps: Arc::default(),
                events: Arc::default(),
                start: Instant::now(),
            }
        }
        fn script(&self, id: &str, results: Vec<Result<Progress, StepError>>) -> Arc<Script> {
            Arc::new(Script {
                results: Mutex::new(results),
                calls: Mutex::default(),
                start: self.start,
                compensations: self.comps.clone(),
                id: id.into(),
                fail_compensation: false,
                hang: false,
            })
        }
        fn node(&self, id: &str, needs: &[&str], step: Arc<Script>, limits: Limits) -> Node {
            Node {
                id: id.into(),
                needs: needs.iter().map(|s| (*s).to_owned()).collect(),
                step: step.clone(),
                limits,
                compensation: Some((step, Limits::default())),
                continue_on_failure: false,
            }
        }
        fn sink(&self) -> Sink {
            let ev = self.events.clone();
            Arc::new(move |e: &Event| {
                ev.lock().unwrap().push(e.clone());
                Ok(())
            })
        }
    }

    fn retry(attempts: u32, backoff: Backoff, initial: u64, max: u64) -> Limits {
        Limits {
            retry: RetryPolicy {
                attempts,
                backoff,
                initial: Duration::from_secs(initial),
                max: Duration::from_secs(max),
                jitter: false,
            },
            ..Limits::default()
        }
    }

    fn no_jitter() -> Options {
        Options {
            jitter_seed: None,
            ..Options::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_exponential_backoff() {
        let bed = Bed::new();
        let s = bed.script(
            "a",
            vec![Err(StepError::transient("503")), Err(StepError::transient("503"))],
        );
        let out = execute(
            vec![bed.node("a", &[], s.clone(), retry(3, Backoff::Exponential, 2, 60))],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::Succeeded);
        let calls = s.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [Duration::ZERO, Duration::from_secs(2), Duration::from_secs(6)],
            "delays 2s then 4s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_keeps_the_last_real_error_and_rolls_back() {
        let bed = Bed::new();
        let a = bed.script("a", vec![]);
        let b = bed.script(
            "b",
            vec![
                Err(StepError::transient("503 from api")),
                Err(StepError::transient("429 from api")),
            ],
        );
        let out = execute(
            vec![
                bed.node("a", &[], a, Limits::default()),
                bed.node("b", &["a"], b, retry(2, Backoff::Constant, 1, 1)),
            ],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::RolledBack);
        assert_eq!(
            out.failure,
            Some(("b".into(), "gave up after 2 attempts: 429 from api".into()))
        );
        assert_eq!(
            *bed.comps.lock().unwrap(),
            ["b", "a"],
            "the failed step is compensated too (it may have changed something before failing)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_are_never_retried() {
        let bed = Bed::new();
        let s = bed.script(
            "gate",
            vec![Err(StepError::rejected("version 7 is not approved"))],
        );
        let out = execute(
            vec![bed.node("gate", &[], s.clone(), retry(5, Backoff::Constant, 1, 1))],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.failure.unwrap().1, "version 7 is not approved");
        assert_eq!(s.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeouts_are_transient_and_the_step_deadline_is_final() {
        let bed = Bed::new();
        let mut s = Arc::try_unwrap(bed.script("slow", vec![])).ok().unwrap();
        s.hang = true;
        let s = Arc::new(s);
        let mut limits = retry(3, Backoff::Constant, 1, 1);
        limits.attempt_timeout = Some(Duration::from_secs(10));
        let out = execute(
            vec![bed.node("slow", &[], s.clone(), limits)],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(
            out.failure.unwrap().1,
            "gave up after 3 attempts: attempt timed out after 10s"
        );
        assert_eq!(
            *s.calls.lock().unwrap(),
            [Duration::ZERO, Duration::from_secs(11), Duration::from_secs(22)]
        );
        limits.deadline = Some(Duration::from_secs(15));
        let out = execute(
            vec![bed.node("slow", &[], s, limits)],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.failure.unwrap().1, "step deadline of 15s exceeded");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_slept_by_the_executor() {
        let bed = Bed::new();
        let wait = || {
            Ok(Progress::Wait {
                after: Duration::from_secs(30),
                reason: "holding".into(),
            })
        };
        let s = bed.script("hold", vec![wait(), wait()]);
        let out = execute(
            vec![bed.node("hold", &[], s.clone(), Limits::default())],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert_eq!(
            *s.calls.lock().unwrap(),
            [Duration::ZERO, Duration::from_secs(30), Duration::from_secs(60)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn compensation_runs_in_reverse_completion_order_and_cancels_the_rest() {
        let bed = Bed::new();
        let mut slow = Arc::try_unwrap(bed.script("side", vec![])).ok().unwrap();
        slow.hang = true;
        let nodes = vec![
            bed.node("a", &[], bed.script("a", vec![]), Limits::default()),
            bed.node("b", &["a"], bed.script("b", vec![]), Limits::default()),
            bed.node("side", &["a"], Arc::new(slow), Limits::default()),
            bed.node("c", &["b"], bed.script("c", vec![]), Limits::default()),
            bed.node(
                "d",
                &["c"],
                bed.script("d", vec![Err(StepError::rejected("error rate 12% > 1%"))]),
                Limits::default(),
            ),
        ];
        let out = execute(nodes, vec![], no_jitter(), bed.sink()).await;
        assert_eq!(out.state, FinalState::RolledBack);
        // The failed step and the cancelled one first (newest start first):
        // they may have changed the target halfway.
        assert_eq!(*bed.comps.lock().unwrap(), ["d", "side", "c", "b", "a"]);
        assert!(
            bed.events
                .lock()
                .unwrap()
                .contains(&Event::Cancelled { step: "side".into() })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_compensation_is_rollback_failed_and_handlers_still_run() {
        let bed = Bed::new();
        let mut a = Arc::try_unwrap(bed.script("a", vec![])).ok().unwrap();
        a.fail_compensation = true;
        let handler_calls = Arc::new(AtomicU32::new(0));
        struct Handler(Arc<AtomicU32>, bool);
        impl Step for Handler {
            fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
                Box::pin(async move {
                    self.0.fetch_add(1, Ordering::SeqCst);
                    if self.1 {
                        Err(StepError::failed("webhook 500"))
                    } else {
                        Ok(Progress::Done { outputs: Map::new() })
                    }
                })
            }
        }
        let handler = |id: &str, fail: bool| Node {
            id: id.into(),
            needs: vec![],
            step: Arc::new(Handler(handler_calls.clone(), fail)),
            limits: Limits::default(),
            compensation: None,
            continue_on_failure: true,
        };
        let nodes = vec![
            bed.node("a", &[], Arc::new(a), Limits::default()),
            bed.node(
                "b",
                &["a"],
                bed.script("b", vec![Err(StepError::failed("boom"))]),
                Limits::default(),
            ),
        ];
        let out = execute(
            nodes,
            vec![handler("h1", true), handler("h2", false)],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::RollbackFailed);
        assert_eq!(out.left_over, [("a".to_owned(), "cannot restore".to_owned())]);
        assert_eq!(
            handler_calls.load(Ordering::SeqCst),
            2,
            "a failing handler does not stop the next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn continue_on_failure_and_run_deadline() {
        let bed = Bed::new();
        let mut soft = bed.node(
            "soft",
            &[],
            bed.script("soft", vec![Err(StepError::failed("meh"))]),
            Limits::default(),
        );
        soft.continue_on_failure = true;
        let after = bed.node("after", &["soft"], bed.script("after", vec![]), Limits::default());
        let out = execute(vec![soft, after], vec![], no_jitter(), bed.sink()).await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert_eq!(out.completed, ["after"]);

        let mut slow = Arc::try_unwrap(bed.script("slow", vec![])).ok().unwrap();
        slow.hang = true;
        let opts = Options {
            run_deadline: Some(Duration::from_secs(60)),
            ..no_jitter()
        };
        let out = execute(
            vec![bed.node("slow", &[], Arc::new(slow), Limits::default())],
            vec![],
            opts,
            bed.sink(),
        )
        .await;
        assert_eq!(
            out.failure,
            Some(("run".into(), "run deadline of 1m exceeded".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resume_skips_completed_steps_and_finished_compensations() {
        let bed = Bed::new();
        let (a, b, c) = (
            bed.script("a", vec![]),
            bed.script("b", vec![]),
            bed.script("c", vec![]),
        );
        let nodes = |a: &Arc<Script>, b: &Arc<Script>, c: &Arc<Script>| {
            vec![
                bed.node("a", &[], a.clone(), Limits::default()),
                bed.node("b", &["a"], b.clone(), Limits::default()),
                bed.node("c", &["b"], c.clone(), Limits::default()),
            ]
        };
        let done = |id: &str| (id.to_owned(), Map::new());
        let resume = Resume {
            completed: vec![done("a"), done("b")],
            ..Resume::default()
        };
        let out = execute_resumed(nodes(&a, &b, &c), vec![], no_jitter(), bed.sink(), resume, None).await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert!(a.calls.lock().unwrap().is_empty() && b.calls.lock().unwrap().is_empty());
        assert_eq!(c.calls.lock().unwrap().len(), 1);
        assert_eq!(out.completed, ["a", "b", "c"]);

        // Killed while compensating after `c` failed: `b` was already undone.
        let resume = Resume {
            completed: vec![done("a"), done("b")],
            compensated: vec!["b".into()],
            failed: Some(("c".into(), "breach".into())),
            ..Resume::default()
        };
        let out = execute_resumed(nodes(&a, &b, &c), vec![], no_jitter(), bed.sink(), resume, None).await;
        assert_eq!(out.state, FinalState::RolledBack);
        assert_eq!(*bed.comps.lock().unwrap(), ["a"]);
        assert_eq!(
            c.calls.lock().unwrap().len(),
            1,
            "the failed run does not start steps again"
        );
    }

    /// The regression behind "deploy ran twice": on resume a gate is
    /// checked again, and a completed step that needs it must not be
    /// released (and so run) a second time when the gate passes.
    #[tokio::test(start_paused = true)]
    async fn a_completed_step_is_never_run_again_when_a_step_it_needs_reruns() {
        let bed = Bed::new();
        let (gate, deploy, shift) = (
            bed.script("gate", vec![]),
            bed.script("deploy", vec![]),
            bed.script("shift", vec![]),
        );
        let nodes = vec![
            bed.node("gate", &[], gate.clone(), Limits::default()),
            bed.node("deploy", &["gate"], deploy.clone(), Limits::default()),
            bed.node("shift", &["deploy", "gate"], shift.clone(), Limits::default()),
        ];
        let resume = Resume {
            completed: vec![("deploy".to_owned(), Map::new())],
            ..Resume::default()
        };
        let out = execute_resumed(nodes, vec![], no_jitter(), bed.sink(), resume, None).await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert_eq!(gate.calls.lock().unwrap().len(), 1, "the gate is checked again");
        assert!(deploy.calls.lock().unwrap().is_empty(), "deploy is not repeated");
        assert_eq!(shift.calls.lock().unwrap().len(), 1);
        assert_eq!(out.completed, ["deploy", "gate", "shift"]);
    }

    #[tokio::test(start_paused = true)]
    async fn abort_cancels_and_compensates() {
        let bed = Bed::new();
        let mut slow = Arc::try_unwrap(bed.script("b", vec![])).ok().unwrap();
        slow.hang = true;
        let nodes = vec![
            bed.node("a", &[], bed.script("a", vec![]), Limits::default()),
            bed.node("b", &["a"], Arc::new(slow), Limits::default()),
        ];
        let abort: BoxFuture<'static, String> = Box::pin(async {
            sleep(Duration::from_secs(5)).await;
            "aborted by alice".to_owned()
        });
        let out = execute_resumed(
            nodes,
            vec![],
            no_jitter(),
            bed.sink(),
            Resume::default(),
            Some(abort),
        )
        .await;
        assert_eq!(out.state, FinalState::RolledBack);
        assert_eq!(out.failure, Some(("abort".into(), "aborted by alice".into())));
        assert_eq!(*bed.comps.lock().unwrap(), ["b", "a"]);
        assert!(
            bed.events
                .lock()
                .unwrap()
                .contains(&Event::Cancelled { step: "b".into() })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_jitter_stays_within_half() {
        let bed = Bed::new();
        let nodes: Vec<Node> = (0..5)
            .map(|i| {
                let w = Ok(Progress::Wait {
                    after: Duration::from_secs(10),
                    reason: String::new(),
                });
                bed.node(&format!("n{i}"), &[], bed.script("x", vec![w]), Limits::default())
            })
            .collect();
        let opts = Options {
            concurrency: 2,
            ..no_jitter()
        };
        let out = execute(nodes, vec![], opts, bed.sink()).await;
        assert_eq!(out.completed.len(), 5);
        // Two at a time, each 10s: three waves.
        assert_eq!(bed.start.elapsed(), Duration::from_secs(30));
        let mut j = Jitter(Some(42));
        for _ in 0..100 {
            let d = j.apply(Duration::from_secs(10), true);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }
}
