//! The MCP protocol side of [`Millstream`]: tool calls (checked against the caller's persona and
//! audited), listings, resources, subscriptions and prompts, each for the caller of the request.

use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool_handler};
use serde_json::json;

use super::server::Millstream;

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Millstream {
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(&context)?;
        me.audit_ready()?;
        let name = request.name.to_string();
        let kind = if super::ACTION_TOOLS.contains(&name.as_str()) {
            "action"
        } else {
            "tool"
        };
        let arguments = request
            .arguments
            .as_ref()
            .map(|a| serde_json::Value::Object(a.clone()).to_string());
        // The caller's trace (an agent sends its `traceparent` in `_meta`, or as a header).
        let traceparent = context
            .meta
            .get_traceparent()
            .map(String::from)
            .or_else(|| {
                context
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| p.headers.get("traceparent"))
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            });
        if let Err(e) = me.catch_up(&context.meta).await {
            me.audit(
                kind,
                &name,
                arguments,
                started,
                Err(("error", e.message.to_string())),
            );
            return Err(e);
        }
        if !me.tool_router.has_route(&name) && Self::is_tool(&name) {
            let message = format!(
                "tool {name} is not available to persona {}",
                me.access.persona
            );
            me.audit(
                kind,
                &name,
                arguments,
                started,
                Err(("refused", message.clone())),
            );
            return Err(ErrorData::invalid_params(
                message,
                Some(json!({ "field": "name" })),
            ));
        }
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(&me, request, context);
        let span = tracing::info_span!("mcp.tool", tool = %name, principal = %me.access.principal);
        if let Some(tp) = &traceparent {
            crate::telemetry::set_remote_parent(&span, tp);
        }
        let result = tracing::Instrument::instrument(me.tool_router.call(tcc), span).await;
        let outcome = match &result {
            Ok(rmcp::model::CallToolResponse::Complete(r)) if r.is_error == Some(true) => Err((
                "error",
                r.content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(("error", e.message.to_string())),
        };
        crate::telemetry::events::ToolCalled {
            tool: if me.tool_router.has_route(&name) {
                &name
            } else {
                "unknown"
            },
            outcome: outcome.as_ref().map_or_else(|(o, _)| *o, |()| "ok"),
            seconds: started.1.elapsed().as_secs_f64(),
        }
        .emit();
        me.audit(kind, &name, arguments, started, outcome);
        result
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let me = self.for_caller(&context)?;
        Ok(rmcp::model::ListToolsResult::with_all_items(
            me.tool_router.list_all(),
        ))
    }

    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("millstream", env!("CARGO_PKG_VERSION")));
        info = info.with_instructions(
            "Live factory signals from millstream's Delta tables. Supply chain: \
             get_inventory_status, list_shortage_risks, predict_shortage, track_shipments, \
             create_order, get_order_status. Sales: lookup_customer_info, list_churn_risks, \
             predict_churn, sales_kpis. IoT: list_anomalies, maintenance_alerts, sensor_stats, \
             query_sensor_data. Tickets: search_tickets, get_ticket_status, create_ticket, \
             update_ticket_resolution. Documents (SOPs, incident reports, proposals, tickets): \
             search_knowledge, then read millstream://documents/{id}. Anything else: \
             describe_tables, then query_sql. Every \
             answer carries `as_of` (table versions, commit time, event-time watermark, lag); \
             actions are events that the pipeline materializes within seconds.",
        );
        info
    }

    async fn list_resources(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        let me = self.for_caller(&context)?;
        super::resources::list(&me, request, context).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        let me = self.for_caller(&context)?;
        Ok(rmcp::model::ListResourceTemplatesResult::with_all_items(
            super::resources::templates(&me),
        ))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(&context)?;
        me.audit_ready()?;
        let uri = request.uri.to_string();
        let result = match me.catch_up(&context.meta).await {
            Ok(()) => super::resources::read(&me, request, context).await,
            Err(e) => Err(e),
        };
        let outcome = resource_outcome(&me, &[&uri], result.as_ref().err());
        me.audit("resource", &uri, None, started, outcome);
        result.map(Into::into)
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(&context)?;
        me.audit_ready()?;
        let uri = request.uri.to_string();
        let result = super::resources::subscribe(&me, request, context).await;
        let outcome = resource_outcome(&me, &[&uri], result.as_ref().err());
        me.audit("subscribe", &uri, None, started, outcome);
        result
    }

    fn accepted_subscription_filter(
        &self,
        _requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        // Every feed; `listen` refuses a feed the caller may not read.
        Some(
            rmcp::model::SubscriptionFilter::builder()
                .resource_subscriptions(super::resources::FEEDS.iter().map(|f| f.uri))
                .build(),
        )
    }

    async fn listen(
        &self,
        subscription: rmcp::service::SubscriptionContext,
    ) -> Result<(), ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(subscription.request_context())?;
        me.audit_ready()?;
        let uris = subscription
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default();
        let listener = super::resources::listen(&me, &subscription).await;
        let outcome = resource_outcome(&me, &uris, listener.as_ref().err());
        me.audit("listen", &uris.join(" "), None, started, outcome);
        listener?.run(subscription).await;
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), ErrorData> {
        super::resources::unsubscribe(self, request, context).await
    }

    async fn list_prompts(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        super::prompts::list(request, context).await
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        super::prompts::get(request, context).await.map(Into::into)
    }
}

/// How a resource read, subscription or listen ended, for the audit: refused when the caller may
/// not read the table of one of the resources at `uris`.
fn resource_outcome(
    me: &Millstream,
    uris: &[impl AsRef<str>],
    error: Option<&ErrorData>,
) -> Result<(), (&'static str, String)> {
    let Some(e) = error else { return Ok(()) };
    let refused = super::resources::FEEDS
        .iter()
        .any(|f| uris.iter().any(|u| u.as_ref() == f.uri) && !me.access.may_read(f.table));
    Err((
        if refused { "refused" } else { "error" },
        e.message.to_string(),
    ))
}
