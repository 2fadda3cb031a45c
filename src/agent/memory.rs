//! Conversation memory in `ops.conversations`: every message of every turn, appended in one
//! Delta commit per turn, read back by principal and conversation id. A conversation belongs to
//! its principal: the same id under another principal is another (empty) conversation, so a
//! guessed id reveals nothing.
//!
//! Past a token budget the oldest turns are summarized by the model; the summary is appended
//! as a row (role `summary`, `turn` = the last turn it covers) and stands in for those turns
//! from then on. The log itself is never rewritten.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use chrono::Utc;
use datafusion::scalar::ScalarValue;

use super::llm::Message;
use crate::lakehouse::Lakehouse;
use crate::model::tables;

pub const TABLE: &str = "ops.conversations";

/// A conversation as the agent continues it.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub id: String,
    pub principal: String,
    /// What the summarized turns said, if any were.
    pub summary: Option<String>,
    /// The turns after the summary: (turn number, its messages).
    pub turns: Vec<(i64, Vec<Message>)>,
    /// The last turn number (summarized or not).
    pub last_turn: i64,
}

impl Conversation {
    /// The messages to give the model before the next user message.
    pub fn history(&self) -> Vec<Message> {
        let mut out = Vec::new();
        if let Some(s) = &self.summary {
            out.push(Message::system(format!(
                "Summary of the earlier part of this conversation: {s}"
            )));
        }
        out.extend(self.turns.iter().flat_map(|(_, m)| m.iter().cloned()));
        out
    }

    /// A rough token count of the history (4 characters a token).
    pub fn tokens(&self) -> usize {
        let summary = self.summary.as_deref().map_or(0, str::len);
        let chars: usize = self
            .turns
            .iter()
            .flat_map(|(_, m)| m)
            .map(|m| {
                m.content.as_deref().map_or(0, str::len)
                    + m.tool_calls
                        .iter()
                        .map(|c| c.function.arguments.len() + c.function.name.len())
                        .sum::<usize>()
            })
            .sum();
        (summary + chars) / 4
    }
}

/// A conversation id: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_id(id: &str) -> crate::Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(crate::Error::Invalid(format!(
            "conversation id {id:?} must be 1 to 64 characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

/// A fresh conversation id (time-ordered, unguessable enough to not collide).
pub fn new_id() -> String {
    format!(
        "c{}-{:08x}",
        Utc::now().format("%Y%m%d%H%M%S"),
        rand::random::<u32>()
    )
}

/// One stored message (or summary) of a conversation.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    principal: String,
    turn: i64,
    seq: i32,
    role: String,
    message: String,
    ts: chrono::DateTime<Utc>,
}

/// Rows appended but not yet committed, shared with the writer task.
#[derive(Default)]
struct Pending {
    rows: std::sync::Mutex<Vec<Row>>,
    wake: tokio::sync::Notify,
    /// One flush at a time, so no row is committed twice.
    flushing: tokio::sync::Mutex<()>,
}

/// How often the writer of a [`Memory::buffered`] commits what was appended.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Clone)]
pub struct Memory {
    lake: Lakehouse,
    /// Write-behind: appended rows wait here for the writer's next commit.
    pending: Option<Arc<Pending>>,
}

impl Memory {
    /// Memory that commits each turn as it is appended (one user at a time: the CLI).
    pub fn new(lake: Lakehouse) -> Self {
        Memory {
            lake,
            pending: None,
        }
    }

    /// Memory for many concurrent conversations (`/agent/turn`, benchmarks): appends return at
    /// once and one writer task commits every turn appended in the last 200 ms in one Delta
    /// commit, instead of each turn racing the others for the table's next version (at 20
    /// sessions those commits ran out of retries). Loads see appended rows before they are
    /// committed. What is appended in the last 200 ms before the process dies is lost — the
    /// conversation, never an action (actions are on Kafka before their tool answers).
    pub fn buffered(lake: Lakehouse) -> Self {
        let memory = Memory {
            lake,
            pending: Some(Arc::new(Pending::default())),
        };
        let writer = memory.clone();
        tokio::spawn(async move {
            let pending = writer.pending.clone().expect("buffered");
            loop {
                let _ = tokio::time::timeout(FLUSH_EVERY, pending.wake.notified()).await;
                // A moment for the turns finishing with this one to join its commit.
                tokio::time::sleep(FLUSH_EVERY / 4).await;
                if let Err(e) = writer.flush().await {
                    tracing::warn!(error = %e, "writing {TABLE}; retried at the next flush");
                }
                // The writer's two handles are the last: every user of this memory is gone.
                if Arc::strong_count(&pending) <= 2 {
                    return;
                }
            }
        });
        memory
    }

    /// Commits every row appended so far (a no-op for unbuffered memory).
    pub async fn flush(&self) -> crate::Result<()> {
        let Some(p) = &self.pending else {
            return Ok(());
        };
        let _one = p.flushing.lock().await;
        let rows: Vec<Row> = p.rows.lock().expect("poisoned").clone();
        if rows.is_empty() {
            return Ok(());
        }
        self.write(&rows).await?;
        // Rows appended meanwhile were pushed behind these.
        p.rows.lock().expect("poisoned").drain(..rows.len());
        Ok(())
    }

    /// The conversation `id` of `principal` (empty when it has none by that id).
    pub async fn load(&self, principal: &str, id: &str) -> crate::Result<Conversation> {
        check_id(id)?;
        let mut conversation = Conversation {
            id: id.to_string(),
            principal: principal.to_string(),
            ..Default::default()
        };
        // (turn, seq, role) → message: committed rows, then rows still waiting (a row in both
        // between a commit and its removal from the buffer counts once).
        let mut rows: BTreeMap<(i64, i32, String), String> = BTreeMap::new();
        if self.lake.exists(TABLE).await? {
            let ctx = self.lake.session().await?;
            let batches = ctx
                .sql(&format!(
                    "SELECT turn, seq, role, message FROM {TABLE} \
                     WHERE principal = $1 AND conversation_id = $2"
                ))
                .await?
                .with_param_values(vec![ScalarValue::from(principal), ScalarValue::from(id)])?
                .collect()
                .await?;
            for b in &batches {
                // Strings may come back as views: read every column through one type.
                let column =
                    |i: usize, t: &arrow::datatypes::DataType| arrow::compute::cast(b.column(i), t);
                let turn = column(0, &arrow::datatypes::DataType::Int64)?;
                let seq = column(1, &arrow::datatypes::DataType::Int32)?;
                let role = column(2, &arrow::datatypes::DataType::Utf8)?;
                let msg = column(3, &arrow::datatypes::DataType::Utf8)?;
                let turn = turn.as_any().downcast_ref::<Int64Array>().expect("Int64");
                let seq = seq.as_any().downcast_ref::<Int32Array>().expect("Int32");
                let role = role.as_any().downcast_ref::<StringArray>().expect("Utf8");
                let msg = msg.as_any().downcast_ref::<StringArray>().expect("Utf8");
                for i in 0..b.num_rows() {
                    rows.insert(
                        (turn.value(i), seq.value(i), role.value(i).to_string()),
                        msg.value(i).to_string(),
                    );
                }
            }
        }
        if let Some(p) = &self.pending {
            for r in p.rows.lock().expect("poisoned").iter() {
                if r.principal == principal && r.id == id {
                    rows.insert((r.turn, r.seq, r.role.clone()), r.message.clone());
                }
            }
        }
        // The newest summary covers everything up to its turn.
        let cut = rows
            .iter()
            .filter(|((_, _, r), _)| r == "summary")
            .map(|((t, _, _), m)| (*t, m.clone()))
            .max_by_key(|(t, _)| *t);
        if let Some((t, text)) = &cut {
            conversation.summary = Some(text.clone());
            conversation.last_turn = *t;
        }
        for ((turn, _, role), message) in rows {
            conversation.last_turn = conversation.last_turn.max(turn);
            if role == "summary" || cut.as_ref().is_some_and(|(t, _)| turn <= *t) {
                continue;
            }
            let message: Message = serde_json::from_str(&message).map_err(|e| {
                crate::Error::Internal(format!("{TABLE}: a stored message is not readable: {e}"))
            })?;
            match conversation.turns.last_mut() {
                Some((t, ms)) if *t == turn => ms.push(message),
                _ => conversation.turns.push((turn, vec![message])),
            }
        }
        Ok(conversation)
    }

    /// Appends one turn's messages as turn `conversation.last_turn + 1` and adds it to
    /// `conversation`.
    pub async fn append_turn(
        &self,
        conversation: &mut Conversation,
        messages: Vec<Message>,
    ) -> crate::Result<()> {
        let turn = conversation.last_turn + 1;
        let rows = messages
            .iter()
            .enumerate()
            .map(|(seq, m)| {
                row(
                    conversation,
                    turn,
                    seq as i32,
                    &m.role,
                    serde_json::to_string(m).expect("messages serialize"),
                )
            })
            .collect();
        self.store(rows).await?;
        conversation.last_turn = turn;
        conversation.turns.push((turn, messages));
        Ok(())
    }

    /// Records `summary` as standing in for every turn up to `upto`, and drops those turns
    /// from `conversation`.
    pub async fn summarize(
        &self,
        conversation: &mut Conversation,
        upto: i64,
        summary: String,
    ) -> crate::Result<()> {
        self.store(vec![row(conversation, upto, 0, "summary", summary.clone())])
            .await?;
        conversation.summary = Some(summary);
        conversation.turns.retain(|(t, _)| *t > upto);
        Ok(())
    }

    async fn store(&self, rows: Vec<Row>) -> crate::Result<()> {
        match &self.pending {
            Some(p) => {
                p.rows.lock().expect("poisoned").extend(rows);
                p.wake.notify_one();
                Ok(())
            }
            None => self.write(&rows).await,
        }
    }

    async fn write(&self, rows: &[Row]) -> crate::Result<()> {
        let def = tables::get(TABLE)?;
        let text = |f: &dyn Fn(&Row) -> &str| -> Arc<StringArray> {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let batch = RecordBatch::try_new(
            def.arrow_schema(),
            vec![
                text(&|r| &r.id),
                text(&|r| &r.principal),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.turn))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.seq))),
                text(&|r| &r.role),
                text(&|r| &r.message),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|r| r.ts.timestamp_micros()),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| {
                    (r.ts.date_naive() - chrono::NaiveDate::default()).num_days() as i32
                }))),
            ],
        )?;
        let table = self.lake.ensure(TABLE).await?;
        crate::lakehouse::commit::append(
            table,
            TABLE,
            "agent-memory",
            vec![batch],
            &Default::default(),
            128 << 20,
        )
        .await?;
        Ok(())
    }
}

fn row(c: &Conversation, turn: i64, seq: i32, role: &str, message: String) -> Row {
    Row {
        id: c.id.clone(),
        principal: c.principal.clone(),
        turn,
        seq,
        role: role.to_string(),
        message,
        ts: Utc::now(),
    }
}

/// Turns to summarize so the history fits `budget` tokens: every turn but the newest two, once
/// the history is over budget; `None` while it fits.
pub fn turns_to_summarize(conversation: &Conversation, budget: usize) -> Option<i64> {
    if conversation.tokens() <= budget || conversation.turns.len() <= 2 {
        return None;
    }
    Some(conversation.turns[conversation.turns.len() - 3].0)
}

/// The text the model is asked to summarize: the earlier summary and the turns up to `upto`,
/// tool results shortened.
pub fn transcript(conversation: &Conversation, upto: i64) -> String {
    let mut out = String::new();
    if let Some(s) = &conversation.summary {
        out.push_str(&format!("Earlier summary: {s}\n"));
    }
    for (turn, messages) in conversation.turns.iter().filter(|(t, _)| *t <= upto) {
        for m in messages {
            let text = match (&m.content, m.tool_calls.is_empty()) {
                (Some(c), _) => super::turn::truncate(c, 600),
                (None, false) => m
                    .tool_calls
                    .iter()
                    .map(|c| format!("calls {}({})", c.function.name, c.function.arguments))
                    .collect::<Vec<_>>()
                    .join("; "),
                (None, true) => continue,
            };
            out.push_str(&format!("[turn {turn}] {}: {text}\n", m.role));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Turns are stored and read back in order; another principal's conversation with the same
    /// id is not loaded; a summary stands in for the turns it covers from then on.
    #[tokio::test]
    async fn turns_persist_per_principal_and_summaries_replace_old_turns() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Memory::new(Lakehouse::new(dir.path()).unwrap());
        let mut c = memory.load("maria@emea", "c1").await.unwrap();
        assert!(c.turns.is_empty());
        for i in 1..=4 {
            memory
                .append_turn(
                    &mut c,
                    vec![
                        Message::user(format!("q{i}")),
                        Message::assistant(format!("a{i}")),
                    ],
                )
                .await
                .unwrap();
        }
        let back = memory.load("maria@emea", "c1").await.unwrap();
        assert_eq!(back.last_turn, 4);
        assert_eq!(back.history(), c.history());
        assert_eq!(back.history()[6].content.as_deref(), Some("q4"));

        assert!(
            memory
                .load("tom@amer", "c1")
                .await
                .unwrap()
                .turns
                .is_empty()
        );
        assert!(memory.load("maria@emea", "c1' OR 1=1 --").await.is_err());

        assert_eq!(turns_to_summarize(&back, 1_000_000), None);
        let upto = turns_to_summarize(&back, 1).unwrap();
        assert_eq!(upto, 2);
        assert!(transcript(&back, upto).contains("[turn 2] assistant: a2"));
        assert!(!transcript(&back, upto).contains("q3"));
        memory
            .summarize(&mut c, upto, "asked q1, q2".into())
            .await
            .unwrap();
        let back = memory.load("maria@emea", "c1").await.unwrap();
        assert_eq!(back.summary.as_deref(), Some("asked q1, q2"));
        assert_eq!(
            back.turns.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(back.last_turn, 4);
        assert!(
            back.history()[0]
                .content
                .as_deref()
                .unwrap()
                .contains("asked q1, q2")
        );
    }

    /// Buffered memory: a turn is visible to loads at once, and committed by the writer
    /// shortly after (or on flush), once.
    #[tokio::test]
    async fn buffered_turns_are_visible_at_once_and_committed_once() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lakehouse::new(dir.path()).unwrap();
        let memory = Memory::buffered(lake.clone());
        let mut c = memory.load("alice@emea", "b1").await.unwrap();
        memory
            .append_turn(&mut c, vec![Message::user("q"), Message::assistant("a")])
            .await
            .unwrap();
        assert_eq!(memory.load("alice@emea", "b1").await.unwrap().last_turn, 1);
        memory.flush().await.unwrap();
        memory.flush().await.unwrap();
        let committed = Memory::new(lake.clone())
            .load("alice@emea", "b1")
            .await
            .unwrap();
        assert_eq!(committed.history(), c.history());
        assert_eq!(lake.count_rows(TABLE).await.unwrap(), 2);
        // The writer commits without being asked.
        memory
            .append_turn(&mut c, vec![Message::user("q2")])
            .await
            .unwrap();
        for _ in 0..50 {
            if lake.count_rows(TABLE).await.unwrap() == 3 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the writer did not commit the second turn");
    }
}
