//! Prompts: a starting point for each persona, naming the tools that answer their day.

use rmcp::model::{
    GetPromptRequestParams, GetPromptResult, ListPromptsResult, PaginatedRequestParams, Prompt,
    PromptArgument, PromptMessage, Role,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::json;

struct Persona {
    name: &'static str,
    description: &'static str,
    /// The argument narrowing the scope, and what it means.
    scope: (&'static str, &'static str),
    text: &'static str,
}

const PERSONAS: [Persona; 2] = [
    Persona {
        name: "supply_chain_manager",
        description: "Morning review for a supply-chain manager: shortages, late shipments, orders to place",
        scope: (
            "warehouse_id",
            "Limit the review to one warehouse (e.g. WH-01)",
        ),
        text: "You are assisting a supply-chain manager{scope}. Start with list_shortage_risks \
               (CRITICAL first) and get_inventory_status for the positions at risk; check \
               inbound with track_shipments (open_only) and explain delays. For each position \
               that will run out before its lead time, propose a purchase order with the \
               suggested quantity and the priority its timing needs (standard, expedited or \
               rush, and what the fee buys); place it with create_order only after the manager \
               confirms, always with an idempotency_key, then follow it with get_order_status. \
               For a machine with anomalies or maintenance alerts, search_knowledge (kinds sop \
               and incident, with its machine_id or machine_type) says how to fix it and \
               whether it happened before; read a whole document at its URI. \
               Quote each answer's as_of so the manager knows how fresh the numbers are.",
    },
    Persona {
        name: "sales_rep",
        description: "Account review for a sales representative: churn risks, account health, follow-ups",
        scope: (
            "account_manager",
            "Limit the review to one representative's accounts",
        ),
        text: "You are assisting a sales representative{scope}. Start with list_churn_risks \
               (HIGH and CRITICAL), then lookup_customer_info for each account to see its \
               purchase rhythm, spend trend and open tickets (search_tickets for details; \
               search_knowledge with kinds proposal and the customer_id shows what was offered \
               before). \
               Summarize why each account is at risk using the churn factors, suggest the next \
               action from the recommendation, and use sales_kpis to put the accounts in context. \
               Open a ticket with create_ticket only when the representative asks, with an \
               idempotency_key. Quote each answer's as_of so the representative knows how fresh \
               it is.",
    },
];

pub async fn list(
    _request: Option<PaginatedRequestParams>,
    _context: RequestContext<RoleServer>,
) -> Result<ListPromptsResult, ErrorData> {
    Ok(ListPromptsResult::with_all_items(
        PERSONAS
            .iter()
            .map(|p| {
                let mut arg = PromptArgument::new(p.scope.0);
                arg.description = Some(p.scope.1.to_string());
                arg.required = Some(false);
                Prompt::new(p.name, Some(p.description), Some(vec![arg]))
            })
            .collect(),
    ))
}

pub async fn get(
    request: GetPromptRequestParams,
    _context: RequestContext<RoleServer>,
) -> Result<GetPromptResult, ErrorData> {
    let Some(p) = PERSONAS.iter().find(|p| p.name == request.name) else {
        return Err(ErrorData::invalid_params(
            format!("unknown prompt {:?}", request.name),
            Some(json!({ "known": PERSONAS.iter().map(|p| p.name).collect::<Vec<_>>() })),
        ));
    };
    let args = request.arguments.unwrap_or_default();
    for k in args.keys() {
        if k != p.scope.0 {
            return Err(ErrorData::invalid_params(
                format!("prompt {} takes only {:?}, not {k:?}", p.name, p.scope.0),
                None,
            ));
        }
    }
    let scope = match args.get(p.scope.0).and_then(|v| v.as_str()) {
        Some(v) => {
            super::args::id(p.scope.0, v)?;
            format!(
                " ({} {v}: pass it as {} to the tools that take it)",
                p.scope.0, p.scope.0
            )
        }
        None => String::new(),
    };
    Ok(GetPromptResult::new(vec![PromptMessage::new_text(
        Role::User,
        p.text.replace("{scope}", &scope),
    )])
    .with_description(p.description))
}
