//! Resources: the active alert feed and signal snapshots, as JSON, each with `as_of`.
//!
//! Subscriptions: a client subscribing to a resource gets `notifications/resources/updated`
//! when its table's Change Data Feed shows rows that change what the resource holds (new
//! alerts; signals inserted, updated or deleted). One watcher per MCP session wakes when the
//! catalog serves new versions ([`super::LiveCatalog::published`]) and reads only the new
//! commits' changes.
//!
//! Tenancy: a caller lists, reads and subscribes to the resources whose table its persona may
//! read, and a change notifies it only when a changed row passes its row filters (the same
//! [`crate::auth::enforce::restrict`] the query engine uses), so notifications say nothing
//! about another tenant's rows.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use deltalake::DeltaTable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rmcp::model::{
    ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::json;

use super::args::internal;
use super::query::rows_json;
use super::server::{Millstream, Subscriptions};

/// A resource: its URI, the table whose changes update it, and the query that reads it.
pub struct Feed {
    pub uri: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub table: &'static str,
    sql: &'static str,
}

pub const FEEDS: [Feed; 4] = [
    Feed {
        uri: "millstream://alerts/active",
        name: "active-alerts",
        description: "HIGH and CRITICAL alerts of the last 24 event-time hours (ops.alerts), newest first",
        table: "ops.alerts",
        sql: "SELECT alert_id, source, signal_key, severity, title, detail, signal_ts, \
              warehouse_id, plant_id, region, customer_id, account_manager FROM ops.alerts \
              WHERE signal_ts > (SELECT max(signal_ts) FROM ops.alerts) - INTERVAL '24 hours' \
              ORDER BY signal_ts DESC, alert_id LIMIT 500",
    },
    Feed {
        uri: "millstream://signals/shortages",
        name: "shortage-risks",
        description: "Part x warehouse positions at HIGH or CRITICAL shortage risk",
        table: "supply_chain.shortage_signals",
        sql: "SELECT part_id, warehouse_id, risk_level, days_of_cover, predicted_shortage_date, \
              suggested_order_qty, reasons, as_of FROM supply_chain.shortage_signals \
              WHERE risk_level IN ('HIGH', 'CRITICAL') \
              ORDER BY days_of_cover NULLS LAST, part_id, warehouse_id LIMIT 500",
    },
    Feed {
        uri: "millstream://signals/churn",
        name: "churn-risks",
        description: "Customers at HIGH or CRITICAL churn risk",
        table: "sales.churn_signals",
        sql: "SELECT customer_id, name, region, account_manager, risk_level, churn_probability, \
              factors, recommendation, as_of FROM sales.churn_signals \
              WHERE risk_level IN ('HIGH', 'CRITICAL') \
              ORDER BY churn_probability DESC, customer_id LIMIT 500",
    },
    Feed {
        uri: "millstream://signals/maintenance",
        name: "maintenance-alerts",
        description: "Machines whose anomalies persist, newest hour first",
        table: "iot.maintenance_alerts",
        sql: "SELECT alert_id, machine_id, plant_id, window_start, anomalies, active_windows, \
              sensors, severity FROM iot.maintenance_alerts \
              ORDER BY window_start DESC, machine_id LIMIT 500",
    },
];

/// Documents (SOPs, incident reports, proposals, tickets) by id: `millstream://documents/{id}`.
pub const DOCUMENTS: &str = "millstream://documents/";

/// The resource templates: documents by id.
pub fn templates(server: &Millstream) -> Vec<ResourceTemplate> {
    if crate::knowledge::searchable(&server.access, &[]).is_empty() {
        return Vec::new();
    }
    vec![
        ResourceTemplate::new(format!("{DOCUMENTS}{{id}}"), "document")
            .with_description(
                "A knowledge document by id (search_knowledge gives the URIs): standard \
                 operating procedure, incident report, proposal or support ticket, whole, with \
                 its entities and as_of",
            )
            .with_mime_type("application/json"),
    ]
}

/// A document by id, read through the caller's governed session from the tables it may read:
/// one it may not read is "not found", exactly as one that does not exist.
async fn read_document(server: &Millstream, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let id = &uri[DOCUMENTS.len()..];
    let not_found = || {
        ErrorData::resource_not_found(format!("no document {id:?}"), Some(json!({ "uri": uri })))
    };
    if super::args::id("uri", id).is_err() {
        return Err(not_found());
    }
    for source in crate::knowledge::SOURCES
        .iter()
        .filter(|s| server.access.may_read(s.table))
    {
        let sql = format!("SELECT * FROM {} WHERE {} = $1", source.table, source.id);
        let (batches, as_of) = server.run(&sql, vec![super::args::text(id)]).await?;
        if let Some(row) = rows_json(&batches)?
            .as_array_mut()
            .and_then(|rows| rows.pop())
        {
            let body = json!({ "kind": source.kind, "document": row, "as_of": as_of });
            return Ok(ReadResourceResult::new(vec![
                ResourceContents::text(body.to_string(), uri).with_mime_type("application/json"),
            ]));
        }
    }
    Err(not_found())
}

fn feed(uri: &str) -> Result<&'static Feed, ErrorData> {
    FEEDS.iter().find(|f| f.uri == uri).ok_or_else(|| {
        ErrorData::resource_not_found(
            format!("unknown resource {uri:?}"),
            Some(json!({ "uri": uri, "known": FEEDS.iter().map(|f| f.uri).collect::<Vec<_>>() })),
        )
    })
}

/// The feed at `uri`, if `server`'s principal may read its table.
fn readable_feed(server: &Millstream, uri: &str) -> Result<&'static Feed, ErrorData> {
    let f = feed(uri)?;
    if server.access.may_read(f.table) {
        Ok(f)
    } else {
        Err(ErrorData::invalid_params(
            format!(
                "resource {uri} is not available to persona {} (it reads {})",
                server.access.persona, f.table
            ),
            Some(json!({ "field": "uri", "uri": uri })),
        ))
    }
}

pub async fn list(
    server: &Millstream,
    _request: Option<PaginatedRequestParams>,
    _context: RequestContext<RoleServer>,
) -> Result<ListResourcesResult, ErrorData> {
    Ok(ListResourcesResult::with_all_items(
        FEEDS
            .iter()
            .filter(|f| server.access.may_read(f.table))
            .map(|f| {
                Resource::new(f.uri, f.name)
                    .with_description(f.description)
                    .with_mime_type("application/json")
            })
            .collect(),
    ))
}

pub async fn read(
    server: &Millstream,
    request: ReadResourceRequestParams,
    _context: RequestContext<RoleServer>,
) -> Result<ReadResourceResult, ErrorData> {
    if request.uri.starts_with(DOCUMENTS) {
        return read_document(server, &request.uri).await;
    }
    let f = readable_feed(server, &request.uri)?;
    let (batches, as_of) = server.run(f.sql, vec![]).await?;
    let body = json!({ "items": rows_json(&batches)?, "as_of": as_of });
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(body.to_string(), f.uri).with_mime_type("application/json"),
    ]))
}

pub async fn subscribe(
    server: &Millstream,
    request: SubscribeRequestParams,
    context: RequestContext<RoleServer>,
) -> Result<(), ErrorData> {
    readable_feed(server, &request.uri)?;
    let subs = server.subscriptions.clone();
    subs.uris
        .lock()
        .expect("poisoned")
        .insert(request.uri.clone());
    if !subs.watching.swap(true, Ordering::SeqCst) {
        tokio::spawn(watch(server.clone(), subs, context.peer.clone()));
    }
    Ok(())
}

pub async fn unsubscribe(
    server: &Millstream,
    request: UnsubscribeRequestParams,
    _context: RequestContext<RoleServer>,
) -> Result<(), ErrorData> {
    server
        .subscriptions
        .uris
        .lock()
        .expect("poisoned")
        .remove(&request.uri);
    Ok(())
}

/// Follows the subscribed feeds' tables; notifies when a new commit's Change Data Feed has rows.
/// Ends when the client goes away.
async fn watch(
    server: Millstream,
    subs: Arc<Subscriptions>,
    peer: rmcp::service::Peer<RoleServer>,
) {
    let mut watcher = Watcher::new(&server, &BTreeMap::new());
    let mut published = server.catalog.published();
    loop {
        // Woken when the catalog serves new versions; the timeout only notices a client that
        // went away while nothing was committed.
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if peer.is_transport_closed() {
            return;
        }
        let wanted: Vec<&'static Feed> = {
            let uris = subs.uris.lock().expect("poisoned");
            FEEDS.iter().filter(|f| uris.contains(f.uri)).collect()
        };
        for (f, version) in watcher.changed(&wanted).await {
            if let Err(e) = peer.send_notification(updated(f, version)).await {
                tracing::debug!(error = %e, "client gone; resource watcher stops");
                return;
            }
        }
    }
}

/// `subscriptions/listen` (protocol 2026-07-28): notifies `subscription` of changes to the feeds
/// it accepted until the client cancels it. Nothing of it lives outside the request, so a
/// client that lands on another replica listens again there; with the `_meta`
/// [`super::consistency::SEEN`] versions of its last notification it first hears of every
/// change it missed in between.
pub async fn listen(
    server: &Millstream,
    subscription: &rmcp::service::SubscriptionContext,
) -> Result<Listener, ErrorData> {
    let accepted = subscription
        .accepted()
        .resource_subscriptions
        .clone()
        .unwrap_or_default();
    let feeds = accepted
        .iter()
        .map(|uri| readable_feed(server, uri))
        .collect::<Result<Vec<_>, _>>()?;
    let resume = super::consistency::seen(server, &subscription.request_context().meta)?;
    server.catch_up_to(&resume).await?;
    Ok(Listener {
        watcher: Watcher::new(server, &resume),
        feeds,
        resume: !resume.is_empty(),
    })
}

/// An accepted `subscriptions/listen` ([`listen`]), ready to run.
pub struct Listener {
    watcher: Watcher,
    feeds: Vec<&'static Feed>,
    /// Whether the client resumes from versions it sent: then the changes since go out first.
    resume: bool,
}

impl Listener {
    /// Notifies `subscription` of changes until the client cancels it or goes away.
    pub async fn run(mut self, subscription: rmcp::service::SubscriptionContext) {
        let mut published = self.watcher.server.catalog.published();
        let sink = subscription.sink();
        let mut first = self.resume;
        loop {
            if !std::mem::take(&mut first) {
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { return },
                    () = subscription.cancelled() => return,
                }
            }
            for (f, version) in self.watcher.changed(&self.feeds).await {
                if let Err(e) = sink.send(updated(f, version)).await {
                    tracing::debug!(error = %e, "subscription ended");
                    return;
                }
            }
        }
    }
}

/// `notifications/resources/updated` for feed `f`, whose table is now at `version` (in
/// `_meta`, the token that resumes from here: [`super::consistency::SEEN`]).
fn updated(f: &Feed, version: i64) -> rmcp::model::ServerNotification {
    use rmcp::model::GetMeta;
    let mut n = rmcp::model::ServerNotification::ResourceUpdatedNotification(
        rmcp::model::ResourceUpdatedNotification::new(
            rmcp::model::ResourceUpdatedNotificationParam::new(f.uri),
        ),
    );
    n.get_meta_mut().0.0.insert(
        super::consistency::SEEN.to_string(),
        json!({ f.table: version }),
    );
    n
}

/// For one subscriber: the version of each followed table up to which it has been told of
/// changes, and the tables opened to read their Change Data Feed.
struct Watcher {
    server: Millstream,
    seen: BTreeMap<&'static str, i64>,
    opened: BTreeMap<&'static str, DeltaTable>,
}

impl Watcher {
    /// Told of everything up to `from` (table → version), and of the rest up to what the server
    /// serves now.
    fn new(server: &Millstream, from: &BTreeMap<String, i64>) -> Watcher {
        let seen = FEEDS
            .iter()
            .filter_map(|f| {
                let v = from
                    .get(f.table)
                    .copied()
                    .or_else(|| server.catalog.version(f.table))?;
                Some((f.table, v))
            })
            .collect();
        Watcher {
            server: server.clone(),
            seen,
            opened: BTreeMap::new(),
        }
    }

    /// The feeds of `wanted` whose tables have, since the last call, changes the subscriber may
    /// see, with the version now served. A change feed that cannot be read (its history
    /// vacuumed) counts as a change: a needless re-read is better than a missed one.
    async fn changed(&mut self, wanted: &[&'static Feed]) -> Vec<(&'static Feed, i64)> {
        let mut out = Vec::new();
        for &f in wanted {
            let Some(now) = self.server.catalog.version(f.table) else {
                continue;
            };
            let from = self.seen.get(f.table).map_or(0, |v| v + 1);
            if now < from {
                continue;
            }
            self.seen.insert(f.table, now);
            match changed_rows(&self.server, &mut self.opened, f.table, from, now).await {
                Ok(0) => {}
                Ok(_) => out.push((f, now)),
                Err(e) => {
                    tracing::warn!(table = f.table, error = %e.message, "reading changes");
                    out.push((f, now));
                }
            }
        }
        out
    }
}

/// Rows in the Change Data Feed of `table` between two versions (inclusive) that `server`'s
/// principal may see. The table is opened once per watcher and afterwards only reads the
/// commits it has not seen.
async fn changed_rows(
    server: &Millstream,
    opened: &mut BTreeMap<&'static str, DeltaTable>,
    table: &'static str,
    from: i64,
    to: i64,
) -> Result<usize, ErrorData> {
    let delta = match opened.entry(table) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(server.catalog.lake().open(table).await.map_err(internal)?),
    };
    // Forward only: a table opened just now may already be past `to`.
    if delta.version().is_some_and(|v| (v as i64) < to) {
        delta
            .update_incremental(Some(to as u64))
            .await
            .map_err(|e| internal(crate::Error::delta(table, e)))?;
    }
    let batches =
        crate::lakehouse::cdf::read_changes(delta.clone(), table, from as u64, Some(to as u64))
            .await
            .map_err(internal)?;
    visible_rows(server, table, batches).await
}

/// How many of `table`'s changed rows pass `server`'s row filters.
async fn visible_rows(
    server: &Millstream,
    table: &str,
    changes: Vec<arrow::array::RecordBatch>,
) -> Result<usize, ErrorData> {
    let filters = server.access.filters(table).map_err(internal)?;
    let (Some(first), false) = (changes.first(), filters.is_empty()) else {
        return Ok(changes.iter().map(|b| b.num_rows()).sum());
    };
    // `visible_in` filters read other tables as the caller sees them now.
    let session = server.session().await?;
    let mut visible = BTreeMap::new();
    for (_, filter) in &filters {
        if let crate::auth::policy::ColumnFilter::VisibleIn(other) = filter
            && let Ok(provider) = session.ctx.table_provider(other.as_str()).await
        {
            visible.insert(other.clone(), provider);
        }
    }
    let changed = datafusion::datasource::MemTable::try_new(first.schema(), vec![changes])
        .map_err(internal)?;
    let restricted = crate::auth::enforce::restrict(
        table,
        Arc::new(changed),
        &server.access,
        &visible,
        crate::auth::enforce::Internal::Hidden,
    )
    .map_err(internal)?;
    datafusion::prelude::SessionContext::new()
        .read_table(restricted)
        .map_err(internal)?
        .count()
        .await
        .map_err(internal)
}
