//! Pipeline definitions: `pipelines/<name>.toml` names the input, the SQL file and the sink.
//!
//! ```toml
//! description = "…"
//! sql = "shortage_signals.sql"
//! [input]
//! tables = ["supply_chain.inventory", …]   # recomputed when any of them has a new version
//! # batch = "supply_chain.inventory_movements"   # or: each micro-batch's new rows, as `batch`
//! # filter = "kind = 'incident'"                # with `batch`: only the rows this holds for
//! # after = ["other_pipeline"]                   # run after these in a round
//! [sink]
//! table = "supply_chain.shortage_signals"
//! mode = "replace"                          # replace | append | merge (with key, update, insert)
//! # delete = "source.op = 'delete'"         # merge only: matched rows this holds for are deleted
//! # [incremental]                           # `tables` + replace only: recompute changed keys
//! # key = ["part_id", "warehouse_id"]       # one sink row per key
//! # clock = "clock"                         # the CTE every time-dependent term reads
//! # keyed = ["supply_chain.inventory", …]   # inputs read for the due keys only
//! # [incremental.touches]                   # other inputs: their CDF rows (`changes`) → keys
//! # "supply_chain.shipments" = "SELECT part_id, warehouse_id FROM changes"
//! ```
//!
//! See [`super::incremental`] for what `[incremental]` promises and when a pipeline still runs
//! in full.
//!
//! Loading checks everything before anything runs, and reports every problem at once with the
//! file and line it is on: unknown keys and tables, missing SQL files, SQL that does not parse or
//! plan against the catalog, and result columns that do not fit the sink table. The built-in
//! definitions (this repository's `pipelines/`) are embedded in the binary; `pipeline.definitions`
//! points at a directory to load instead.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::model::tables;

// `PIPELINE_FILES` and `VIEW_FILES`: the files of `pipelines/` and `pipelines/views/`, found by
// build.rs.
include!(concat!(env!("OUT_DIR"), "/pipeline_files.rs"));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    description: String,
    sql: Spanned<String>,
    input: RawInput,
    sink: RawSink,
    incremental: Option<RawIncremental>,
}

/// `[incremental]`: see [`super::incremental`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncremental {
    key: Vec<Spanned<String>>,
    clock: Spanned<String>,
    #[serde(default)]
    keyed: Vec<Spanned<String>>,
    #[serde(default)]
    touches: BTreeMap<Spanned<String>, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[serde(default)]
    tables: Vec<Spanned<String>>,
    batch: Option<Spanned<String>>,
    /// With `batch`: a predicate over its columns; `batch` holds only the rows it keeps.
    filter: Option<Spanned<String>>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    table: Spanned<String>,
    mode: Spanned<SinkMode>,
    #[serde(default)]
    key: Vec<Spanned<String>>,
    #[serde(default)]
    update: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    insert: BTreeMap<Spanned<String>, String>,
    /// Merge only: a predicate over `source` and `target`; matched rows it holds for are
    /// deleted (before any update), and source rows it holds for are never inserted.
    delete: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// The result is the table's whole new content.
    Replace,
    /// The result is appended.
    Append,
    /// The result is merged by key: matched rows updated, others inserted.
    Merge,
}

/// What kind of pipeline a definition is, by what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Run by the micro-batch worker on each micro-batch's new rows of this table (registered
    /// as `batch`, only those the filter keeps when there is one), its result merged into the
    /// sink in the batch's commit.
    Batch(String, Option<String>),
    /// Recomputed by the deriver from these tables when any of them changes.
    Derived(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Sink {
    pub table: String,
    pub mode: SinkMode,
    pub key: Vec<String>,
    pub update: BTreeMap<String, String>,
    pub insert: BTreeMap<String, String>,
    pub delete: Option<String>,
}

impl Sink {
    /// How a `merge` sink applies its result.
    pub fn merge_spec(&self) -> crate::lakehouse::commit::MergeSpec {
        crate::lakehouse::commit::MergeSpec {
            key: self.key.clone(),
            update: self.update.clone(),
            insert: self.insert.clone(),
            delete: self.delete.clone(),
        }
    }
}

/// One checked pipeline definition.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    pub description: String,
    pub kind: Kind,
    pub after: Vec<String>,
    /// The SQL file name, for messages.
    pub sql_file: String,
    pub sql: String,
    pub sink: Sink,
    /// Derived pipelines that recompute only the keys their inputs' changes touch.
    pub incremental: Option<super::incremental::Incremental>,
}

/// All pipeline definitions and views, in run order (a pipeline after the ones it names).
#[derive(Debug, Clone)]
pub struct Definitions {
    pub pipelines: Vec<Definition>,
    /// View name → SQL (`pipelines/views/<name>.sql`).
    pub views: BTreeMap<String, String>,
}

/// Reads the files of `dir` ending in one of `suffixes` into `files`, named `prefix + name`.
fn read_files(
    dir: &Path,
    prefix: &str,
    suffixes: &[&str],
    files: &mut BTreeMap<String, String>,
) -> Result<()> {
    let unreadable = |p: &Path, e: std::io::Error| {
        Error::Config(vec![format!("{}: cannot read: {e}", p.display())])
    };
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if suffixes.iter().any(|s| name.ends_with(s)) {
            let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e))?;
            files.insert(format!("{prefix}{name}"), text);
        }
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Definitions {
    /// No pipelines and no views.
    pub fn empty() -> Definitions {
        Definitions {
            pipelines: Vec::new(),
            views: BTreeMap::new(),
        }
    }

    /// The definitions compiled into the binary, checked once per process (the runner asks on
    /// every restart, the deriver and `eval` too).
    pub async fn built_in() -> Result<Definitions> {
        static CHECKED: tokio::sync::OnceCell<Definitions> = tokio::sync::OnceCell::const_new();
        CHECKED
            .get_or_try_init(|| async {
                let files: BTreeMap<String, String> = PIPELINE_FILES
                    .iter()
                    .chain(VIEW_FILES)
                    .map(|(n, t)| (n.to_string(), t.to_string()))
                    .collect();
                Self::from_files(&files).await
            })
            .await
            .cloned()
    }

    /// Loads `dir/*.toml`, the SQL files they name and `dir/views/*.sql`.
    pub async fn load_dir(dir: &Path) -> Result<Definitions> {
        let mut files = BTreeMap::new();
        read_files(dir, "", &[".toml", ".sql"], &mut files)?;
        let views = dir.join("views");
        if views.is_dir() {
            read_files(&views, "views/", &[".sql"], &mut files)?;
        }
        Self::from_files(&files).await
    }

    /// `pipeline.definitions` from the config: a directory, or built-in when empty.
    pub async fn from_config(dir: &str) -> Result<Definitions> {
        if dir.is_empty() {
            Self::built_in().await
        } else {
            Self::load_dir(Path::new(dir)).await
        }
    }

    /// Parses and checks a set of files (name relative to `pipelines/` → contents).
    pub async fn from_files(files: &BTreeMap<String, String>) -> Result<Definitions> {
        let mut problems = Vec::new();
        let mut pipelines = Vec::new();
        for (file, text) in files.iter().filter(|(f, _)| f.ends_with(".toml")) {
            match parse(file, text, files) {
                Ok(def) => pipelines.push(def),
                Err(p) => problems.extend(p),
            }
        }
        let views: BTreeMap<String, String> = files
            .iter()
            .filter_map(|(f, t)| {
                f.strip_prefix("views/")
                    .and_then(|n| n.strip_suffix(".sql"))
                    .map(|n| (n.to_string(), t.clone()))
            })
            .collect();
        let names: Vec<String> = pipelines.iter().map(|d| d.name.clone()).collect();
        for d in &pipelines {
            for a in &d.after {
                if !names.contains(a) {
                    problems.push(format!(
                        "pipelines/{}.toml: `after` names unknown pipeline {a:?}",
                        d.name
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let defs = Definitions {
            pipelines: order(pipelines)?,
            views,
        };
        let problems = defs.check_sql().await;
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        Ok(defs)
    }

    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.pipelines.iter().find(|d| d.name == name)
    }

    /// The pipelines fed by micro-batches of `table` (each merges into its own sink).
    pub fn batch_pipelines<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a Definition> {
        self.pipelines
            .iter()
            .filter(move |d| matches!(&d.kind, Kind::Batch(t, _) if t == table))
    }

    /// Plans every SQL file against empty copies of the tables it may read — its input tables
    /// (or its micro-batch) and its sink, as it will run — and checks its result against the
    /// sink table, without touching any data. SQL naming any other table fails here.
    async fn check_sql(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for def in &self.pipelines {
            let result: Result<SchemaRef> = async {
                let mut readable: Vec<&str> = vec![def.sink.table.as_str()];
                if let Kind::Derived(inputs) = &def.kind {
                    readable.extend(inputs.iter().map(String::as_str));
                }
                let mut ctx = super::session::with_tables(|t| {
                    Ok(readable.contains(&t.name.as_str()).then(|| {
                        std::sync::Arc::new(datafusion::datasource::empty::EmptyTable::new(
                            t.arrow_schema(),
                        ))
                            as std::sync::Arc<dyn datafusion::catalog::TableProvider>
                    }))
                })?;
                if let Kind::Batch(t, filter) = &def.kind {
                    let schema = tables::get(t)?.arrow_schema();
                    ctx = super::session::with_batch(&ctx, schema, Vec::new(), filter.as_deref())?;
                }
                let df = ctx.sql(&def.sql).await?;
                if let Some(inc) = &def.incremental {
                    check_incremental(&ctx, def, inc).await?;
                }
                Ok(Arc::new(df.schema().as_arrow().clone()))
            }
            .await;
            match result {
                Ok(schema) => problems.extend(def.check_output(&schema)),
                Err(e) => problems.push(format!("pipelines/{}: {e}", def.sql_file)),
            }
        }
        for (name, sql) in &self.views {
            let r: Result<()> = async {
                let ctx = super::session::memory(&BTreeMap::new())?;
                ctx.sql(sql).await?;
                Ok(())
            }
            .await;
            if let Err(e) = r {
                problems.push(format!("pipelines/views/{name}.sql: {e}"));
            }
        }
        problems
    }
}

impl Definition {
    /// Result columns against the sink: every column the sink needs, of a type that casts.
    fn check_output(&self, out: &SchemaRef) -> Vec<String> {
        let mut problems = Vec::new();
        let Ok(sink) = tables::get(&self.sink.table) else {
            return problems;
        };
        let file = format!("pipelines/{}", self.sql_file);
        let need: Vec<&str> = match self.sink.mode {
            SinkMode::Merge => self.sink.key.iter().map(String::as_str).collect(),
            _ => sink.columns.iter().map(|c| c.name.as_str()).collect(),
        };
        for col in need {
            let Some(def) = sink.column(col) else {
                continue;
            };
            match out.field_with_name(col) {
                Err(_) => problems.push(format!(
                    "{file}: the result has no column {col:?}, which {} needs",
                    self.sink.table
                )),
                Ok(f) => {
                    if !castable(f.data_type(), &def.ty.arrow()) {
                        problems.push(format!(
                            "{file}: column {col:?} is {}, {} holds {}",
                            f.data_type(),
                            self.sink.table,
                            def.ty.arrow()
                        ));
                    }
                }
            }
        }
        if self.sink.mode != SinkMode::Merge {
            for f in out.fields() {
                if sink.column(f.name()).is_none() {
                    problems.push(format!(
                        "{file}: result column {:?} is not a column of {}",
                        f.name(),
                        self.sink.table
                    ));
                }
            }
        }
        problems
    }
}

/// The clock CTE exists and plans alone; each input's `touches` plans over its changes and
/// gives the key columns.
async fn check_incremental(
    ctx: &datafusion::prelude::SessionContext,
    def: &Definition,
    inc: &super::incremental::Incremental,
) -> Result<()> {
    let stmt = super::incremental::cte_statement(ctx, &def.sql, &inc.clock)?;
    ctx.state().statement_to_plan(stmt).await?;
    let Kind::Derived(inputs) = &def.kind else {
        return Ok(());
    };
    for input in inputs {
        let Some(touches) = inc.touches_sql(input) else {
            continue;
        };
        let mut fields: Vec<datafusion::arrow::datatypes::Field> = tables::get(input)?
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(datafusion::arrow::datatypes::Field::new(
            "_change_type",
            DataType::Utf8,
            false,
        ));
        fields.push(datafusion::arrow::datatypes::Field::new(
            "_commit_version",
            DataType::Int64,
            false,
        ));
        let changes = Arc::new(datafusion::datasource::empty::EmptyTable::new(Arc::new(
            datafusion::arrow::datatypes::Schema::new(fields),
        )));
        let planned = super::session::with_unqualified(ctx, "changes", changes)?
            .sql(&touches)
            .await;
        let out = planned
            .map_err(|e| Error::Invalid(format!("[incremental] touches of {input}: {e}")))?;
        for k in &inc.key {
            if out.schema().field_with_unqualified_name(k).is_err() {
                return Err(Error::Invalid(format!(
                    "[incremental] touches of {input}: the result has no key column {k:?}"
                )));
            }
        }
    }
    Ok(())
}

fn castable(from: &DataType, to: &DataType) -> bool {
    from == to || from == &DataType::Null || arrow::compute::can_cast_types(from, to)
}

/// Puts each pipeline after the ones it names in `after` (the file order otherwise).
fn order(mut defs: Vec<Definition>) -> Result<Vec<Definition>> {
    let mut out: Vec<Definition> = Vec::new();
    while !defs.is_empty() {
        let ready = defs
            .iter()
            .position(|d| d.after.iter().all(|a| out.iter().any(|o| &o.name == a)))
            .ok_or_else(|| {
                Error::Config(vec![format!(
                    "pipelines: `after` forms a cycle among {:?}",
                    defs.iter().map(|d| &d.name).collect::<Vec<_>>()
                )])
            })?;
        out.push(defs.remove(ready));
    }
    Ok(out)
}

fn parse(
    file: &str,
    text: &str,
    files: &BTreeMap<String, String>,
) -> std::result::Result<Definition, Vec<String>> {
    let path = format!("pipelines/{file}");
    let raw: RawDefinition = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        vec![format!("{path}{at}: {}", e.message())]
    })?;
    let mut problems = Vec::new();
    let at = |span: std::ops::Range<usize>| format!("{path}:{}", line_of(text, span.start));
    let known_table = |t: &Spanned<String>, problems: &mut Vec<String>| {
        if tables::get(t.get_ref()).is_err() {
            problems.push(format!("{}: unknown table {:?}", at(t.span()), t.get_ref()));
        }
    };
    for t in &raw.input.tables {
        known_table(t, &mut problems);
    }
    if let Some(t) = &raw.input.batch {
        known_table(t, &mut problems);
    }
    let input = match (&raw.input.batch, raw.input.tables.is_empty()) {
        (Some(b), true) => Kind::Batch(
            b.get_ref().clone(),
            raw.input.filter.as_ref().map(|f| f.get_ref().clone()),
        ),
        (None, false) => Kind::Derived(
            raw.input
                .tables
                .iter()
                .map(|t| t.get_ref().clone())
                .collect(),
        ),
        _ => {
            problems.push(format!(
                "{path}: [input] needs exactly one of `tables` or `batch`"
            ));
            Kind::Derived(Vec::new())
        }
    };
    if let (Some(f), None) = (&raw.input.filter, &raw.input.batch) {
        problems.push(format!(
            "{}: `filter` applies only to a `batch` input",
            at(f.span())
        ));
    }
    known_table(&raw.sink.table, &mut problems);
    let sink_def = tables::get(raw.sink.table.get_ref()).ok();
    let column = |c: &Spanned<String>, what: &str, problems: &mut Vec<String>| {
        if let Some(def) = sink_def
            && def.column(c.get_ref()).is_none()
        {
            problems.push(format!(
                "{}: {what} {:?} is not a column of {}",
                at(c.span()),
                c.get_ref(),
                def.name
            ));
        }
    };
    for k in &raw.sink.key {
        column(k, "key", &mut problems);
    }
    for c in raw.sink.update.keys() {
        column(c, "update column", &mut problems);
    }
    for c in raw.sink.insert.keys() {
        column(c, "insert column", &mut problems);
    }
    // Merge expressions are planned only when a merge runs: parse them now.
    let expressions = raw
        .sink
        .update
        .iter()
        .chain(&raw.sink.insert)
        .map(|(c, e)| (c.span(), e.as_str()))
        .chain(
            raw.sink
                .delete
                .iter()
                .map(|d| (d.span(), d.get_ref().as_str())),
        );
    for (span, e) in expressions {
        let parsed = datafusion::sql::sqlparser::parser::Parser::new(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
        )
        .try_with_sql(e)
        .and_then(|mut p| p.parse_expr());
        if let Err(err) = parsed {
            problems.push(format!(
                "{}: expression {e:?} does not parse: {err}",
                at(span)
            ));
        }
    }
    let mode = *raw.sink.mode.get_ref();
    if mode == SinkMode::Merge
        && (raw.sink.key.is_empty() || (raw.sink.update.is_empty() && raw.sink.insert.is_empty()))
    {
        problems.push(format!(
            "{}: mode \"merge\" needs `key` and [sink.update] or [sink.insert]",
            at(raw.sink.mode.span())
        ));
    }
    if mode != SinkMode::Merge
        && !(raw.sink.update.is_empty() && raw.sink.insert.is_empty() && raw.sink.delete.is_none())
    {
        problems.push(format!(
            "{}: [sink.update], [sink.insert] and `delete` apply only to mode \"merge\"",
            at(raw.sink.mode.span())
        ));
    }
    if let (SinkMode::Merge, Kind::Derived(_)) = (mode, &input) {
        problems.push(format!(
            "{}: mode \"merge\" needs a `batch` input",
            at(raw.sink.mode.span())
        ));
    }
    let sql_file = raw.sql.get_ref().clone();
    let sql = match files.get(&sql_file) {
        Some(s) => s.clone(),
        None => {
            problems.push(format!(
                "{}: SQL file {sql_file:?} not found next to the definition",
                at(raw.sql.span())
            ));
            String::new()
        }
    };
    let incremental = raw.incremental.as_ref().map(|inc| {
        let inputs: &[String] = match &input {
            Kind::Derived(t) => t,
            Kind::Batch(..) => &[],
        };
        if !matches!(input, Kind::Derived(_)) || mode != SinkMode::Replace {
            problems.push(format!(
                "{}: [incremental] applies only to a `tables` input with mode \"replace\"",
                at(inc.clock.span())
            ));
        }
        if inc.key.is_empty() {
            problems.push(format!(
                "{}: [incremental] needs a `key`",
                at(inc.clock.span())
            ));
        }
        for k in &inc.key {
            column(k, "incremental key", &mut problems);
        }
        for t in &inc.keyed {
            if !inputs.contains(t.get_ref()) {
                problems.push(format!(
                    "{}: keyed table {:?} is not an input",
                    at(t.span()),
                    t.get_ref()
                ));
            } else if let Ok(def) = tables::get(t.get_ref()) {
                for k in &inc.key {
                    if def.column(k.get_ref()).is_none() {
                        problems.push(format!(
                            "{}: keyed table {} has no key column {:?}",
                            at(t.span()),
                            def.name,
                            k.get_ref()
                        ));
                    }
                }
            }
        }
        for t in inc.touches.keys() {
            if !inputs.contains(t.get_ref()) {
                problems.push(format!(
                    "{}: `touches` names {:?}, which is not an input",
                    at(t.span()),
                    t.get_ref()
                ));
            }
        }
        super::incremental::Incremental {
            key: inc.key.iter().map(|k| k.get_ref().clone()).collect(),
            clock: inc.clock.get_ref().clone(),
            keyed: inc.keyed.iter().map(|k| k.get_ref().clone()).collect(),
            touches: inc
                .touches
                .iter()
                .map(|(k, v)| (k.get_ref().clone(), v.clone()))
                .collect(),
        }
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let plain = |v: &BTreeMap<Spanned<String>, String>| {
        v.iter()
            .map(|(k, v)| (k.get_ref().clone(), v.clone()))
            .collect()
    };
    Ok(Definition {
        name: file.trim_end_matches(".toml").to_string(),
        description: raw.description,
        kind: input,
        after: raw
            .input
            .after
            .iter()
            .map(|a| a.get_ref().clone())
            .collect(),
        sql_file,
        sql,
        sink: Sink {
            table: raw.sink.table.get_ref().clone(),
            mode,
            key: raw.sink.key.iter().map(|k| k.get_ref().clone()).collect(),
            update: plain(&raw.sink.update),
            insert: plain(&raw.sink.insert),
            delete: raw.sink.delete.map(|d| d.into_inner()),
        },
        incremental,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut f: BTreeMap<String, String> = PIPELINE_FILES
            .iter()
            .chain(VIEW_FILES)
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        for (n, t) in extra {
            f.insert(n.to_string(), t.to_string());
        }
        f
    }

    async fn problems(extra: &[(&str, &str)]) -> String {
        match Definitions::from_files(&files(extra)).await {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn built_in_definitions_load_and_alerts_run_after_the_signals() {
        let d = Definitions::built_in().await.unwrap();
        let names: Vec<&str> = d.pipelines.iter().map(|p| p.name.as_str()).collect();
        let pos = |n| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("alerts") > pos("shortage_signals"));
        assert!(pos("alerts") > pos("churn_signals"));
        let fed_by = |table| {
            d.batch_pipelines(table)
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(fed_by("supply_chain.inventory_movements"), ["inventory"]);
        // Agents' actions and document events are materialized by batch pipelines too, one
        // stream into two tables where it carries two kinds of document.
        assert_eq!(fed_by("supply_chain.order_actions"), ["purchase_orders"]);
        assert_eq!(fed_by("support.ticket_actions"), ["tickets"]);
        assert_eq!(
            fed_by("knowledge.document_events"),
            ["incident_documents", "proposal_documents"]
        );
        assert_eq!(d.views.len(), 4);
    }

    #[tokio::test]
    async fn a_bad_definition_names_the_file_and_line() {
        let toml = "description = \"x\"\nsql = \"x.sql\"\n[input]\ntables = [\"iot.nope\"]\n[sink]\ntable = \"ops.alerts\"\nmode = \"replace\"\ncolour = 1\n";
        let e = problems(&[("x.toml", toml), ("x.sql", "SELECT 1")]).await;
        assert!(e.contains("pipelines/x.toml:8"), "{e}");
        let toml = toml.replace("colour = 1\n", "");
        let e = problems(&[("x.toml", &toml), ("x.sql", "SELECT 1")]).await;
        assert!(
            e.contains("pipelines/x.toml:4: unknown table \"iot.nope\""),
            "{e}"
        );
        let toml = toml
            .replace("iot.nope", "iot.anomalies")
            .replace("x.sql", "y.sql");
        let e = problems(&[("x.toml", &toml)]).await;
        assert!(
            e.contains("pipelines/x.toml:2: SQL file \"y.sql\" not found"),
            "{e}"
        );
        // Merge expressions are planned only when a merge runs: they are parsed at load.
        let merge = "description = \"x\"\nsql = \"x.sql\"\n[input]\nbatch = \"support.ticket_actions\"\n\
                     [sink]\ntable = \"support.tickets\"\nmode = \"merge\"\nkey = [\"ticket_id\"]\n\
                     delete = \"source.status = \"\n[sink.insert]\nticket_id = \"source.ticket_id\"\n";
        let e = problems(&[("x.toml", merge), ("x.sql", "SELECT ticket_id FROM batch")]).await;
        assert!(
            e.contains("pipelines/x.toml:9: expression \"source.status = \" does not parse"),
            "{e}"
        );
        // A filter narrows a micro-batch, and only that.
        let filtered = toml.replace(
            "tables = [\"iot.anomalies\"]",
            "tables = [\"iot.anomalies\"]\nfilter = \"severity = 'HIGH'\"",
        );
        let e = problems(&[("x.toml", &filtered)]).await;
        assert!(
            e.contains("pipelines/x.toml:5: `filter` applies only to a `batch` input"),
            "{e}"
        );
        // `delete` belongs to merges.
        let replace = merge.replace("\"merge\"", "\"replace\"");
        let e = problems(&[
            ("x.toml", &replace),
            ("x.sql", "SELECT ticket_id FROM batch"),
        ])
        .await;
        assert!(e.contains("`delete` apply only to mode \"merge\""), "{e}");
    }

    #[tokio::test]
    async fn bad_sql_and_results_that_do_not_fit_the_sink_are_reported() {
        let toml = "description = \"x\"\nsql = \"x.sql\"\n[input]\ntables = [\"iot.anomalies\"]\n[sink]\ntable = \"iot.maintenance_alerts\"\nmode = \"replace\"\n";
        let e = problems(&[
            ("x.toml", toml),
            (
                "x.sql",
                "SELECT\n  machine_id FROM iot.anomalies\n  WHERE ts > )",
            ),
        ])
        .await;
        assert!(e.contains("pipelines/x.sql"), "{e}");
        assert!(e.contains("Line: 3"), "the parser's position is kept: {e}");
        let e = problems(&[
            ("x.toml", toml),
            ("x.sql", "SELECT nope FROM iot.anomalies"),
        ])
        .await;
        assert!(e.contains("pipelines/x.sql") && e.contains("nope"), "{e}");
        let e = problems(&[
            ("x.toml", toml),
            ("x.sql", "SELECT machine_id FROM iot.anomalies"),
        ])
        .await;
        assert!(
            e.contains("the result has no column \"alert_id\", which iot.maintenance_alerts needs"),
            "{e}"
        );
    }
}
