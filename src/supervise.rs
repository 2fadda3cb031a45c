//! One supervision tree per process: every long-running task of a command (pipeline, deriver,
//! maintenance, simulator, HTTP server, catalog refresher, audit writer) runs under a
//! [`Supervisor`], in a named [`Stage`].
//!
//! - **One cancellation tree.** The process has one root [`CancellationToken`]; each stage's
//!   token is a child of it, and each task gets its stage's token. Cancelling the root (a second
//!   Ctrl-C) stops everything at once.
//! - **Ordered shutdown, the same on every path.** [`Supervisor::shutdown`] cancels the stages
//!   in the order they were declared and waits for each stage's tasks before cancelling the next
//!   (producers before the pipeline, the pipeline before the server, everything before the
//!   broker the command owns). It runs on Ctrl-C, at the end of `--duration`, when a critical
//!   task fails and when the command's own setup fails half-way, so nothing is dropped while
//!   something still uses it.
//! - **Failures are not silent.** A task that returns an error or panics is restarted with
//!   backoff if its [`Policy`] allows (up to a number of times); otherwise, or once the restarts
//!   are spent, the whole process shuts down in order and the command fails with that error.
//! - **Health that tells the truth.** [`Health`] holds each task's state for `/healthz`
//!   (liveness: every task alive, none failed) and a readiness flag for `/readyz` (data is being
//!   served), set by whoever knows.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What to do when a task ends with an error or a panic (a task that returns `Ok` after its
/// token was cancelled has simply stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Restart it (after 0.2 s, doubling up to 10 s), at most this many times in a row without
    /// a minute of running well; then stop the process.
    Restart { max: u32 },
    /// Stop the process.
    Critical,
}

/// A group of tasks stopped together, in declaration order.
#[derive(Debug, Clone)]
pub struct Stage {
    name: &'static str,
    token: CancellationToken,
}

impl Stage {
    /// The token this stage's tasks stop on.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A task's state as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    Running { since_secs: u64 },
    Restarting { failures: u32, error: String },
    Stopped,
    Failed { error: String },
}

/// Liveness of every task and readiness of the process, shared with the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthInner>>,
}

#[derive(Debug, Default)]
struct HealthInner {
    tasks: BTreeMap<String, (TaskState, Instant)>,
    ready: bool,
    stopping: bool,
}

/// `/healthz`'s body.
#[derive(Debug, Serialize)]
pub struct Report {
    /// "ok" when every task is alive and none failed.
    pub status: &'static str,
    pub ready: bool,
    pub tasks: BTreeMap<String, TaskState>,
}

impl Health {
    fn set(&self, task: &str, state: TaskState) {
        self.inner
            .lock()
            .expect("poisoned")
            .tasks
            .insert(task.to_string(), (state, Instant::now()));
    }

    /// Marks the process ready to serve (or not).
    pub fn set_ready(&self, ready: bool) {
        self.inner.lock().expect("poisoned").ready = ready;
    }

    /// Ready: data is served and the process is not shutting down.
    pub fn ready(&self) -> bool {
        let h = self.inner.lock().expect("poisoned");
        h.ready && !h.stopping
    }

    /// Alive: no task failed or is waiting to be restarted.
    pub fn live(&self) -> bool {
        self.report().status == "ok"
    }

    pub fn report(&self) -> Report {
        let h = self.inner.lock().expect("poisoned");
        let tasks: BTreeMap<String, TaskState> = h
            .tasks
            .iter()
            .map(|(name, (state, at))| {
                let state = match state {
                    TaskState::Running { .. } => TaskState::Running {
                        since_secs: at.elapsed().as_secs(),
                    },
                    other => other.clone(),
                };
                (name.clone(), state)
            })
            .collect();
        let failing = tasks.values().any(|s| {
            matches!(s, TaskState::Failed { .. } | TaskState::Restarting { .. })
                || (matches!(s, TaskState::Stopped) && !h.stopping)
        });
        Report {
            status: if failing { "failing" } else { "ok" },
            ready: h.ready && !h.stopping,
            tasks,
        }
    }
}

type TaskFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Factory = Box<dyn FnMut(CancellationToken) -> TaskFuture + Send>;

struct Task {
    name: String,
    stage: Stage,
    policy: Policy,
    runtime: tokio::runtime::Handle,
    factory: Factory,
    failures: u32,
    started: Instant,
}

/// How a task's run ended.
enum Ended {
    Ok,
    Err(String),
}

/// Runs a process's tasks (see the module docs).
pub struct Supervisor {
    root: CancellationToken,
    stages: Vec<Stage>,
    tasks: BTreeMap<u64, Task>,
    running: JoinSet<(u64, Ended)>,
    /// Our task of each running future (a panic's join error names only tokio's id).
    runs: BTreeMap<tokio::task::Id, u64>,
    next_id: u64,
    health: Health,
    /// The first unrecoverable failure, which the command reports.
    failure: Option<anyhow::Error>,
}

impl Supervisor {
    /// A supervisor whose root token is cancelled by Ctrl-C twice, and whose `stop` token —
    /// cancelled by Ctrl-C, SIGTERM or `duration` — starts an ordered shutdown in
    /// [`Supervisor::wait`].
    pub fn new() -> Supervisor {
        Supervisor {
            root: CancellationToken::new(),
            stages: Vec::new(),
            tasks: BTreeMap::new(),
            running: JoinSet::new(),
            runs: BTreeMap::new(),
            next_id: 0,
            health: Health::default(),
            failure: None,
        }
    }

    /// The root of the tree: cancelled, everything stops at once.
    pub fn root(&self) -> CancellationToken {
        self.root.clone()
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Declares the next stage: stages stop in the order they are declared.
    pub fn stage(&mut self, name: &'static str) -> Stage {
        let stage = Stage {
            name,
            token: self.root.child_token(),
        };
        self.stages.push(stage.clone());
        stage
    }

    /// Runs `make(token)` as task `name` of `stage` on `runtime`, under `policy`. `make` is
    /// called again for each restart.
    pub fn spawn<F, Fut>(
        &mut self,
        name: &str,
        stage: &Stage,
        policy: Policy,
        runtime: &tokio::runtime::Handle,
        mut make: F,
    ) where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let id = self.next_id;
        self.next_id += 1;
        let task = Task {
            name: name.to_string(),
            stage: stage.clone(),
            policy,
            runtime: runtime.clone(),
            factory: Box::new(move |token| Box::pin(make(token))),
            failures: 0,
            started: Instant::now(),
        };
        self.tasks.insert(id, task);
        self.launch(id, Duration::ZERO);
    }

    /// Runs `run(token)` once as task `name` of `stage`: it cannot be restarted (it owns what
    /// it works on), so its failure stops the process.
    pub fn spawn_once<F, Fut>(
        &mut self,
        name: &str,
        stage: &Stage,
        runtime: &tokio::runtime::Handle,
        run: F,
    ) where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut run = Some(run);
        self.spawn(name, stage, Policy::Critical, runtime, move |token| {
            let run = run.take();
            async move {
                match run {
                    Some(run) => run(token).await,
                    None => anyhow::bail!("a one-shot task cannot be restarted"),
                }
            }
        });
    }

    fn launch(&mut self, id: u64, delay: Duration) {
        let task = self.tasks.get_mut(&id).expect("known task");
        let token = task.stage.token();
        let future = (task.factory)(token.clone());
        task.started = Instant::now() + delay;
        let name = task.name.clone();
        let health = self.health.clone();
        if delay.is_zero() {
            health.set(&name, TaskState::Running { since_secs: 0 });
        }
        let handle = self.running.spawn_on(
            async move {
                if !delay.is_zero() {
                    // Reported as restarting until it runs again.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = token.cancelled() => return (id, Ended::Ok),
                    }
                    health.set(&name, TaskState::Running { since_secs: 0 });
                }
                // A panic inside is caught by the join handle; see `settle`.
                let ended = match future.await {
                    Ok(()) => Ended::Ok,
                    Err(e) => Ended::Err(format!("{e:#}")),
                };
                tracing::debug!(task = %name, "task ended");
                (id, ended)
            },
            &task.runtime,
        );
        self.runs.insert(handle.id(), id);
    }

    /// Waits until the stop token is cancelled (Ctrl-C, SIGTERM, `--duration`, or
    /// [`Supervisor::root`]) or a task fails for good, restarting tasks as their policies say.
    /// Then shuts down in order. Returns the failure, if any.
    pub async fn wait(&mut self, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                joined = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    let Some(joined) = joined else { continue };
                    if !self.settle(joined) {
                        break;
                    }
                }
                // Nothing left to supervise: wait for the stop.
                _ = std::future::pending::<()>(), if self.running.is_empty() => {}
            }
        }
        self.shutdown().await;
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One task ended: restart it, or record a failure. False when the process must stop.
    fn settle(
        &mut self,
        joined: Result<(tokio::task::Id, (u64, Ended)), tokio::task::JoinError>,
    ) -> bool {
        let (id, ended) = match joined {
            Ok((run, r)) => {
                self.runs.remove(&run);
                r
            }
            Err(e) => {
                let Some(id) = self.runs.remove(&e.id()) else {
                    return true;
                };
                let why = if e.is_panic() {
                    format!("panicked: {}", panic_message(e.into_panic()))
                } else {
                    "was aborted".to_string()
                };
                (id, Ended::Err(why))
            }
        };
        let Some(task) = self.tasks.get_mut(&id) else {
            return true;
        };
        let name = task.name.clone();
        match ended {
            Ended::Ok => {
                self.health.set(&name, TaskState::Stopped);
                if !task.stage.token.is_cancelled() {
                    tracing::info!(task = %name, "task finished");
                }
                self.tasks.remove(&id);
                true
            }
            Ended::Err(error) => {
                if task.started.elapsed() > Duration::from_secs(60) {
                    task.failures = 0;
                }
                task.failures += 1;
                let stopping = task.stage.token.is_cancelled();
                match task.policy {
                    Policy::Restart { max } if task.failures <= max && !stopping => {
                        let backoff = Duration::from_millis(200)
                            .saturating_mul(1 << (task.failures - 1).min(6))
                            .min(Duration::from_secs(10));
                        tracing::warn!(task = %name, %error, failures = task.failures, ?backoff, "task failed; restarting");
                        crate::telemetry::events::TaskRestarted { task: &name }.emit();
                        self.health.set(
                            &name,
                            TaskState::Restarting {
                                failures: task.failures,
                                error: error.clone(),
                            },
                        );
                        self.launch(id, backoff);
                        true
                    }
                    _ => {
                        tracing::error!(task = %name, %error, "task failed; stopping the process");
                        self.health.set(
                            &name,
                            TaskState::Failed {
                                error: error.clone(),
                            },
                        );
                        self.tasks.remove(&id);
                        if self.failure.is_none() {
                            self.failure = Some(anyhow::anyhow!("{name} failed: {error}"));
                        }
                        false
                    }
                }
            }
        }
    }

    /// Cancels the stages in declaration order, waiting for each stage's tasks to end before
    /// the next. Idempotent.
    pub async fn shutdown(&mut self) {
        self.health.inner.lock().expect("poisoned").stopping = true;
        for stage in self.stages.clone() {
            stage.token.cancel();
            let waiting: Vec<u64> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.stage.name == stage.name)
                .map(|(id, _)| *id)
                .collect();
            if waiting.is_empty() {
                continue;
            }
            tracing::debug!(stage = stage.name, tasks = waiting.len(), "stopping");
            while self.tasks.values().any(|t| t.stage.name == stage.name) {
                match self.running.join_next_with_id().await {
                    Some(joined) => {
                        // During shutdown nothing restarts: the stage token is cancelled.
                        self.settle(joined);
                    }
                    None => break,
                }
            }
        }
        self.root.cancel();
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// A token cancelled on Ctrl-C, SIGTERM or after `duration`: the signal to stop in order.
/// A second Ctrl-C cancels `root` too (everything at once).
pub fn stop_token(duration: Option<Duration>, root: CancellationToken) -> CancellationToken {
    let stop = CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: finishing the batch in hand, then stopping (again to stop at once)"),
            _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand, then stopping"),
            _ = sleep => tracing::info!("duration reached: stopping"),
            _ = root.cancelled() => {}
        }
        signalled.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("second Ctrl-C: stopping everything now");
            root.cancel();
        }
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Stages stop in declaration order, each after the previous one's tasks ended; a critical
    /// failure stops everything and is the command's error.
    #[tokio::test]
    async fn a_critical_failure_stops_every_stage_in_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut sup = Supervisor::new();
        let first = sup.stage("first");
        let second = sup.stage("second");
        let here = tokio::runtime::Handle::current();
        for (stage, name) in [(&second, "b"), (&first, "a")] {
            let order = order.clone();
            sup.spawn_once(name, stage, &here, move |t| async move {
                t.cancelled().await;
                // The later stage is still running while the earlier one stops.
                tokio::time::sleep(Duration::from_millis(20)).await;
                order.lock().unwrap().push(name);
                Ok(())
            });
        }
        sup.spawn_once("doomed", &second, &here, |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            anyhow::bail!("disk on fire")
        });
        let health = sup.health();
        let e = sup.wait(CancellationToken::new()).await.unwrap_err();
        assert!(e.to_string().contains("doomed failed: disk on fire"), "{e}");
        assert_eq!(*order.lock().unwrap(), ["a", "b"]);
        let report = health.report();
        assert_eq!(report.status, "failing");
        assert!(matches!(report.tasks["doomed"], TaskState::Failed { .. }));
        assert!(!health.ready());
    }

    /// A task that panics is restarted while its policy allows, reported as restarting
    /// meanwhile; past the limit the process stops with the panic's message.
    #[tokio::test]
    async fn a_panicking_task_is_restarted_then_gives_up() {
        let runs = Arc::new(AtomicU32::new(0));
        let mut sup = Supervisor::new();
        let stage = sup.stage("work");
        let counted = runs.clone();
        sup.spawn(
            "flaky",
            &stage,
            Policy::Restart { max: 2 },
            &tokio::runtime::Handle::current(),
            move |_| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        panic!("flaky run {n}");
                    }
                    Ok(())
                }
            },
        );
        let health = sup.health();
        let watcher = tokio::spawn(async move {
            let mut seen_restarting = false;
            for _ in 0..200 {
                if matches!(
                    health.report().tasks.get("flaky"),
                    Some(TaskState::Restarting { .. })
                ) {
                    seen_restarting = !health.live();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen_restarting
        });
        let e = sup.wait(CancellationToken::new()).await.unwrap_err();
        assert!(e.to_string().contains("panicked: flaky run 2"), "{e}");
        assert_eq!(runs.load(Ordering::SeqCst), 3, "one run and two restarts");
        assert!(watcher.await.unwrap(), "never reported as restarting");
    }

    /// Stopping is not failing: tasks that end when their stage is cancelled leave a clean
    /// exit, and the process is live until then.
    #[tokio::test]
    async fn a_requested_stop_ends_cleanly() {
        let mut sup = Supervisor::new();
        let stage = sup.stage("work");
        sup.spawn_once(
            "steady",
            &stage,
            &tokio::runtime::Handle::current(),
            |t| async move {
                t.cancelled().await;
                Ok(())
            },
        );
        sup.health().set_ready(true);
        let health = sup.health();
        assert!(health.live() && health.ready());
        let stop = CancellationToken::new();
        stop.cancel();
        sup.wait(stop).await.unwrap();
        assert!(health.live(), "{:?}", health.report());
        assert!(!health.ready(), "not ready while stopped");
    }
}
