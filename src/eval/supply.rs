//! Shortage and churn quality against the simulator's ground truth ([`crate::sim::world`]).
//!
//! The world's events (stock movements, shipments, sales, after the customers' 180-day purchase
//! history; no telemetry) are generated for a
//! span of simulated days, decoded by the pipeline's own decoders into bronze batches, and every
//! `checkpoint` the very SQL of `pipelines/shortage_signals.sql` and `pipelines/churn_signals.sql`
//! runs over them (in memory, same catalog names). Scoring:
//! - **stockouts**: a stockout of a position at `T` counts as flagged ahead when some checkpoint
//!   in `[T − 21 days, T − 48 h]` (after the position's previous stockout) rated it HIGH or
//!   CRITICAL. The lead is measured from the first such flag. Precision: flag episodes (runs of
//!   HIGH/CRITICAL checkpoints of a position) after whose first flag the position ran out within
//!   what the flag claims, its lead time plus the HIGH margin (at least 21 days), over all
//!   episodes that could be followed that long; the same within a flat 21 days is reported
//!   beside it, and the episodes no stockout followed are counted by what was going on at their
//!   first flag (shelf already empty, a surge running or just over, a supplier delay, a usage
//!   read high without a surge). The misses are counted by cause, and so are the surge stockouts
//!   that came less than 48 h after their surge began (flagged 48 h ahead only if the stock was
//!   low already).
//! - **churn**: at each churn checkpoint `T` (every 7 days once 30 days are observed), customers
//!   quiet for at least 30 days and four of their usual intervals by `T` are positives (a
//!   customer ordering every 12 days has not "gone quiet" after a month; the simulator knows each
//!   customer's real rhythm), customers not quiet by `T` are
//!   negatives (the ones quiet for less than 30 days are left out: too soon to tell). Flagged =
//!   HIGH or CRITICAL. Recall and false-positive rate over all checkpoints.
//! - **leads** (`pipelines/lead_scores.sql`): at the same checkpoints, customers growing (buying
//!   2.5–4 times more often) for at least 21 days and four of their new intervals by `T` are
//!   positives, customers not growing by `T` are negatives (the ones growing for less are left
//!   out). Flagged = WARM or HOT. Precision, recall and false-positive rate over all
//!   checkpoints, and the same at a sweep of `lead_score` thresholds, to pick an operating point.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::SimulateConfig;
use crate::decode::BronzeDecoder;
use crate::error::{Error, Result};
use crate::model::{EventKind, tables};
use crate::pipeline::definition::Definitions;
use crate::sim::reference;
use crate::sim::stream::{Generator, SALES_HISTORY_DAYS, SimEvent};
use crate::sim::world::{SupplierDelay, Surge, WorldRates};
use crate::source::RawRecord;

#[derive(Debug, Clone, Serialize)]
pub struct ShortageReport {
    pub signal: &'static str,
    pub simulated_days: f64,
    pub positions: usize,
    pub checkpoints: usize,
    /// Simulated hours between checkpoints.
    pub checkpoint_hours: i64,
    pub surges_injected: usize,
    pub supplier_delays_injected: usize,
    pub stockouts: usize,
    pub stockouts_by_cause: BTreeMap<&'static str, usize>,
    /// Stockouts not flagged at least 48 h ahead, by cause: where the misses come from.
    pub missed_48h_by_cause: BTreeMap<&'static str, usize>,
    /// Demand-surge stockouts that came less than 48 h after their surge began. Consumption
    /// says nothing of a surge before it starts, so a flag 48 h ahead of one of these can only
    /// come from the stock being low already.
    pub surge_stockouts_within_48h_of_onset: usize,
    /// Stockouts flagged HIGH or CRITICAL at least 48 simulated hours ahead.
    pub flagged_48h_ahead: usize,
    pub flagged_48h_ahead_ratio: f64,
    pub flagged_at_all: usize,
    pub lead_hours_p10: Option<i64>,
    pub lead_hours_p50: Option<i64>,
    /// Position-episodes flagged HIGH/CRITICAL, and how many ran out within the flag's horizon:
    /// the lead time plus the HIGH margin (what the flag claims: the shelf runs empty before an
    /// order placed now arrives, or within the margin after), at least 21 days.
    pub flag_episodes: usize,
    pub flag_episodes_followed_by_stockout: usize,
    pub precision: f64,
    /// The same with every flag followed for 21 days only, whatever its lead time (the measure
    /// before stop 51): a part with a 30-day lead time that was flagged 25 days ahead and ran out
    /// on the 25th day counts as a false alarm here.
    pub precision_within_21_days: f64,
    /// Flag episodes no stockout followed within 21 days, by what was going on at their first
    /// flag: the shelf already empty (a stockout before the flag, not after it), a surge of the
    /// position running or over within 21 days, or none of these.
    pub unconfirmed_by_cause: BTreeMap<&'static str, usize>,
    /// The same at other HIGH margins: a position flagged when out of stock or its cover is
    /// under its lead time plus `margin_days` (the pipeline's HIGH is at 3), to pick an operating
    /// point.
    pub sweep: Vec<ShortagePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShortagePoint {
    pub margin_days: f64,
    pub flag_episodes: usize,
    pub flag_episodes_followed_by_stockout: usize,
    pub precision: f64,
    pub precision_within_21_days: f64,
    pub flagged_48h_ahead: usize,
    pub flagged_48h_ahead_ratio: f64,
}

/// HIGH margins (days beyond the lead time) the shortage report sweeps.
const SHORTAGE_MARGINS: [f64; 8] = [-2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0];

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub signal: &'static str,
    pub customers: usize,
    pub quiet_injected: usize,
    pub checkpoints: usize,
    pub positives: usize,
    pub true_positives: usize,
    pub negatives: usize,
    pub false_positives: usize,
    pub recall: f64,
    pub false_positive_rate: f64,
    /// At each `churn_probability` threshold (the pipeline's HIGH is the one at
    /// `signals.churn.high`).
    pub sweep: Vec<OperatingPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeadReport {
    pub signal: &'static str,
    pub customers: usize,
    pub growing_injected: usize,
    pub checkpoints: usize,
    pub positives: usize,
    pub negatives: usize,
    /// At the pipeline's own tiers (WARM or HOT).
    pub flagged: OperatingPoint,
    /// At each `lead_score` threshold.
    pub sweep: Vec<OperatingPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatingPoint {
    pub threshold: Option<f64>,
    pub true_positives: usize,
    pub false_positives: usize,
    pub precision: f64,
    pub recall: f64,
    pub false_positive_rate: f64,
}

/// Score thresholds the churn and lead reports sweep.
const SWEEP: [f64; 15] = [
    0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99,
];

/// Judged scores: (score, flagged by its tier, positive).
#[derive(Default)]
struct Judgements(Vec<(f64, bool, bool)>);

impl Judgements {
    fn point(&self, threshold: Option<f64>) -> OperatingPoint {
        let flagged = |&(score, tiered, _): &(f64, bool, bool)| match threshold {
            Some(t) => score >= t,
            None => tiered,
        };
        let pos = self.0.iter().filter(|j| j.2).count();
        let neg = self.0.len() - pos;
        let tp = self.0.iter().filter(|j| j.2 && flagged(j)).count();
        let fp = self.0.iter().filter(|j| !j.2 && flagged(j)).count();
        OperatingPoint {
            threshold,
            true_positives: tp,
            false_positives: fp,
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, pos),
            false_positive_rate: ratio(fp, neg),
        }
    }

    /// Judges `customer` by its (score, tier) in `scores` (none: score 0, no tier): flagged
    /// when its tier is one of `flagged`.
    fn judge(
        &mut self,
        scores: &HashMap<String, (f64, String)>,
        customer: &str,
        flagged: &[&str],
        positive: bool,
    ) {
        let (score, tier) = scores
            .get(customer)
            .map_or((0.0, ""), |(s, t)| (*s, t.as_str()));
        self.0.push((score, flagged.contains(&tier), positive));
    }

    fn positives(&self) -> usize {
        self.0.iter().filter(|j| j.2).count()
    }

    /// The operating point at each threshold of [`SWEEP`].
    fn sweep(&self) -> Vec<OperatingPoint> {
        SWEEP.iter().map(|t| self.point(Some(*t))).collect()
    }
}

const FLAGGED: [&str; 2] = ["HIGH", "CRITICAL"];

/// A simulated event as the source would have read it, at the next offset.
fn record(e: SimEvent, offset: &mut i64) -> RawRecord {
    let kind = EventKind::from_topic(e.topic).expect("world topics");
    *offset += 1;
    RawRecord {
        topic: Arc::from(kind.topic()),
        partition: 0,
        offset: *offset - 1,
        key: Some(e.key.into_bytes()),
        payload: Some(e.payload),
        timestamp_ms: None,
    }
}

/// The three sales and supply signal reports.
pub struct Reports {
    pub shortages: ShortageReport,
    pub churn: ChurnReport,
    pub leads: LeadReport,
}

/// Runs the world for `days` simulated days and scores the shortage, churn and lead signals of
/// `defs`' `shortage_signals`, `churn_signals` and `lead_scores` pipelines, the shortage signal
/// every `step` of simulated time (`millstream eval signals` uses 12 hours).
pub async fn supply_and_sales(
    cfg: &SimulateConfig,
    defs: &Definitions,
    days: f64,
    step: Duration,
    progress: impl Fn(f64),
) -> Result<Reports> {
    let shortage_sql = defs
        .get("shortage_signals")
        .ok_or_else(|| Error::Internal("no shortage_signals pipeline".into()))?
        .sql
        .clone();
    let churn_sql = defs
        .get("churn_signals")
        .ok_or_else(|| Error::Internal("no churn_signals pipeline".into()))?
        .sql
        .clone();
    let lead_sql = defs
        .get("lead_scores")
        .ok_or_else(|| Error::Internal("no lead_scores pipeline".into()))?
        .sql
        .clone();
    let start = cfg.start;
    let horizon = Duration::seconds((days * 86_400.0) as i64);
    let end = start + horizon;
    let mut generator = Generator::new(cfg, "eval", start, cfg.rate)
        .with_malformed_ratio(0.0)
        .with_world(&WorldRates::default(), horizon)
        .without_telemetry();

    let data = reference::generate(cfg);
    let mut on_hand: HashMap<(String, String), (i64, i64, String)> = data
        .inventory
        .iter()
        .map(|i| {
            (
                (i.part_id.clone(), i.warehouse_id.clone()),
                (i.on_hand, i.reserved, i.region.clone()),
            )
        })
        .collect();
    let mut reference_tables: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    reference_tables.insert(
        "supply_chain.parts".into(),
        vec![rows_to_batch("supply_chain.parts", &data.parts)?],
    );
    reference_tables.insert(
        "supply_chain.suppliers".into(),
        vec![rows_to_batch("supply_chain.suppliers", &data.suppliers)?],
    );
    reference_tables.insert(
        "sales.customers".into(),
        vec![rows_to_batch("sales.customers", &data.customers)?],
    );

    let decoders: BTreeMap<EventKind, BronzeDecoder> = EventKind::ALL
        .into_iter()
        .map(|k| BronzeDecoder::new(k).map(|d| (k, d)))
        .collect::<Result<_>>()?;
    let mut bronze: BTreeMap<EventKind, Vec<RecordBatch>> = BTreeMap::new();
    let mut pending: Vec<RawRecord> = Vec::new();
    let mut offset = 0i64;

    let mut next_check = start + step;
    let mut next_churn = start + Duration::days(30);
    // (position key) → checkpoints rated HIGH/CRITICAL.
    let mut flags: Flags = HashMap::new();
    let parts = PartFacts::new(&data);
    let planned = &parts.planned;
    let high_margin = crate::pipeline::udf::installed().shortage.high_margin_days;
    let mut swept: Vec<Flags> = vec![HashMap::new(); SHORTAGE_MARGINS.len()];
    let mut checkpoints = 0;
    let mut churn_checks = 0;
    let mut leads = Judgements::default();
    let mut churn = Judgements::default();

    // The customers' purchase history the live world continues, as `up` seeds it.
    for e in generator.sales_history(start, Duration::days(SALES_HISTORY_DAYS)) {
        pending.push(record(e, &mut offset));
    }
    loop {
        let e = generator.next_event();
        let t = event_time(&e.payload)?;
        while t >= next_check && next_check <= end {
            flush(&mut pending, &decoders, &mut bronze, &mut on_hand)?;
            let tables_now = snapshot(&reference_tables, &bronze, &on_hand, next_check)?;
            let ctx = crate::pipeline::session::memory(&tables_now)?;
            for p in positions(&ctx, &shortage_sql).await? {
                let shelf = p.state(planned);
                for (margin, flags) in SHORTAGE_MARGINS.iter().zip(swept.iter_mut()) {
                    if p.available <= 0.0 || p.cover.is_some_and(|c| c < p.lead_time + margin) {
                        flags
                            .entry(p.key.clone())
                            .or_default()
                            .push((next_check, shelf));
                    }
                }
                if FLAGGED.contains(&p.risk.as_str()) {
                    flags.entry(p.key).or_default().push((next_check, shelf));
                }
            }
            if next_check >= next_churn {
                churn_checks += 1;
                let judged = scores(&ctx, &churn_sql, "churn_probability", "risk_level").await?;
                let truth = generator.truth();
                for (i, c) in data.customers.iter().enumerate() {
                    let quiet = truth.quiet.iter().find(|q| q.customer == i);
                    let positive = match quiet.map(|q| (q.since, q.usual_interval_days)) {
                        Some((s, every))
                            if s <= next_check - Duration::days(30).max(days_f(4.0 * every)) =>
                        {
                            true
                        }
                        Some((s, _)) if s <= next_check => continue,
                        _ => false,
                    };
                    churn.judge(&judged, &c.customer_id, &FLAGGED, positive);
                }
                let scores = scores(&ctx, &lead_sql, "lead_score", "tier").await?;
                for (i, c) in data.customers.iter().enumerate() {
                    let growing = truth.growing.iter().find(|g| g.customer == i);
                    let positive = match growing {
                        Some(g)
                            if g.since
                                <= next_check
                                    - Duration::days(21)
                                        .max(days_f(4.0 * g.usual_interval_days / g.factor)) =>
                        {
                            true
                        }
                        Some(g) if g.since <= next_check => continue,
                        _ => false,
                    };
                    leads.judge(&scores, &c.customer_id, &["WARM", "HOT"], positive);
                }
                next_churn += Duration::days(7);
            }
            checkpoints += 1;
            progress((next_check - start).num_hours() as f64 / 24.0);
            next_check += step;
        }
        if t >= end {
            break;
        }
        pending.push(record(e, &mut offset));
    }

    let truth = generator.truth().clone();
    let mut by_cause: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in &truth.stockouts {
        *by_cause.entry(s.cause).or_default() += 1;
    }
    let judged = judge(&flags, &truth, &parts, high_margin, start, end, step);
    let lead_hours = &judged.lead_hours;
    let q = |p: f64| {
        (!lead_hours.is_empty())
            .then(|| lead_hours[((lead_hours.len() - 1) as f64 * p).round() as usize])
    };
    let sweep = SHORTAGE_MARGINS
        .iter()
        .zip(&swept)
        .map(|(margin, flags)| {
            let j = judge(flags, &truth, &parts, *margin, start, end, step);
            ShortagePoint {
                margin_days: *margin,
                flag_episodes: j.episodes,
                flag_episodes_followed_by_stockout: j.confirmed,
                precision: ratio(j.confirmed, j.episodes),
                precision_within_21_days: ratio(j.confirmed_21d, j.episodes_21d),
                flagged_48h_ahead: j.ahead,
                flagged_48h_ahead_ratio: ratio(j.ahead, truth.stockouts.len()),
            }
        })
        .collect();
    let shortage = ShortageReport {
        signal: "shortages",
        simulated_days: days,
        positions: data.inventory.len(),
        checkpoints,
        checkpoint_hours: step.num_hours(),
        surges_injected: truth.surges.iter().filter(|s| s.start < end).count(),
        supplier_delays_injected: truth.delays.iter().filter(|d| d.start < end).count(),
        stockouts: truth.stockouts.len(),
        stockouts_by_cause: by_cause,
        missed_48h_by_cause: judged.missed_by_cause,
        surge_stockouts_within_48h_of_onset: within_48h_of_surge(&truth),
        flagged_48h_ahead: judged.ahead,
        flagged_48h_ahead_ratio: ratio(judged.ahead, truth.stockouts.len()),
        flagged_at_all: judged.at_all,
        lead_hours_p10: q(0.1),
        lead_hours_p50: q(0.5),
        flag_episodes: judged.episodes,
        flag_episodes_followed_by_stockout: judged.confirmed,
        precision: ratio(judged.confirmed, judged.episodes),
        precision_within_21_days: ratio(judged.confirmed_21d, judged.episodes_21d),
        unconfirmed_by_cause: judged.unconfirmed_by_cause,
        sweep,
    };
    let flagged = churn.point(None);
    let churn = ChurnReport {
        signal: "churn",
        customers: data.customers.len(),
        quiet_injected: truth.quiet.iter().filter(|q| q.since < end).count(),
        checkpoints: churn_checks,
        positives: churn.positives(),
        true_positives: flagged.true_positives,
        negatives: churn.0.len() - churn.positives(),
        false_positives: flagged.false_positives,
        recall: flagged.recall,
        false_positive_rate: flagged.false_positive_rate,
        sweep: churn.sweep(),
    };
    let positives = leads.positives();
    let lead_report = LeadReport {
        signal: "leads",
        customers: data.customers.len(),
        growing_injected: truth.growing.iter().filter(|g| g.since < end).count(),
        checkpoints: churn_checks,
        positives,
        negatives: leads.0.len() - positives,
        flagged: leads.point(None),
        sweep: leads.sweep(),
    };
    Ok(Reports {
        shortages: shortage,
        churn,
        leads: lead_report,
    })
}

/// Customer → (score, tier) from a customer signal's SQL: its DOUBLE `score` column and its
/// `tier` column.
async fn scores(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
    score: &str,
    tier: &str,
) -> Result<HashMap<String, (f64, String)>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = HashMap::new();
    for b in &batches {
        let (c, t) = (
            crate::lakehouse::query::strings(b, "customer_id")?,
            crate::lakehouse::query::strings(b, tier)?,
        );
        let s = b
            .column_by_name(score)
            .and_then(|a| a.as_any().downcast_ref::<arrow::array::Float64Array>())
            .ok_or_else(|| Error::Internal(format!("no DOUBLE {score} column")))?;
        for i in 0..b.num_rows() {
            out.insert(c.value(i).to_string(), (s.value(i), t.value(i).to_string()));
        }
    }
    Ok(out)
}

fn days_f(d: f64) -> Duration {
    Duration::seconds((d * 86_400.0) as i64)
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        ((a as f64 / b as f64) * 10_000.0).round() / 10_000.0
    }
}

fn event_time(payload: &[u8]) -> Result<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Ts {
        ts: DateTime<Utc>,
    }
    serde_json::from_slice::<Ts>(payload)
        .map(|t| t.ts)
        .map_err(|e| Error::Internal(format!("simulated event without ts: {e}")))
}

fn rows_to_batch<T: Serialize>(table: &str, rows: &[T]) -> Result<RecordBatch> {
    let schema = tables::get(table)?.arrow_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    decoder
        .flush()?
        .ok_or_else(|| Error::Internal(format!("{table}: no rows")))
}

/// Decodes pending records into bronze batches and applies movements to the stock positions,
/// as the inventory MERGE does.
fn flush(
    pending: &mut Vec<RawRecord>,
    decoders: &BTreeMap<EventKind, BronzeDecoder>,
    bronze: &mut BTreeMap<EventKind, Vec<RecordBatch>>,
    on_hand: &mut HashMap<(String, String), (i64, i64, String)>,
) -> Result<()> {
    let now_us = Utc::now().timestamp_micros();
    for kind in EventKind::ALL {
        let idx: Vec<usize> = (0..pending.len())
            .filter(|i| &*pending[*i].topic == kind.topic())
            .collect();
        if idx.is_empty() {
            continue;
        }
        let decoded = decoders[&kind].decode(pending, &idx, now_us)?;
        let (batch, rejected) = (decoded.rows, decoded.rejected);
        if let Some(r) = rejected.first() {
            return Err(Error::Internal(format!(
                "simulated event rejected: {}",
                r.reason
            )));
        }
        if kind == EventKind::Inventory {
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                    .expect("string column")
            };
            let (parts, whs, types) = (col("part_id"), col("warehouse_id"), col("movement_type"));
            let qty = batch
                .column_by_name("quantity")
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .cloned()
                })
                .expect("quantity");
            for i in 0..batch.num_rows() {
                let signed = match types.value(i) {
                    "consumption" | "transfer_out" => -qty.value(i),
                    _ => qty.value(i),
                };
                on_hand
                    .entry((parts.value(i).to_string(), whs.value(i).to_string()))
                    .or_insert((0, 0, "unknown".into()))
                    .0 += signed;
            }
        }
        bronze.entry(kind).or_default().push(batch);
    }
    pending.clear();
    Ok(())
}

/// The tables as of a checkpoint: movements of the last 8 days only (the SQL looks back 7).
fn snapshot(
    reference: &BTreeMap<String, Vec<RecordBatch>>,
    bronze: &BTreeMap<EventKind, Vec<RecordBatch>>,
    on_hand: &HashMap<(String, String), (i64, i64, String)>,
    at: DateTime<Utc>,
) -> Result<BTreeMap<String, Vec<RecordBatch>>> {
    let mut out = reference.clone();
    for (kind, batches) in bronze {
        out.insert(kind.bronze_table().to_string(), batches.clone());
    }
    if let Some(m) = out.get_mut(EventKind::Inventory.bronze_table()) {
        let cutoff = (at - Duration::days(8)).timestamp_micros();
        m.retain(|b| {
            b.column_by_name("ts")
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                        .cloned()
                })
                .is_none_or(|ts| ts.is_empty() || ts.value(ts.len() - 1) >= cutoff)
        });
    }
    #[derive(Serialize)]
    struct Row<'a> {
        part_id: &'a str,
        warehouse_id: &'a str,
        region: &'a str,
        on_hand: i64,
        reserved: i64,
        updated_at: DateTime<Utc>,
    }
    let rows: Vec<Row> = on_hand
        .iter()
        .map(|((p, w), (o, r, region))| Row {
            part_id: p,
            warehouse_id: w,
            region,
            on_hand: *o,
            reserved: *r,
            updated_at: at,
        })
        .collect();
    out.insert(
        "supply_chain.inventory".into(),
        vec![rows_to_batch("supply_chain.inventory", &rows)?],
    );
    Ok(out)
}

/// Checkpoints at which each position (part, warehouse) was flagged, each with its state then.
type Flags = HashMap<(String, String), Vec<(DateTime<Utc>, Shelf)>>;

/// Each part's supplier, its lead time, and its planned daily demand (the reorder point's).
struct PartFacts {
    supplier: HashMap<String, String>,
    lead_days: HashMap<String, f64>,
    planned: HashMap<String, f64>,
}

impl PartFacts {
    fn new(data: &reference::ReferenceData) -> Self {
        let lead_of: HashMap<&str, f64> = data
            .suppliers
            .iter()
            .map(|s| (s.supplier_id.as_str(), f64::from(s.lead_time_days)))
            .collect();
        let mut facts = PartFacts {
            supplier: HashMap::new(),
            lead_days: HashMap::new(),
            planned: HashMap::new(),
        };
        for p in &data.parts {
            facts
                .supplier
                .insert(p.part_id.clone(), p.supplier_id.clone());
            if let Some(lead) = lead_of.get(p.supplier_id.as_str()).filter(|l| **l > 0.0) {
                facts.lead_days.insert(p.part_id.clone(), *lead);
                let planned = (p.reorder_point - p.safety_stock) as f64 / lead;
                facts.planned.insert(p.part_id.clone(), planned);
            }
        }
        facts
    }
}

/// A flagged position's state at the flag, for telling the false alarms apart.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shelf {
    Empty,
    /// The signal read a usage over 1.5 times the part's planned demand.
    UsageHigh,
    Stocked,
}

/// How flags fared against the stockouts that followed.
struct Judged {
    /// Stockouts flagged at least 48 h ahead, and at all.
    ahead: usize,
    at_all: usize,
    /// Stockouts not flagged 48 h ahead, by cause.
    missed_by_cause: BTreeMap<&'static str, usize>,
    /// Hours from the first flag to each flagged stockout, ascending.
    lead_hours: Vec<i64>,
    /// Flag episodes (runs of consecutive flagged checkpoints) that could be followed for their
    /// horizon (the lead time plus the margin, at least 21 days), and those a stockout followed
    /// within it.
    episodes: usize,
    confirmed: usize,
    /// The same, each followed for 21 days only.
    episodes_21d: usize,
    confirmed_21d: usize,
    /// Episodes no stockout followed, by what was going on at their first flag.
    unconfirmed_by_cause: BTreeMap<&'static str, usize>,
}

/// Scores flags against the stockouts (see the module docs).
fn judge(
    flags: &Flags,
    truth: &crate::sim::world::GroundTruth,
    parts: &PartFacts,
    margin: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    step: Duration,
) -> Judged {
    let mut lead_hours = Vec::new();
    let (mut ahead, mut at_all) = (0, 0);
    let mut missed_by_cause: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut last_out: HashMap<usize, DateTime<Utc>> = HashMap::new();
    for s in &truth.stockouts {
        let from = (s.at - Duration::days(21)).max(
            last_out
                .get(&s.position)
                .copied()
                .unwrap_or(start - Duration::days(1)),
        );
        last_out.insert(s.position, s.at);
        let key = (s.part_id.clone(), s.warehouse_id.clone());
        let first = flags
            .get(&key)
            .and_then(|f| f.iter().map(|f| f.0).find(|t| *t > from && *t <= s.at));
        let lead = first.map(|f| (s.at - f).num_hours());
        if let Some(lead) = lead {
            at_all += 1;
            lead_hours.push(lead);
        }
        if lead.is_some_and(|l| l >= 48) {
            ahead += 1;
        } else {
            *missed_by_cause.entry(s.cause).or_default() += 1;
        }
    }
    lead_hours.sort_unstable();
    let stockouts_of: HashMap<(String, String), Vec<DateTime<Utc>>> =
        truth.stockouts.iter().fold(HashMap::new(), |mut m, s| {
            m.entry((s.part_id.clone(), s.warehouse_id.clone()))
                .or_default()
                .push(s.at);
            m
        });
    let surges_of: HashMap<(&str, &str), Vec<&Surge>> =
        truth.surges.iter().fold(HashMap::new(), |mut m, u| {
            m.entry((u.part_id.as_str(), u.warehouse_id.as_str()))
                .or_default()
                .push(u);
            m
        });
    let delays_of: HashMap<String, Vec<&SupplierDelay>> =
        truth.delays.iter().fold(HashMap::new(), |mut m, d| {
            m.entry(reference::supplier_id(d.supplier))
                .or_default()
                .push(d);
            m
        });
    let (mut episodes, mut confirmed) = (0, 0);
    let (mut episodes_21d, mut confirmed_21d) = (0, 0);
    let mut unconfirmed_by_cause: BTreeMap<&'static str, usize> = BTreeMap::new();
    let three_weeks = Duration::days(21);
    for (key, times) in flags {
        let runs_out_within = |t: DateTime<Utc>, within: Duration| {
            stockouts_of
                .get(key)
                .is_some_and(|o| o.iter().any(|s| *s >= t && *s <= t + within))
        };
        // What the flag claims: the shelf runs empty within the lead time plus the margin.
        let horizon = parts
            .lead_days
            .get(&key.0)
            .map_or(three_weeks, |lead| three_weeks.max(days_f(lead + margin)));
        let mut prev: Option<DateTime<Utc>> = None;
        for (t, shelf) in times {
            let starts = prev.is_none_or(|p| *t - p > step);
            prev = Some(*t);
            if starts && *t + three_weeks <= end {
                episodes_21d += 1;
                confirmed_21d += usize::from(runs_out_within(*t, three_weeks));
            }
            // A flag that could not be followed for its horizon yet is not judged.
            if starts && *t + horizon <= end {
                episodes += 1;
                if runs_out_within(*t, horizon) {
                    confirmed += 1;
                } else {
                    let surges = surges_of.get(&(key.0.as_str(), key.1.as_str()));
                    let delays = parts.supplier.get(&key.0).and_then(|s| delays_of.get(s));
                    let cause = false_alarm_cause(*t, *shelf, surges, delays);
                    *unconfirmed_by_cause.entry(cause).or_default() += 1;
                }
            }
        }
    }
    Judged {
        ahead,
        at_all,
        missed_by_cause,
        lead_hours,
        episodes,
        confirmed,
        episodes_21d,
        confirmed_21d,
        unconfirmed_by_cause,
    }
}

/// What a flag no stockout followed came from, at its checkpoint `t`: the shelf already empty,
/// a surge of the position running or over within 21 days, a delay window of its supplier open
/// or over within 21 days, a usage read high, or none of these.
fn false_alarm_cause(
    t: DateTime<Utc>,
    shelf: Shelf,
    surges: Option<&Vec<&Surge>>,
    delays: Option<&Vec<&SupplierDelay>>,
) -> &'static str {
    let recent = |end: DateTime<Utc>| end <= t && t - end <= Duration::days(21);
    let surges = surges.map_or(&[][..], |s| s.as_slice());
    if shelf == Shelf::Empty {
        "shelf_already_empty"
    } else if surges.iter().any(|u| u.start <= t && t < u.end) {
        "surge_running"
    } else if surges.iter().any(|u| recent(u.end)) {
        "surge_over"
    } else if delays.is_some_and(|d| {
        d.iter()
            .any(|d| d.start <= t && (t < d.end || recent(d.end)))
    }) {
        "supplier_delay"
    } else if shelf == Shelf::UsageHigh {
        "usage_read_high"
    } else {
        "other"
    }
}

/// Demand-surge stockouts less than 48 h after the onset of the position's latest surge.
fn within_48h_of_surge(truth: &crate::sim::world::GroundTruth) -> usize {
    truth
        .stockouts
        .iter()
        .filter(|s| s.cause == "demand_surge")
        .filter(|s| {
            truth
                .surges
                .iter()
                .filter(|u| u.position == s.position && u.start <= s.at)
                .map(|u| u.start)
                .max()
                .is_some_and(|onset| s.at - onset < Duration::hours(48))
        })
        .count()
}

/// One row of the shortage signal.
struct Position {
    key: (String, String),
    risk: String,
    available: f64,
    cover: Option<f64>,
    lead_time: f64,
    daily_usage: f64,
}

impl Position {
    fn state(&self, planned: &HashMap<String, f64>) -> Shelf {
        if self.available <= 0.0 {
            Shelf::Empty
        } else if planned
            .get(&self.key.0)
            .is_some_and(|p| self.daily_usage > 1.5 * p)
        {
            Shelf::UsageHigh
        } else {
            Shelf::Stocked
        }
    }
}

/// Runs the shortage query and returns its rows.
async fn positions(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Vec<Position>> {
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;
    let batches = ctx
        .sql(&format!(
            "SELECT part_id, warehouse_id, risk_level, CAST(available AS DOUBLE) AS available, \
             CAST(days_of_cover AS DOUBLE) AS cover, CAST(lead_time_days AS DOUBLE) AS lead, \
             CAST(daily_usage AS DOUBLE) AS usage \
             FROM ({sql})"
        ))
        .await?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in &batches {
        let s = |n: &str| crate::lakehouse::query::strings(b, n);
        let (part, wh, risk) = (s("part_id")?, s("warehouse_id")?, s("risk_level")?);
        let (available, cover, lead, usage) = (
            b.column(3).as_primitive::<Float64Type>(),
            b.column(4).as_primitive::<Float64Type>(),
            b.column(5).as_primitive::<Float64Type>(),
            b.column(6).as_primitive::<Float64Type>(),
        );
        for i in 0..b.num_rows() {
            out.push(Position {
                key: (part.value(i).to_string(), wh.value(i).to_string()),
                risk: risk.value(i).to_string(),
                available: available.value(i),
                cover: cover.is_valid(i).then(|| cover.value(i)),
                lead_time: lead.value(i),
                daily_usage: usage.value(i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::world::{GroundTruth, Stockout};

    fn key(part: &str, warehouse: &str) -> (String, String) {
        (part.to_string(), warehouse.to_string())
    }

    /// A flag is judged over what it claims (the lead time plus the margin, at least 21 days):
    /// a long-lead part flagged 25 days before it ran out is a hit there and a false alarm
    /// within 21 days; the false alarms are told apart by what was going on at their flag.
    #[test]
    fn flags_are_judged_over_their_horizon_and_false_alarms_by_cause() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = |d: f64| start + days_f(d);
        let mut parts = PartFacts {
            supplier: HashMap::new(),
            lead_days: HashMap::new(),
            planned: HashMap::new(),
        };
        for (part, lead) in [("P-LONG", 30.0), ("P-SHORT", 5.0)] {
            parts.supplier.insert(part.into(), "SUP-0001".into());
            parts.lead_days.insert(part.into(), lead);
        }
        let truth = GroundTruth {
            stockouts: vec![Stockout {
                position: 0,
                part_id: "P-LONG".into(),
                warehouse_id: "WH-1".into(),
                at: day(26.0),
                cause: "supplier_delay",
            }],
            surges: vec![Surge {
                position: 1,
                part_id: "P-SHORT".into(),
                warehouse_id: "WH-1".into(),
                start: day(0.5),
                end: day(6.0),
                factor: 3.0,
            }],
            ..GroundTruth::default()
        };
        let flags: Flags = HashMap::from([
            (key("P-LONG", "WH-1"), vec![(day(1.0), Shelf::Stocked)]),
            (key("P-SHORT", "WH-1"), vec![(day(1.0), Shelf::UsageHigh)]),
            (key("P-SHORT", "WH-2"), vec![(day(2.0), Shelf::UsageHigh)]),
            (
                key("P-SHORT", "WH-3"),
                vec![(day(3.0), Shelf::Empty), (day(3.5), Shelf::Empty)],
            ),
        ]);
        let judged_until =
            |end| judge(&flags, &truth, &parts, 3.0, start, end, Duration::hours(12));
        let j = judged_until(day(60.0));
        assert_eq!((j.episodes, j.confirmed), (4, 1));
        assert_eq!((j.episodes_21d, j.confirmed_21d), (4, 0));
        assert_eq!(
            j.unconfirmed_by_cause,
            BTreeMap::from([
                ("shelf_already_empty", 1),
                ("surge_running", 1),
                ("usage_read_high", 1),
            ])
        );
        // A flag that cannot be followed for its whole horizon before the run ends is not
        // judged: the long-lead flag needs 33 days.
        let j = judged_until(day(30.0));
        assert_eq!((j.episodes, j.confirmed), (3, 0));
        assert_eq!((j.episodes_21d, j.confirmed_21d), (4, 0));
    }
}
