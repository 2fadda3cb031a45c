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
use millstream::pipeline::definition::{Definitions, Input};
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
    /// The micro-batch source table for a pipeline with a batch input.
    batch: Option<String>,
}

async fn run_case(subject: &Subject, dir: &Path) -> Result<String, String> {
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
        ctx = session::with_batch(&ctx, schema, vec![b]).map_err(|e| e.to_string())?;
    }
    let df = ctx.sql(&subject.sql).await.map_err(|e| e.to_string())?;
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    Ok(render(&batches))
}

#[tokio::test]
async fn every_pipeline_and_view_sql_matches_its_golden_outputs() {
    let defs = Definitions::built_in().await.unwrap();
    let pipelines = defs.pipelines.iter().map(|def| Subject {
        name: def.name.clone(),
        sql: def.sql.clone(),
        batch: match &def.input {
            Input::Batch(source) => Some(source.clone()),
            _ => None,
        },
    });
    let views = defs.views.iter().map(|(name, sql)| Subject {
        name: format!("views/{name}"),
        sql: sql.clone(),
        batch: None,
    });
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut failures = Vec::new();
    for def in pipelines.chain(views) {
        let dir = cases_root().join(&def.name);
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|_| {
                panic!(
                    "pipelines/{}.sql has no cases in {}",
                    def.name,
                    dir.display()
                )
            })
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "pipelines/{}.sql has no cases", def.name);
        for case in cases {
            let label = format!(
                "{}/{}",
                def.name,
                case.file_name().unwrap().to_string_lossy()
            );
            let got = run_case(&def, &case).await;
            let error_file = case.join("error.txt");
            if error_file.exists() {
                let want = std::fs::read_to_string(&error_file).unwrap();
                match got {
                    Err(e) if e.contains(want.trim()) => {}
                    other => failures.push(format!(
                        "{label}: expected an error with {want:?}, got {other:?}"
                    )),
                }
                continue;
            }
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let golden = case.join("expected.txt");
            if update {
                std::fs::write(&golden, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|_| panic!("{label}: no expected.txt (run with UPDATE_GOLDEN=1)"));
            if want != got {
                failures.push(format!(
                    "{label}: output differs\n--- expected\n{want}--- got\n{got}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
