//! Ticketing tools: search, status, and the two ticket actions.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::actions::{TicketCategory, TicketStatus, wire_name};
use crate::mcp::actions::{ResolutionRequest, TicketReceipt, TicketRequest};
use crate::mcp::args::{id, invalid, limit, opt_id, opt_text, text};
use crate::mcp::catalog::AsOf;
use crate::mcp::query::Query;
use crate::mcp::server::Millstream;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketArgs {
    pub ticket_id: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Ticket {
    pub ticket_id: String,
    pub customer_id: String,
    pub subject: String,
    pub description: String,
    pub category: String,
    pub priority: String,
    pub status: String,
    pub resolution: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TicketAnswer {
    pub ticket: Ticket,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// What to look for in subject, description and resolution, in your own words: tickets are
    /// ranked by meaning and keywords (at most 50). Empty or absent: every ticket matching the
    /// filters, most recent first.
    pub text: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<TicketStatus>,
    pub category: Option<TicketCategory>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SearchAnswer {
    /// Most relevant first when `text` is given (`ranked_by` = relevance), else most recently
    /// updated first.
    pub tickets: Vec<Ticket>,
    /// "relevance" (knowledge search: meaning and keywords), "words" (every word must appear;
    /// when the server has no knowledge search) or "recency" (no text).
    pub ranked_by: String,
    pub as_of: AsOf,
}

const TICKET_COLUMNS: &str = "ticket_id, customer_id, subject, description, category, priority, \
     status, resolution, created_at, updated_at";

#[tool_router(router = tickets_router, vis = "pub(crate)")]
impl Millstream {
    #[tool(
        description = "Open a support ticket for a customer. Produced to mfg.actions.tickets and \
                       materialized into support.tickets by the pipeline; the same \
                       idempotency_key always yields the same single ticket.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true
        )
    )]
    pub async fn create_ticket(
        &self,
        Parameters(a): Parameters<TicketRequest>,
    ) -> Result<Json<TicketReceipt>, ErrorData> {
        crate::mcp::actions::create_ticket(self, a).await.map(Json)
    }

    #[tool(
        description = "A ticket's status, priority, resolution and history times.",
        annotations(read_only_hint = true)
    )]
    pub async fn get_ticket_status(
        &self,
        Parameters(a): Parameters<TicketArgs>,
    ) -> Result<Json<TicketAnswer>, ErrorData> {
        id("ticket_id", &a.ticket_id)?;
        let q = Query::new(&format!("SELECT {TICKET_COLUMNS} FROM support.tickets"))
            .filter("ticket_id = ?", Some(text(&a.ticket_id)))
            .finish("");
        let (mut tickets, as_of) = self.fetch(q).await?;
        match tickets.pop() {
            Some(ticket) => Ok(Json(TicketAnswer { ticket, as_of })),
            None => Err(invalid(
                "ticket_id",
                format!(
                    "unknown ticket_id {:?} (a ticket just created appears once the pipeline \
                     has materialized it, usually within seconds)",
                    a.ticket_id
                ),
            )),
        }
    }

    #[tool(
        description = "Move a ticket to in_progress, resolved or closed, with the resolution \
                       text (required to resolve or close). Produced to mfg.actions.tickets and \
                       applied by the pipeline exactly once.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true
        )
    )]
    pub async fn update_ticket_resolution(
        &self,
        Parameters(a): Parameters<ResolutionRequest>,
    ) -> Result<Json<TicketReceipt>, ErrorData> {
        crate::mcp::actions::update_ticket_resolution(self, a)
            .await
            .map(Json)
    }

    #[tool(
        description = "Search support tickets: by what they are about (ranked by meaning and \
                       keywords, like search_knowledge) and/or filtered by customer, status, \
                       category; without text, most recently updated first.",
        annotations(read_only_hint = true)
    )]
    pub async fn search_tickets(
        &self,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<Json<SearchAnswer>, ErrorData> {
        opt_id("customer_id", &a.customer_id)?;
        let n = limit(a.limit)?;
        let text_given = a.text.as_deref().is_some_and(|t| !t.trim().is_empty());
        let filters = |q: Query| {
            q.filter("customer_id = ?", opt_text(&a.customer_id))
                .filter("status = ?", a.status.map(|s| text(&wire_name(s))))
                .filter("category = ?", a.category.map(|c| text(&wire_name(c))))
        };
        if text_given && let Ok(knowledge) = self.knowledge() {
            return self
                .rank_tickets(&knowledge, a.text.unwrap_or_default(), n, filters)
                .await
                .map(Json);
        }
        let words: Vec<String> = a
            .text
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        if words.len() > 16 || words.iter().any(|w| w.chars().count() > 64) {
            return Err(invalid("text", "at most 16 words of at most 64 characters"));
        }
        let mut q = filters(Query::new(&format!(
            "SELECT {TICKET_COLUMNS} FROM support.tickets"
        )));
        for w in &words {
            // strpos, not LIKE: the caller's % and _ stay literal.
            q = q.filter(
                "strpos(lower(concat_ws(' ', subject, description, coalesce(resolution, ''))), ?) > 0",
                Some(text(w)),
            );
        }
        let q = q.finish(&format!("ORDER BY updated_at DESC, ticket_id LIMIT {n}"));
        let (tickets, as_of) = self.fetch(q).await?;
        Ok(Json(SearchAnswer {
            tickets,
            ranked_by: if words.is_empty() { "recency" } else { "words" }.into(),
            as_of,
        }))
    }
}

impl Millstream {
    /// Tickets passing `filters`, ranked for `query` by knowledge search (the same engine and
    /// tenancy as `search_knowledge`), then read whole through the caller's session.
    async fn rank_tickets(
        &self,
        knowledge: &crate::knowledge::Knowledge,
        query: String,
        n: u32,
        filters: impl FnOnce(Query) -> Query,
    ) -> Result<SearchAnswer, ErrorData> {
        let sources = self.searchable(&["ticket".to_string()])?;
        let mut request =
            crate::knowledge::SearchRequest::new(query, (n as usize).min(crate::knowledge::MAX_K));
        request.kinds = vec!["ticket".into()];
        let (predicate, params) = filters(Query::new("")).predicate();
        let narrow = crate::knowledge::Narrow {
            table: "support.tickets",
            predicate: &predicate,
            params,
        };
        let (hits, _, ranked_as_of) = self
            .search_documents(knowledge, &request, &sources, Some(narrow))
            .await?;
        if hits.is_empty() {
            return Ok(SearchAnswer {
                tickets: Vec::new(),
                ranked_by: "relevance".into(),
                as_of: ranked_as_of,
            });
        }
        let ids: Vec<&str> = hits.iter().map(|h| h.doc.doc_id.as_str()).collect();
        let q = Query::new(&format!("SELECT {TICKET_COLUMNS} FROM support.tickets"))
            .any_of("ticket_id", &ids)
            .finish("");
        let (mut tickets, as_of): (Vec<Ticket>, AsOf) = self.fetch(q).await?;
        let rank = |t: &Ticket| ids.iter().position(|id| *id == t.ticket_id);
        tickets.sort_by_key(rank);
        Ok(SearchAnswer {
            tickets,
            ranked_by: "relevance".into(),
            as_of: as_of.merge(ranked_as_of),
        })
    }
}
