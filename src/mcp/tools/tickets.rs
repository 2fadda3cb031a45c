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
    /// Words to look for in subject, description and resolution (all must appear,
    /// case-insensitive). Empty or absent: every ticket matching the filters.
    pub text: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<TicketStatus>,
    pub category: Option<TicketCategory>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SearchAnswer {
    /// Most recently updated first.
    pub tickets: Vec<Ticket>,
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
        description = "Search support tickets by words (all must appear in subject, description \
                       or resolution) and filter by customer, status, category; most recently \
                       updated first.",
        annotations(read_only_hint = true)
    )]
    pub async fn search_tickets(
        &self,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<Json<SearchAnswer>, ErrorData> {
        opt_id("customer_id", &a.customer_id)?;
        let n = limit(a.limit)?;
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
        let mut q = Query::new(&format!("SELECT {TICKET_COLUMNS} FROM support.tickets"))
            .filter("customer_id = ?", opt_text(&a.customer_id))
            .filter("status = ?", a.status.map(|s| text(&wire_name(s))))
            .filter("category = ?", a.category.map(|c| text(&wire_name(c))));
        for w in &words {
            // strpos, not LIKE: the caller's % and _ stay literal.
            q = q.filter(
                "strpos(lower(concat_ws(' ', subject, description, coalesce(resolution, ''))), ?) > 0",
                Some(text(w)),
            );
        }
        let q = q.finish(&format!("ORDER BY updated_at DESC, ticket_id LIMIT {n}"));
        let (tickets, as_of) = self.fetch(q).await?;
        Ok(Json(SearchAnswer { tickets, as_of }))
    }
}
