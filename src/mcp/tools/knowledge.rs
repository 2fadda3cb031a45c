//! Knowledge search: standard operating procedures, incident reports, sales proposals and
//! support tickets, ranked by meaning and by words together ([`crate::knowledge`]), among the
//! documents the caller's own governed session can read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::knowledge::{Hit, Knowledge, Links, Narrow, SearchRequest, Source};
use crate::mcp::args::{invalid, opt_id};
use crate::mcp::catalog::AsOf;
use crate::mcp::server::Millstream;

/// A kind of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Standard operating procedures (per machine type and failure mode, per warehouse process).
    Sop,
    /// Incident reports: what happened on a machine, the cause, what fixed it.
    Incident,
    /// Sales proposals made to customers.
    Proposal,
    /// Support tickets, with their resolution.
    Ticket,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Sop => "sop",
            Kind::Incident => "incident",
            Kind::Proposal => "proposal",
            Kind::Ticket => "ticket",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchKnowledgeArgs {
    /// What you are looking for, in your own words (1 to 1000 characters): a symptom, a
    /// question, a customer's request. Meaning counts as well as words.
    pub query: String,
    /// Only documents of these kinds (default: every kind you may read).
    pub kinds: Option<Vec<Kind>>,
    pub plant_id: Option<String>,
    pub warehouse_id: Option<String>,
    pub customer_id: Option<String>,
    pub machine_id: Option<String>,
    /// e.g. cnc_mill, injection_molder
    pub machine_type: Option<String>,
    /// temperature, vibration, pressure or power
    pub sensor_type: Option<String>,
    pub part_id: Option<String>,
    pub supplier_id: Option<String>,
    /// Only documents updated at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only documents updated before this time (RFC 3339).
    pub until: Option<String>,
    /// How many documents (1 to 50; default 5).
    pub k: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct KnowledgeHit {
    pub doc_id: String,
    pub kind: String,
    pub title: String,
    /// The passage of the document that matched best.
    pub snippet: String,
    /// Reciprocal-rank-fusion score of the semantic and keyword rankings (higher is better;
    /// comparable within one answer only).
    pub score: f32,
    /// The whole document: read it with resources/read.
    pub uri: String,
    pub updated_at: String,
    /// The entities the document concerns.
    pub links: Links,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SearchKnowledgeAnswer {
    /// Best first.
    pub hits: Vec<KnowledgeHit>,
    /// False while the server is still building its index after a start: then the hits come
    /// from the documents indexed so far.
    pub complete: bool,
    /// The versions of the document tables the index reflected.
    pub as_of: AsOf,
}

/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 480;

#[tool_router(router = knowledge_router, vis = "pub(crate)")]
impl Millstream {
    #[tool(
        description = "Search standard operating procedures, incident reports, sales proposals \
                       and support tickets by meaning and keywords (hybrid semantic + BM25 \
                       ranking): 'how do I fix this?', 'has this happened before?', 'what did we \
                       offer this customer?'. Filter by kind, plant, warehouse, customer, \
                       machine, machine type, sensor type, part, supplier and update time. \
                       Returns the best passage of each document and its URI \
                       (millstream://documents/{id}).",
        annotations(read_only_hint = true)
    )]
    pub async fn search_knowledge(
        &self,
        Parameters(a): Parameters<SearchKnowledgeArgs>,
    ) -> Result<Json<SearchKnowledgeAnswer>, ErrorData> {
        let knowledge = self.knowledge()?;
        for (field, v) in [
            ("plant_id", &a.plant_id),
            ("warehouse_id", &a.warehouse_id),
            ("customer_id", &a.customer_id),
            ("machine_id", &a.machine_id),
            ("machine_type", &a.machine_type),
            ("sensor_type", &a.sensor_type),
            ("part_id", &a.part_id),
            ("supplier_id", &a.supplier_id),
        ] {
            opt_id(field, v)?;
        }
        let kinds: Vec<String> = a
            .kinds
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.as_str().to_string())
            .collect();
        let sources = self.searchable(&kinds)?;
        let mut request = SearchRequest::new(a.query, a.k.unwrap_or(5) as usize);
        request.kinds = kinds;
        request.links = Links {
            plant_id: a.plant_id,
            warehouse_id: a.warehouse_id,
            customer_id: a.customer_id,
            machine_id: a.machine_id,
            machine_type: a.machine_type,
            sensor_type: a.sensor_type,
            part_id: a.part_id,
            supplier_id: a.supplier_id,
        };
        request.since = time("since", a.since.as_deref())?;
        request.until = time("until", a.until.as_deref())?;
        let (hits, complete, as_of) = self
            .search_documents(&knowledge, &request, &sources, None)
            .await?;
        Ok(Json(SearchKnowledgeAnswer {
            hits: hits.into_iter().map(KnowledgeHit::from).collect(),
            complete,
            as_of,
        }))
    }
}

impl Millstream {
    /// This server's knowledge search, or an error saying why it has none (which setting, what
    /// to install).
    pub(crate) fn knowledge(&self) -> Result<Arc<Knowledge>, ErrorData> {
        self.knowledge
            .clone()
            .map_err(|why| ErrorData::internal_error(why.to_string(), None))
    }

    /// The sources of `kinds` (all when empty) the caller may search; an error naming the ones
    /// it may search when it asks for others.
    pub(crate) fn searchable(&self, kinds: &[String]) -> Result<Vec<&'static Source>, ErrorData> {
        let sources = crate::knowledge::searchable(&self.access, kinds);
        let allowed = crate::knowledge::searchable(&self.access, &[]);
        if let Some(k) = kinds
            .iter()
            .find(|k| !sources.iter().any(|s| s.kind == k.as_str()))
        {
            let names: Vec<&str> = allowed.iter().map(|s| s.kind).collect();
            return Err(invalid(
                "kinds",
                format!(
                    "persona {} cannot search {k} documents (it may search: {})",
                    self.access.persona,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        if sources.is_empty() {
            return Err(invalid(
                "kinds",
                format!("persona {} may search no documents", self.access.persona),
            ));
        }
        Ok(sources)
    }

    /// Runs `request` over the documents of `sources` the caller's governed session returns
    /// (narrowed further by `narrow`), under the query timeout. Says whether the index covered
    /// every source and which versions it reflected.
    pub(crate) async fn search_documents(
        &self,
        knowledge: &Knowledge,
        request: &SearchRequest,
        sources: &[&'static Source],
        narrow: Option<Narrow<'_>>,
    ) -> Result<(Vec<Hit>, bool, AsOf), ErrorData> {
        use tracing::Instrument;
        if let Some((field, message)) = request.problem() {
            return Err(invalid(field, message));
        }
        let session = self.session().await?;
        let work = async {
            let visible = crate::knowledge::visible(&session.ctx, sources, narrow)
                .instrument(tracing::debug_span!("knowledge.visible"))
                .await?;
            knowledge.search(self.access.key(), request, &visible).await
        };
        // A retriever to trace viewers that know the kind (MLflow).
        let span = tracing::info_span!(
            "knowledge.search",
            principal = %self.access.principal,
            k = request.k,
            mlflow.spanType = "RETRIEVER",
        );
        let hits = self
            .within_timeout(work.instrument(span))
            .await?
            .map_err(|e| {
                tracing::warn!(error = %e, principal = %self.access.principal, "knowledge search failed");
                ErrorData::internal_error(format!("knowledge search failed: {e}"), None)
            })?;
        let versions = knowledge.versions();
        let complete = knowledge.built();
        let as_of = AsOf::of_versions(sources.iter().filter_map(|s| {
            let r = versions.get(s.table)?;
            Some((s.table.to_string(), r.version, r.committed_at, None))
        }));
        Ok((hits, complete, as_of))
    }
}

impl From<Hit> for KnowledgeHit {
    fn from(h: Hit) -> KnowledgeHit {
        KnowledgeHit {
            uri: format!("{}{}", crate::mcp::resources::DOCUMENTS, h.doc.doc_id),
            doc_id: h.doc.doc_id.clone(),
            kind: h.doc.kind.to_string(),
            title: h.doc.title.clone(),
            snippet: snippet(&h.text),
            score: h.score,
            updated_at: crate::mcp::catalog::rfc3339(h.doc.updated_at),
            links: h.doc.links.clone(),
        }
    }
}

/// `text` cut to at most [`SNIPPET_CHARS`] characters at a word boundary.
fn snippet(text: &str) -> String {
    if text.chars().count() <= SNIPPET_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(SNIPPET_CHARS).collect();
    let end = cut.rfind(char::is_whitespace).unwrap_or(cut.len());
    format!("{}…", cut[..end].trim_end())
}

/// An optional RFC 3339 time argument.
fn time(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ErrorData> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| invalid(field, format!("{field} {s:?} is not an RFC 3339 time: {e}")))
    })
    .transpose()
}
