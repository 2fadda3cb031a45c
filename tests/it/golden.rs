//! Data-driven tests of every `pipelines/*.sql` and `pipelines/views/*.sql` (after arroyo's planner tests): each pipeline has
//! cases under `tests/pipelines/<pipeline>/<case>/` holding input fixtures, one JSON-lines file
//! per table (`<schema>.<table>.json`, or `batch.json` for a micro-batch input), and the golden
//! output `expected.txt` (rows sorted, pretty-printed). A case may instead hold `error.txt`: the
//! run must fail with a message containing it. `UPDATE_GOLDEN=1` rewrites the golden files;
//! review the diff before committing.
//!
//! Bronze columns a fixture leaves out are filled the way the pipeline fills them: `event_id`,
//! `_partition` 0, `_offset` by line, `event_date` and `_ingested_at` from `ts`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use millstream::model::tables;
use millstream::pipeline::definition::{Definitions, Kind};
use millstream::pipeline::session;

fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines")
}

fn load(path: &Path, table: &str) -> RecordBatch {
    let def = tables::get(table).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            let o = v.as_object_mut().expect("one JSON object per line");
            let ts = o.get("ts").and_then(|t| t.as_str()).map(str::to_string);
            let mut fill = |k: &str, val: serde_json::Value| {
                if def.column(k).is_some() && !o.contains_key(k) {
                    o.insert(k.to_string(), val);
                }
            };
            fill("event_id", format!("e{}", i + 1).into());
            fill("_partition", 0.into());
            fill("_offset", (i as i64).into());
            if let Some(ts) = ts {
                fill("event_date", ts[..10].to_string().into());
                fill("_ingested_at", ts.into());
            }
            v
        })
        .collect();
    let mut decoder = arrow::json::ReaderBuilder::new(def.arrow_schema())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .unwrap();
    decoder
        .serialize(&rows)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decoder
        .flush()
        .unwrap()
        .unwrap_or_else(|| RecordBatch::new_empty(def.arrow_schema()))
}

/// Rows sorted, so the golden file does not depend on the plan's output order.
fn render(batches: &[RecordBatch]) -> String {
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 4 {
        return format!("{text}\n");
    }
    let (head, rest) = lines.split_at(3);
    let mut body: Vec<&str> = rest[..rest.len() - 1].to_vec();
    body.sort_unstable();
    let mut out: Vec<&str> = head.to_vec();
    out.extend(body);
    out.push(rest[rest.len() - 1]);
    out.join("\n") + "\n"
}

/// A SQL file under test: a pipeline, or a view (`views/<name>`), whose cases live in
/// `tests/pipelines/<name>/`.
struct Subject {
    name: String,
    sql: String,
    /// The micro-batch source table for a pipeline with a batch input, and its filter.
    batch: Option<String>,
    filter: Option<String>,
}

async fn run_case(subject: &Subject, dir: &Path) -> Result<String, String> {
    Ok(render(&run_batches(subject, dir, None).await?))
}

/// The subject's result batches over the case's inputs, planned for `partitions` (the
/// session's default when `None`).
async fn run_batches(
    subject: &Subject,
    dir: &Path,
    partitions: Option<usize>,
) -> Result<Vec<RecordBatch>, String> {
    let mut data = BTreeMap::new();
    let mut batch = None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(table) = file.strip_suffix(".json") else {
            continue;
        };
        if table == "batch" {
            let Some(source) = &subject.batch else {
                panic!(
                    "{}: batch.json for a pipeline without a batch input",
                    dir.display()
                );
            };
            batch = Some(load(&path, source));
        } else {
            data.insert(table.to_string(), vec![load(&path, table)]);
        }
    }
    let mut ctx = session::memory(&data).map_err(|e| e.to_string())?;
    if let (Some(source), Some(b)) = (&subject.batch, batch) {
        let schema = tables::get(source).unwrap().arrow_schema();
        ctx = session::with_batch(&ctx, schema, vec![b], subject.filter.as_deref())
            .map_err(|e| e.to_string())?;
    }
    if let Some(n) = partitions {
        ctx.sql(&format!("SET datafusion.execution.target_partitions = {n}"))
            .await
            .map_err(|e| e.to_string())?;
    }
    let df = ctx.sql(&subject.sql).await.map_err(|e| e.to_string())?;
    df.collect().await.map_err(|e| e.to_string())
}

/// The SQL under test: a pipeline, or a view (`views/<name>`).
async fn subject(name: &str) -> Subject {
    let defs = Definitions::built_in().await.unwrap();
    if let Some(view) = name.strip_prefix("views/") {
        let sql = defs
            .views
            .get(view)
            .unwrap_or_else(|| panic!("tests/pipelines/{name}: no pipelines/{name}.sql"));
        return Subject {
            name: name.to_string(),
            sql: sql.clone(),
            batch: None,
            filter: None,
        };
    }
    let def = defs
        .get(name)
        .unwrap_or_else(|| panic!("tests/pipelines/{name}: no pipelines/{name}.toml"));
    pipeline_subject(def)
}

/// A pipeline's SQL under test.
fn pipeline_subject(def: &millstream::pipeline::definition::Definition) -> Subject {
    let (batch, filter) = match &def.kind {
        Kind::Batch(source, filter) => (Some(source.clone()), filter.clone()),
        Kind::Derived(_) => (None, None),
    };
    Subject {
        name: def.name.clone(),
        sql: def.sql.clone(),
        batch,
        filter,
    }
}

/// Runs one case against its golden output (or expected error); `UPDATE_GOLDEN=1` rewrites it.
async fn golden_case(name: &str, case: &str) {
    let subject = subject(name).await;
    let dir = cases_root().join(name).join(case);
    let label = format!("{}/{case}", subject.name);
    let got = run_case(&subject, &dir).await;
    let error_file = dir.join("error.txt");
    if error_file.exists() {
        let want = std::fs::read_to_string(&error_file).unwrap();
        match got {
            Err(e) if e.contains(want.trim()) => return,
            other => panic!("{label}: expected an error with {want:?}, got {other:?}"),
        }
    }
    let got = got.unwrap_or_else(|e| panic!("{label}: {e}"));
    let golden = dir.join("expected.txt");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&golden, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|_| panic!("{label}: no expected.txt (run with UPDATE_GOLDEN=1)"));
    assert!(
        want == got,
        "{label}: output differs\n--- expected\n{want}--- got\n{got}"
    );
}

/// One test per case directory, generated by build.rs: `golden::cases::<pipeline>::<case>`.
mod cases {
    use super::golden_case;
    include!(concat!(env!("OUT_DIR"), "/golden_cases.rs"));
}

/// Every pipeline and view has at least one golden case.
#[tokio::test]
async fn every_pipeline_and_view_has_golden_cases() {
    let defs = Definitions::built_in().await.unwrap();
    let names = defs
        .pipelines
        .iter()
        .map(|d| d.name.clone())
        .chain(defs.views.keys().map(|v| format!("views/{v}")));
    for name in names {
        assert!(
            !case_dirs(&name).is_empty(),
            "pipelines/{name}.sql has no cases in {}",
            cases_root().join(&name).display()
        );
    }
}

/// The case directories of a pipeline or view (none when it has no cases folder).
fn case_dirs(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(cases_root().join(name))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// A derived pipeline's rows come out of its query in batches of many rows, not one batch per
/// row: planned on one partition, every golden case's result is a single batch. DataFusion's
/// cross join repeats each row of its left side as a batch of its own; with the positions left
/// of the one-row `clock`, a full shortage recompute of 10,500 positions built 10,500 one-row
/// batches (an 8 KiB block for each long text) and held ~200 MB until they were written
/// (`bench mcp`'s memory spikes at every quarter-hour tick).
#[tokio::test]
async fn a_derived_pipeline_s_rows_are_not_cut_into_a_batch_per_row() {
    let defs = Definitions::built_in().await.unwrap();
    let mut checked = 0;
    for def in defs
        .pipelines
        .iter()
        .filter(|d| matches!(d.kind, Kind::Derived(_)))
    {
        let subject = pipeline_subject(def);
        for case in case_dirs(&def.name) {
            if case.join("error.txt").exists() {
                continue;
            }
            let batches = run_batches(&subject, &case, Some(1))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", def.name));
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let filled = batches.iter().filter(|b| b.num_rows() > 0).count();
            assert!(
                filled <= 1,
                "{}/{}: {rows} rows in {filled} batches",
                def.name,
                case.file_name().unwrap_or_default().to_string_lossy()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no derived pipeline has golden cases");
}
