//! Errors that say who is at fault and whether retrying can help (after arroyo's
//! `DataflowError`). Library code returns [`Error`]; `anyhow` is used only at the CLI edge.

use std::fmt;

/// A wait before retrying a [retryable](Error::retryable) failure, drawn from the upper half of
/// `wait` (uniformly between `wait / 2` and `wait`): two parties that failed together and back
/// off by the same rule retry at different moments.
pub fn jittered(wait: std::time::Duration) -> std::time::Duration {
    let half = wait / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Bad input from the user: configuration, arguments, definitions. Fix and rerun.
    User,
    /// A system we depend on: Kafka, storage. Often transient.
    External,
    /// A bug or broken invariant in millstream itself.
    Internal,
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Domain::User => "user",
            Domain::External => "external",
            Domain::Internal => "internal",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration is invalid:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<String>),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Another writer advanced a partition we think we own: our in-memory state is stale and
    /// must be reset from the Delta log (kafka-delta-ingest's `ConflictingOffsets`).
    #[error(
        "offsets in {table} moved under us for {app_id}: expected {expected:?}, found {found:?}"
    )]
    ConflictingOffsets {
        table: String,
        app_id: String,
        expected: Option<i64>,
        found: Option<i64>,
    },
    /// The Kafka log does not hold what Delta says comes next: a broker restarted without its
    /// data, a topic re-created, or retention deleted records never ingested. Not retried.
    #[error(
        "{topic}[{partition}]: Delta says the next record is at offset {next}, but the log holds offsets {low}..{high} — {why}. Set pipeline.offsets_out_of_range = \"reset-to-earliest\" to ingest the log from its start (records the old log had beyond what Delta stores are gone)"
    )]
    LogMismatch {
        topic: String,
        partition: i32,
        next: i64,
        low: i64,
        high: i64,
        why: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn delta(table: impl Into<String>, source: deltalake::DeltaTableError) -> Self {
        Error::Delta {
            table: table.into(),
            source,
        }
    }

    pub fn domain(&self) -> Domain {
        match self {
            Error::Config(_) | Error::Invalid(_) => Domain::User,
            Error::LogMismatch { .. } => Domain::External,
            Error::Kafka(_)
            | Error::Delta { .. }
            | Error::Io(_)
            | Error::ConflictingOffsets { .. } => Domain::External,
            Error::Arrow(_) | Error::DataFusion(_) | Error::Internal(_) => Domain::Internal,
        }
    }

    /// Whether the same operation may succeed if tried again.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Kafka(_) | Error::Io(_) | Error::ConflictingOffsets { .. } => true,
            Error::Delta { source, .. } => {
                matches!(
                    source,
                    deltalake::DeltaTableError::Transaction { .. }
                        | deltalake::DeltaTableError::VersionAlreadyExists(_)
                ) || storage_failed(source)
            }
            Error::DataFusion(e) => storage_failed(e),
            _ => false,
        }
    }

    /// Whether another writer's commit won the race for this one: the offsets moved under us,
    /// or Delta refused the commit for a concurrent one (same txn app ids, files it read or
    /// deleted). Nothing is lost — the winner's commit holds its records, and ours are read
    /// again from the Delta log — so a worker backs off and restarts without counting it as a
    /// failure of its own.
    pub fn lost_commit_race(&self) -> bool {
        use deltalake::DeltaTableError::{Transaction, VersionAlreadyExists};
        use deltalake::kernel::transaction::TransactionError::CommitConflict;
        matches!(
            self,
            Error::ConflictingOffsets { .. }
                | Error::Delta {
                    source: Transaction {
                        source: CommitConflict(_)
                    } | VersionAlreadyExists(_),
                    ..
                }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `error`, or an error it wraps, is the object store or the way to it failing (a
/// refused or dropped request, a response cut off mid-body, an I/O error): the same operation
/// may succeed later. Walks the whole chain, because the failure arrives wrapped differently
/// by each path to storage: a commit (`DeltaTableError::ObjectStore`), a log listing or
/// snapshot load (the kernel's `ObjectStore`, which names no source), a scan in a MERGE
/// (`DataFusionError::ObjectStore`, possibly inside `External` or `Context`).
fn storage_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    use deltalake::ObjectStoreError as Store;
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(store) = e.downcast_ref::<Store>() {
            // A store configured wrongly stays wrong; everything else may pass on a retry.
            return !matches!(
                store,
                Store::UnknownConfigurationKey { .. }
                    | Store::NotImplemented { .. }
                    | Store::NotSupported { .. }
                    | Store::InvalidPath { .. }
            );
        }
        if let Some(kernel) = e.downcast_ref::<delta_kernel::Error>() {
            match kernel {
                delta_kernel::Error::ObjectStore(store) => return storage_failed(store),
                // Its source is the boxed error, which `source()` would pass over.
                delta_kernel::Error::Backtraced { source, .. } => {
                    return storage_failed(source.as_ref());
                }
                delta_kernel::Error::IOError(_) | delta_kernel::Error::Reqwest(_) => return true,
                _ => {}
            }
        }
        if e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;
    use deltalake::{DeltaTableError, ObjectStoreError};

    /// A response cut off mid-body, as object_store reports it from S3.
    fn cut_off() -> ObjectStoreError {
        ObjectStoreError::Generic {
            store: "S3",
            source: Box::new(std::io::Error::other(
                "Error getting list response body: request or response body error",
            )),
        }
    }

    fn delta(source: DeltaTableError) -> Error {
        Error::delta("supply_chain.inventory_movements", source)
    }

    /// A storage failure is retried however it arrives wrapped: a worker that stopped on one
    /// (a log listing cut off while the store dropped connections) lost its partitions until
    /// someone restarted it.
    #[test]
    fn storage_failures_are_retryable_through_every_wrapping() {
        let kernel = |e| delta(DeltaTableError::KernelError(e));
        let cases = [
            (
                "commit",
                delta(DeltaTableError::ObjectStore { source: cut_off() }),
            ),
            (
                "log listing",
                kernel(delta_kernel::Error::ObjectStore(cut_off())),
            ),
            (
                "log listing with a backtrace",
                kernel(delta_kernel::Error::Backtraced {
                    source: Box::new(delta_kernel::Error::ObjectStore(cut_off())),
                    backtrace: Box::new(std::backtrace::Backtrace::disabled()),
                }),
            ),
            (
                "kernel I/O",
                kernel(delta_kernel::Error::IOError(std::io::Error::other("reset"))),
            ),
            (
                "scan in a MERGE",
                Error::DataFusion(DataFusionError::External(Box::new(
                    DataFusionError::ObjectStore(Box::new(cut_off())),
                ))),
            ),
            (
                "scan with context",
                Error::DataFusion(DataFusionError::Context(
                    "reading a data file".into(),
                    Box::new(DataFusionError::IoError(std::io::Error::other("reset"))),
                )),
            ),
        ];
        for (path, e) in cases {
            assert!(e.retryable(), "{path}: {e}");
            assert!(!e.lost_commit_race(), "{path}: {e}");
        }
    }

    /// What a retry cannot cure is not retried: a wrong store configuration, a broken table,
    /// a query or plan error.
    #[test]
    fn errors_a_retry_cannot_cure_are_not_retryable() {
        let cases = [
            delta(DeltaTableError::ObjectStore {
                source: ObjectStoreError::UnknownConfigurationKey {
                    store: "S3",
                    key: "aws_endpint".into(),
                },
            }),
            delta(DeltaTableError::KernelError(delta_kernel::Error::Generic(
                "invalid log".into(),
            ))),
            delta(DeltaTableError::NotInitialized),
            Error::DataFusion(DataFusionError::Plan("no such column".into())),
            Error::DataFusion(DataFusionError::External(Box::new(
                DataFusionError::Execution("divide by zero".into()),
            ))),
        ];
        for e in cases {
            assert!(!e.retryable(), "{e}");
        }
    }
}
