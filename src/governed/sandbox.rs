//! Where a caller's query runs, and the limits it runs under.
//!
//! - **Its own threads.** Queries run on [`crate::runtime::sql`], a runtime of a few threads at
//!   a lower CPU priority with large stacks, never on the runtime that answers HTTP, tools and
//!   `/healthz`: a query that burns CPU slows other queries, not the server.
//! - **A timeout that lands.** Every operator's output passes a [`GuardExec`] that fails the
//!   query once its deadline has passed and spends tokio's cooperative budget, so the task
//!   yields and an abort from outside takes effect within a batch. The caller waits at most
//!   the timeout, then aborts the task and waits (briefly) for it to end, so its memory is
//!   returned before the answer goes out.
//! - **Bounded memory.** Each query has its own DataFusion memory pool (sorts, joins,
//!   aggregates; no spilling to disk) and its guards bound the data between operators:
//!   every batch, every row, and — before an operator evaluates its expressions — the bytes its
//!   expressions could build from the batch (a projection that concatenates a column with
//!   itself a thousand times is refused before it allocates).
//! - **Fair shares.** At most `per_principal` queries of one principal and `total` in all run
//!   at once; a query waits at most `wait` for a slot, then is refused with a clear error.
//! - **Errors without data.** [`describe`] turns an execution error into text; for a caller
//!   whose rows are filtered or masked it names the kind of failure, never a value.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::prelude::SessionConfig;
use datafusion::prelude::SessionContext;
use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one caller's query.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time from start to answer.
    pub timeout: Duration,
    /// Memory pool of one query (bytes).
    pub memory: usize,
    /// Bytes of answer (the rows as JSON) returned at most; more rows are cut.
    pub result: usize,
    /// Queries one principal may run at once.
    pub per_principal: usize,
    /// Queries that may run at once in all.
    pub total: usize,
    /// How long a query waits for a free slot before it is refused as busy.
    pub wait: Duration,
}

impl Limits {
    pub fn from_config(serve: &crate::config::ServeConfig) -> Limits {
        Limits {
            timeout: Duration::from_millis(serve.query_timeout_ms),
            memory: serve.query_memory_mb as usize * MB,
            result: serve.query_result_mb as usize * MB,
            per_principal: serve.query_per_principal,
            total: serve.query_concurrency,
            wait: Duration::from_millis(serve.query_wait_ms),
        }
    }

    /// Default limits with this timeout.
    pub fn with_timeout(timeout: Duration) -> Limits {
        let defaults = crate::config::Config::defaults();
        Limits {
            timeout,
            ..Limits::from_config(&defaults.serve)
        }
    }

    /// Largest batch between two operators: a quarter of the pool.
    fn batch_bytes(&self) -> usize {
        (self.memory / 4).max(MB)
    }
}

const MB: usize = 1024 * 1024;
/// Largest row between two operators (every variable-width value of it together).
const MAX_ROW_BYTES: usize = 256 * 1024;
/// Rows per batch in a caller's query: small batches keep each step's memory small.
const BATCH_ROWS: usize = 1024;

/// Why a caller's query did not answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The caller's query cannot be planned or was refused: their fault; the text says why.
    Refused(String),
    /// Too many queries at once (of this principal, or in all): retry later.
    Busy(String),
    /// The query ran out of time.
    Timeout(Duration),
    /// The query needed more memory than its limit.
    Memory(usize),
    /// The query failed while running; the text is [`describe`]d for the caller.
    Failed(String),
}

impl Failure {
    /// One word for the kind of failure (metrics, MCP error data).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Refused(_) => "refused",
            Failure::Busy(_) => "busy",
            Failure::Timeout(_) => "timeout",
            Failure::Memory(_) => "memory",
            Failure::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(why) | Failure::Busy(why) | Failure::Failed(why) => f.write_str(why),
            Failure::Timeout(t) => write!(
                f,
                "query did not finish within {} ms (serve.query_timeout_ms) and was cancelled; \
                 narrow it",
                t.as_millis()
            ),
            Failure::Memory(limit) => write!(
                f,
                "query exceeded its memory limit of {} MB (serve.query_memory_mb) and was \
                 cancelled; narrow it or aggregate more",
                limit / MB
            ),
        }
    }
}

/// Runs callers' queries under [`Limits`].
#[derive(Debug)]
pub struct Sandbox {
    limits: Limits,
    total: Arc<Semaphore>,
    principals: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// What a query's work gets: its deadline and the session it must run in.
pub struct Budget {
    limits: Limits,
    deadline: Instant,
    /// Bytes this query's memory pool holds.
    pooled: Arc<AtomicUsize>,
}

impl Sandbox {
    pub fn new(limits: Limits) -> Sandbox {
        Sandbox {
            limits,
            total: Arc::new(Semaphore::new(limits.total)),
            principals: Mutex::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `work` for `principal` on the query runtime, within the limits. On timeout the
    /// work is aborted and given a moment to end, so what it held is freed before this returns.
    pub async fn run<T, W, F>(&self, principal: &str, work: W) -> Result<T, Failure>
    where
        T: Send + 'static,
        W: FnOnce(Budget) -> F,
        F: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let _mine = self.permit(principal).await?;
        let _any = tokio::time::timeout(self.limits.wait, self.total.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Failure::Busy(format!(
                    "the server is running its limit of {} queries (serve.query_concurrency); \
                     retry shortly",
                    self.limits.total
                ))
            })?;
        let started = Instant::now();
        let pooled = Arc::new(AtomicUsize::new(0));
        let budget = Budget {
            limits: self.limits,
            deadline: started + self.limits.timeout,
            pooled: pooled.clone(),
        };
        // On the query runtime, still within the caller's trace.
        let span = tracing::info_span!("datafusion.query", db.system = "datafusion", principal);
        let mut task =
            crate::runtime::sql().spawn(tracing::Instrument::instrument(work(budget), span));
        crate::telemetry::events::QueryStarted.emit();
        let outcome = match tokio::time::timeout(self.limits.timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Failure::Failed(format!(
                "the query stopped unexpectedly ({})",
                if join.is_panic() {
                    "it panicked"
                } else {
                    "it was cancelled"
                }
            ))),
            Err(_) => {
                task.abort();
                // The abort lands at the task's next yield, which its guards bring within a
                // batch; wait for it so its memory is back before we answer.
                if tokio::time::timeout(Duration::from_secs(2), &mut task)
                    .await
                    .is_err()
                {
                    tracing::warn!(principal, "a timed-out query did not stop within 2 s");
                }
                Err(Failure::Timeout(self.limits.timeout))
            }
        };
        // Operators the query spawned (repartitions, partitions) stop a moment after the query
        // itself; wait until they have let go of its memory.
        let released = Instant::now();
        while pooled.load(Ordering::Relaxed) > 0 && released.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        crate::telemetry::events::QueryFinished {
            seconds: started.elapsed().as_secs_f64(),
            failure: outcome.as_ref().err().map(Failure::reason),
        }
        .emit();
        outcome
    }

    async fn permit(&self, principal: &str) -> Result<OwnedSemaphorePermit, Failure> {
        let semaphore = self
            .principals
            .lock()
            .expect("poisoned")
            .entry(principal.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_principal)))
            .clone();
        tokio::time::timeout(self.limits.wait, semaphore.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Failure::Busy(format!(
                    "{principal} already runs {} queries at once (serve.query_per_principal) \
                     and none finished within {} ms; try again when one has",
                    self.limits.per_principal,
                    self.limits.wait.as_millis()
                ))
            })
    }
}

impl Budget {
    /// A session for one query: `shared`'s tables, functions and views, with this query's
    /// memory pool (no disk), small batches, bounded functions and guards between operators.
    pub fn session(&self, shared: &SessionContext) -> DfResult<SessionContext> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(MeteredPool::new(
                self.limits.memory,
                self.pooled.clone(),
            )))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let state = shared.state();
        // Never a fresh default catalog: it would replace the shared session's own in the
        // catalog list both sessions hold.
        // One partition per core, DataFusion's default, whatever the tools' sessions are
        // planned for (`serve.query_partitions`): the limits here were set for that plan shape.
        let config = state
            .config()
            .clone()
            .with_batch_size(BATCH_ROWS)
            .with_target_partitions(SessionConfig::new().target_partitions())
            .with_create_default_catalog_and_schema(false);
        let state = SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .with_runtime_env(runtime)
            .with_physical_optimizer_rule(Arc::new(Guards {
                deadline: self.deadline,
                batch_bytes: self.limits.batch_bytes(),
                timeout: self.limits.timeout,
            }))
            .build();
        let ctx = SessionContext::new_with_state(state);
        super::functions::register_bounded(&ctx, MAX_ROW_BYTES / 4);
        Ok(ctx)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Bytes held by the memory pools of running queries (all of them).
static POOLED: AtomicUsize = AtomicUsize::new(0);

/// Bytes the running queries' memory pools hold now.
pub fn pooled_bytes() -> usize {
    POOLED.load(Ordering::Relaxed)
}

/// A query's pool: DataFusion's greedy pool, counted into [`pooled_bytes`] and the query's own
/// count.
#[derive(Debug)]
struct MeteredPool {
    inner: GreedyMemoryPool,
    query: Arc<AtomicUsize>,
}

impl MeteredPool {
    fn new(limit: usize, query: Arc<AtomicUsize>) -> MeteredPool {
        MeteredPool {
            inner: GreedyMemoryPool::new(limit),
            query,
        }
    }

    fn add(&self, bytes: usize) {
        POOLED.fetch_add(bytes, Ordering::Relaxed);
        self.query.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        POOLED.fetch_sub(bytes, Ordering::Relaxed);
        self.query.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl fmt::Display for MeteredPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query pool ({})", self.inner)
    }
}

impl MemoryPool for MeteredPool {
    fn name(&self) -> &str {
        "millstream_query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.add(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.sub(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.inner.try_grow(reservation, additional)?;
        self.add(additional);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// Puts a [`GuardExec`] on every edge of a physical plan (and above its root). Runs last.
#[derive(Debug)]
struct Guards {
    deadline: Instant,
    batch_bytes: usize,
    timeout: Duration,
}

impl PhysicalOptimizerRule for Guards {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let guard = |input: Arc<dyn ExecutionPlan>, weights: Option<Vec<usize>>| {
            Arc::new(GuardExec {
                properties: input.properties().clone(),
                input,
                weights,
                deadline: self.deadline,
                batch_bytes: self.batch_bytes,
                timeout: self.timeout,
            }) as Arc<dyn ExecutionPlan>
        };
        let guarded = plan.transform_up(|node| {
            let children: Vec<Arc<dyn ExecutionPlan>> =
                node.children().into_iter().cloned().collect();
            if children.is_empty() {
                return Ok(Transformed::no(node));
            }
            // With one input, the operator's expressions read that input's columns: weigh
            // each column by how often they read it.
            let weights = (children.len() == 1).then(|| column_weights(&node, &children[0]));
            let children = children
                .into_iter()
                .map(|c| guard(c, weights.clone().flatten()))
                .collect();
            Ok(Transformed::yes(node.replace_children(
                children,
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
            )?))
        })?;
        Ok(guard(guarded.data, None))
    }

    fn name(&self) -> &str {
        "millstream_guards"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// How many times `node`'s expressions read each column of `input` (None: nothing to weigh).
fn column_weights(
    node: &Arc<dyn ExecutionPlan>,
    input: &Arc<dyn ExecutionPlan>,
) -> Option<Vec<usize>> {
    let width = input.schema().fields().len();
    let mut weights = vec![0usize; width];
    let mut any = false;
    let _ = node.apply_expressions(&mut |root: &Arc<dyn PhysicalExpr>| {
        root.apply(|e| {
            if let Some(c) = e.downcast_ref::<ColumnExpr>()
                && c.index() < width
            {
                weights[c.index()] += 1;
                any = true;
            }
            Ok(TreeNodeRecursion::Continue)
        })
    });
    any.then_some(weights)
}

/// Between two operators of a caller's query: fails the query past its deadline, or when a
/// batch, a row, or what the next operator's expressions could build from the batch is too
/// large; and spends the task's cooperative budget, so the task yields and can be aborted.
#[derive(Debug)]
struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    /// How often the consuming operator reads each column (for the estimate of what it builds).
    weights: Option<Vec<usize>>,
    deadline: Instant,
    batch_bytes: usize,
    timeout: Duration,
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GuardExec")
    }
}

impl ExecutionPlan for GuardExec {
    fn name(&self) -> &'static str {
        "GuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children.swap_remove(0);
        Ok(Arc::new(GuardExec {
            properties: input.properties().clone(),
            input,
            weights: self.weights.clone(),
            deadline: self.deadline,
            batch_bytes: self.batch_bytes,
            timeout: self.timeout,
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        Ok(Box::pin(GuardStream {
            input: self.input.execute(partition, context)?,
            weights: self.weights.clone(),
            deadline: self.deadline,
            batch_bytes: self.batch_bytes,
            timeout: self.timeout,
        }))
    }
}

struct GuardStream {
    input: SendableRecordBatchStream,
    weights: Option<Vec<usize>>,
    deadline: Instant,
    batch_bytes: usize,
    timeout: Duration,
}

impl GuardStream {
    fn check(&self, batch: &RecordBatch) -> DfResult<()> {
        let too_large = |what: String| {
            Err(DataFusionError::ResourcesExhausted(format!(
                "{what}, over the query's limit"
            )))
        };
        let bytes = batch.get_array_memory_size();
        if bytes > self.batch_bytes {
            return too_large(format!("a batch of {} MB", bytes / MB));
        }
        let widest = widest_row(batch);
        if widest > MAX_ROW_BYTES {
            return too_large(format!("a row of {} KB", widest / 1024));
        }
        if let Some(weights) = &self.weights {
            let built: usize = weights
                .iter()
                .zip(batch.columns())
                .map(|(w, c)| w.saturating_mul(variable_bytes(c.as_ref())))
                .fold(0usize, usize::saturating_add);
            if built > self.batch_bytes {
                return too_large(format!(
                    "an expression that could build {} MB from one batch",
                    built / MB
                ));
            }
        }
        Ok(())
    }
}

impl Stream for GuardStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(TimedOut(
                self.timeout,
            ))))));
        }
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let next = self.input.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(batch))) = &next {
            coop.made_progress();
            if let Err(e) = self.check(batch) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        next
    }
}

impl RecordBatchStream for GuardStream {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.input.schema()
    }
}

/// The deadline passed inside the query (told apart from other errors by [`describe`]).
#[derive(Debug)]
struct TimedOut(Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deadline of {} ms passed", self.0.as_millis())
    }
}

impl std::error::Error for TimedOut {}

/// Bytes of the variable-width values of `array` (0 for fixed-width types, which cannot grow).
fn variable_bytes(array: &dyn Array) -> usize {
    match array.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::Struct(_)
        | DataType::Map(_, _) => array.get_array_memory_size(),
        _ => 0,
    }
}

/// The most bytes any one row holds in the batch's text and binary columns (summed per row).
fn widest_row(batch: &RecordBatch) -> usize {
    let mut per_row = vec![0usize; batch.num_rows()];
    let mut any = false;
    for c in batch.columns() {
        let lengths: Box<dyn Iterator<Item = usize>> = match c.data_type() {
            DataType::Utf8 => Box::new(
                c.as_string::<i32>()
                    .offsets()
                    .windows(2)
                    .map(|w| (w[1] - w[0]) as usize),
            ),
            DataType::LargeUtf8 => Box::new(
                c.as_string::<i64>()
                    .offsets()
                    .windows(2)
                    .map(|w| (w[1] - w[0]) as usize),
            ),
            DataType::Binary => Box::new(
                c.as_binary::<i32>()
                    .offsets()
                    .windows(2)
                    .map(|w| (w[1] - w[0]) as usize),
            ),
            DataType::LargeBinary => Box::new(
                c.as_binary::<i64>()
                    .offsets()
                    .windows(2)
                    .map(|w| (w[1] - w[0]) as usize),
            ),
            DataType::Utf8View => Box::new(
                c.as_string_view()
                    .views()
                    .iter()
                    .map(|v| *v as u32 as usize),
            ),
            DataType::BinaryView => Box::new(
                c.as_binary_view()
                    .views()
                    .iter()
                    .map(|v| *v as u32 as usize),
            ),
            _ => continue,
        };
        any = true;
        for (row, len) in per_row.iter_mut().zip(lengths) {
            *row += len;
        }
    }
    if any {
        per_row.into_iter().max().unwrap_or(0)
    } else {
        0
    }
}

/// An execution error as the caller may read it: in full for a caller who sees every row of
/// what it reads; for a `restricted` one, only the kind of failure (a value in a message could
/// be another tenant's, or a masked one).
pub fn describe(e: &DataFusionError, limits: &Limits, restricted: bool) -> Failure {
    // The operator's log has the whole error; the caller gets what it may read.
    tracing::debug!(error = %e, restricted, "query failed");
    let root = e.find_root();
    if let DataFusionError::ResourcesExhausted(_) = root {
        return Failure::Memory(limits.memory);
    }
    if let DataFusionError::External(inner) = root {
        if inner.downcast_ref::<TimedOut>().is_some() {
            return Failure::Timeout(limits.timeout);
        }
        if let Some(t) = inner.downcast_ref::<super::functions::TooLarge>() {
            return Failure::Refused(if restricted {
                format!(
                    "{} would build a value over the limit of {} bytes in query_sql",
                    t.function, t.max
                )
            } else {
                t.to_string()
            });
        }
    }
    if !restricted {
        return Failure::Failed(format!("query failed: {e}"));
    }
    use arrow::error::ArrowError;
    let kind = match root {
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::DivideByZero => "division by zero",
            ArrowError::CastError(_) => "a value could not be cast to the requested type",
            ArrowError::ParseError(_) => "a value could not be parsed",
            ArrowError::ComputeError(_) => "a computation failed",
            ArrowError::ArithmeticOverflow(_) => "an arithmetic overflow",
            _ => "an Arrow error",
        },
        DataFusionError::Execution(_) => "an execution error",
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => "a planning error",
        DataFusionError::NotImplemented(_) => "something DataFusion does not support",
        _ => "an internal error",
    };
    Failure::Failed(format!(
        "query failed while running: {kind} (details are withheld because your rows are \
         filtered or masked; check types, divisors and casts)"
    ))
}
