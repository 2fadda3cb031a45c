//! Errors that say who is at fault and whether retrying can help (after arroyo's
//! `DataflowError`). Library code returns [`Error`]; `anyhow` is used only at the CLI edge.

use std::fmt;

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
            Error::Delta { source, .. } => matches!(
                source,
                deltalake::DeltaTableError::ObjectStore { .. }
                    | deltalake::DeltaTableError::Transaction { .. }
                    | deltalake::DeltaTableError::VersionAlreadyExists(_)
            ),
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
