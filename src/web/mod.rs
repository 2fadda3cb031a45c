//! The web console at `/console`: the supply-chain manager's and the sales rep's pages, an
//! operations page, live updates and the agent chat, served by the same axum app as `/mcp`.
//!
//! - Identity: the same as `/mcp`. Signing in presents a bearer token (a dev token or a JWT,
//!   checked by the same [`crate::auth::Authenticator`]); with `auth.mode = "none"` (local use,
//!   where every `/mcp` caller is already the server's principal) one picks a principal of the
//!   policies. The session is a signed cookie with CSRF protection ([`session`]).
//! - Data: every panel reads through an in-process MCP client as the signed-in principal
//!   ([`data`]), so the console sees exactly what that principal's agent would, under the same
//!   grants, row filters, masks and audit; a page a persona's tools cannot serve is not shown.
//! - Pages are server-rendered (minijinja, templates under `web/templates`, embedded); htmx 4 and
//!   uPlot are vendored under `web/assets` and embedded too: nothing is fetched or built at run
//!   time.
//! - Live: each page holds one server-sent-event stream (`/console/live/{page}`). When the
//!   catalog serves new table versions (woken by the commit, not by polling in `up`), the panels
//!   reading those tables are re-rendered and sent, at most every `console.live_interval_ms`.
//!   Charts keep a fixed window of server-side buckets, so a page left open stays small.
//! - Chat: `/console/chat` is the agent endpoint (`/agent/turn`, given by the HTTP server) for
//!   the session's principal, which the session check hands on as [`crate::auth::Caller`].

mod cache;
mod data;
mod ops;
pub mod pages;
pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Authenticator, Policies};
use crate::mcp::Millstream;
use data::{CallError, Clients};
use pages::{Fragment, Page, View};
use session::{Session, Sessions};

/// What the console needs: the MCP server it reads through, how callers sign in, its sessions.
#[derive(Clone)]
pub struct Console {
    clients: Clients,
    policies: Arc<Policies>,
    /// `None`: `auth.mode = "none"` (sign in by choosing a principal).
    auth: Option<Authenticator>,
    sessions: Sessions,
    live_interval: Duration,
    allowed_origins: Arc<Vec<String>>,
    renders: cache::Renders,
}

/// Rendered panels kept (principal × view × panel; one version each). A panel is tens of KiB at
/// most, so this bounds the cache to tens of MiB whatever views callers ask for.
const RENDERS_KEPT: usize = 1024;

impl Console {
    pub fn new(
        server: Millstream,
        auth: Option<Authenticator>,
        config: &crate::config::Config,
    ) -> Console {
        let c = &config.console;
        if c.session_key.expose().is_empty() {
            tracing::info!(
                "console.session_key is not set: console sessions are signed with a random key \
                 (they end on restart, and replicas behind one address need a shared key)"
            );
        }
        Console {
            policies: server.policies(),
            clients: Clients::new(server),
            auth,
            sessions: Sessions::new(
                c.session_key.expose(),
                Duration::from_secs(c.session_hours * 3600),
                c.secure_cookie,
            ),
            live_interval: Duration::from_millis(c.live_interval_ms),
            allowed_origins: Arc::new(config.serve.allowed_origins.clone()),
            renders: cache::Renders::new(RENDERS_KEPT),
        }
    }

    /// The versions of `tables` the catalog serves now.
    fn versions(&self, tables: &[&str]) -> cache::Versions {
        let catalog = &self.clients.server().catalog;
        tables.iter().map(|t| catalog.version(t)).collect()
    }
}

/// The signed-in caller of a console request, and the CSRF token its pages carry.
#[derive(Clone)]
struct Signed {
    session: Session,
    access: Arc<crate::auth::Access>,
    csrf: String,
}

/// `/console` and everything under it; `chat` answers `POST /console/chat` for the signed-in
/// caller (the request carries its [`crate::auth::Caller`]).
pub fn router(console: Console, chat: axum::routing::MethodRouter<Console>) -> Router {
    let signed_in = Router::new()
        .route("/console", get(home))
        .route("/console/{page}", get(page))
        .route("/console/customers/{id}", get(customer))
        .route("/console/customers/{id}/draft", get(draft))
        .route("/console/fragment/{page}/{fragment}", get(fragment))
        .route("/console/live/{page}", get(live))
        .route("/console/orders", post(order))
        .route("/console/chat", chat)
        .route("/console/logout", post(logout))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/assets/{file}", get(asset))
        .merge(signed_in)
        .layer(middleware::from_fn(console_headers))
        .with_state(console)
}

/// Headers every console response carries: scripts and styles from this origin only (the
/// vendored files; no inline script), no framing, no sniffing, pages not cached; and the time
/// the server took to produce it (`Server-Timing`, shown by browsers' developer tools and read
/// by `bench console`).
async fn console_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/console/assets/");
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "app;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        h.insert("server-timing", v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
             form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Whether a browser request comes from this console's own origin: its `Origin` (or, without
/// one, its `Referer`) names the `Host` it was sent to, or matches one of
/// `serve.allowed_origins` (as `/mcp` matches them, `:*` for any port).
/// A request with neither header (not a browser's form or fetch) passes; CSRF tokens guard those.
fn same_origin(headers: &HeaderMap, allowed: &[String]) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            let referer = headers.get(header::REFERER)?.to_str().ok()?;
            let u = url::Url::parse(referer).ok()?;
            Some(u.origin().ascii_serialization())
        });
    match origin {
        None => true,
        Some(o) => {
            o == format!("http://{host}")
                || o == format!("https://{host}")
                || allowed.iter().any(|a| crate::mcp::origin_matches(&o, a))
        }
    }
}

/// Finds the session of a request, or sends the browser to sign in (pages) or refuses (401,
/// everything else). Requests that change something must carry the session's CSRF token and
/// come from this origin.
async fn require_session(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    let session = c.sessions.check(cookie);
    let access = session
        .as_ref()
        .and_then(|s| c.policies.access(&s.principal).ok());
    let (Some(session), Some(access)) = (session, access) else {
        return if req.method() == Method::GET && !req.uri().path().starts_with("/console/live") {
            Redirect::to("/console/login").into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                "Unauthorized: sign in at /console/login",
            )
                .into_response()
        };
    };
    if req.method() != Method::GET {
        let token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if !c.sessions.csrf_ok(&session, token) || !same_origin(req.headers(), &c.allowed_origins) {
            return (
                StatusCode::FORBIDDEN,
                "Forbidden: missing or wrong CSRF token, or a foreign origin",
            )
                .into_response();
        }
    }
    req.extensions_mut().insert(crate::auth::Caller {
        principal: session.principal.clone(),
        expires_at: Some(session.expires),
    });
    req.extensions_mut().insert(Signed {
        csrf: c.sessions.csrf(&session),
        session,
        access: Arc::new(access),
    });
    next.run(req).await
}

/// The templates, parsed once.
fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name}: {e}"));
        }
        env
    })
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../web/templates/", $name)))),*]
    };
}

const TEMPLATES: &[(&str, &str)] = &templates![
    "doc.html",
    "base.html",
    "macros.html",
    "login.html",
    "page.html",
    "denied.html",
    "frag_alerts.html",
    "frag_warehouses.html",
    "frag_shortages.html",
    "frag_orders.html",
    "frag_lanes.html",
    "frag_maintenance.html",
    "frag_anomalies.html",
    "frag_sensors.html",
    "frag_kpis.html",
    "frag_heatmap.html",
    "frag_churn.html",
    "frag_leads.html",
    "frag_customer_list.html",
    "frag_profile.html",
    "frag_tickets.html",
    "frag_proposals.html",
    "frag_pipeline.html",
    "frag_table_versions.html",
    "frag_dead_letters.html",
    "frag_error.html",
    "receipt.html",
];

fn render(name: &str, ctx: minijinja::Value) -> String {
    templates()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            tracing::error!(template = name, error = %e, "rendering a console template");
            format!("<p class=\"error\">This panel could not be drawn ({name}).</p>")
        })
}

/// A template value of anything serializable.
fn v<T: serde::Serialize + ?Sized>(x: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(x))
}

fn html(status: StatusCode, body: String) -> Response {
    (status, Html(body)).into_response()
}

/// A console request's parameters: its query string (a 360's customer comes from its path).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The catalog's publication count when the page was drawn ([`live`]).
    since: Option<u64>,
    machine: Option<String>,
    q: Option<String>,
    customer: Option<String>,
}

type Refusal = (StatusCode, &'static str);

impl Params {
    /// The view of `page` these parameters ask for, or why they are malformed.
    fn view(self, page: Page) -> Result<View, Refusal> {
        let bad = |why| Err((StatusCode::BAD_REQUEST, why));
        if self.machine.as_deref().is_some_and(|m| !pages::valid_id(m)) {
            return bad("Bad request: machine must be an id");
        }
        if self
            .customer
            .as_deref()
            .is_some_and(|c| !pages::valid_id(c))
        {
            return bad("Bad request: customer must be an id");
        }
        if self.q.as_deref().is_some_and(|q| q.chars().count() > 64) {
            return bad("Bad request: q is at most 64 characters");
        }
        Ok(View {
            page,
            machine: self.machine,
            customer: self.customer,
            q: self.q.filter(|q| !q.trim().is_empty()),
        })
    }
}

type QueryParams = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

/// The page `name` with the request's parameters, checked.
fn requested(name: &str, params: QueryParams) -> Result<(View, Option<u64>), Refusal> {
    let page = Page::from_name(name).ok_or((StatusCode::NOT_FOUND, "Not found"))?;
    let Ok(Query(params)) = params else {
        return Err((
            StatusCode::BAD_REQUEST,
            "Bad request: unknown or malformed parameters",
        ));
    };
    let since = params.since;
    Ok((params.view(page)?, since))
}

/// A view the caller's persona has, for the requests a page makes (panels, its live stream,
/// drafts); a page itself answers with the "not your persona" page instead ([`show`]).
fn permitted(signed: &Signed, view: (View, Option<u64>)) -> Result<(View, Option<u64>), Refusal> {
    if view.0.page.allowed(&signed.access) {
        Ok(view)
    } else {
        Err((
            StatusCode::FORBIDDEN,
            "Forbidden: not a page of your persona",
        ))
    }
}

/// Panel `f` of `view` as the caller sees it (or the reason it cannot be), its tables at
/// `versions`. A panel that reads tables is rendered once per principal, view and versions of
/// those tables, and shared ([`cache`]).
async fn render_fragment(
    c: &Console,
    signed: &Signed,
    view: &View,
    f: &Fragment,
    versions: cache::Versions,
) -> String {
    let principal = &signed.access.principal;
    let render = || async {
        match pages::load(&c.clients, principal, view, f.id).await {
            Ok(d) => cache::Rendered {
                body: render(
                    &format!("frag_{}.html", f.id),
                    minijinja::context! { d => v(&d), view => v(view) },
                )
                .into(),
                keep: true,
            },
            Err(e) => {
                if matches!(e, CallError::Unreachable(_)) {
                    tracing::warn!(panel = f.id, error = %e, "console panel");
                }
                cache::Rendered {
                    body: render(
                        "frag_error.html",
                        minijinja::context! { id => f.id, error => e.to_string() },
                    )
                    .into(),
                    keep: false,
                }
            }
        }
    };
    if f.tables.is_empty() || view.q.is_some() {
        // The operations figures follow the process, not a table version; a search is the
        // caller's own (and its text is free, so keeping it would let callers fill the cache).
        return render().await.body.to_string();
    }
    let key = serde_json::to_string(&(principal, view, f.id)).unwrap_or_default();
    c.renders.get(key, versions, render).await.to_string()
}

/// The machine the Machines page charts when none is asked for ([`pages::default_machine`]),
/// found once per principal and versions of the tables it comes from, like a panel.
async fn default_machine(c: &Console, principal: &str) -> Option<String> {
    let key = serde_json::to_string(&(principal, "default_machine")).unwrap_or_default();
    let machine = c
        .renders
        .get(key, c.versions(pages::DEFAULT_MACHINE_FROM), || async {
            let found = pages::default_machine(&c.clients, principal).await;
            cache::Rendered {
                keep: found.is_some(),
                body: found.unwrap_or_default().into(),
            }
        })
        .await;
    (!machine.is_empty()).then(|| machine.to_string())
}

/// The navigation the caller may use.
fn nav(access: &crate::auth::Access) -> Vec<Value> {
    pages::NAV
        .iter()
        .filter(|p| p.allowed(access))
        .map(|p| json!({"name": p.name(), "title": p.title(), "href": format!("/console/{}", p.name())}))
        .collect()
}

fn chrome(signed: &Signed) -> minijinja::Value {
    minijinja::context! {
        principal => signed.access.principal.clone(),
        persona => signed.access.persona.clone(),
        nav => v(&nav(&signed.access)),
        csrf => &signed.csrf,
    }
}

/// Where `view`'s live stream is, for a page drawn at publication `since`.
fn live_url(view: &View, since: u64) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("since", &since.to_string());
    for (key, value) in [
        ("machine", &view.machine),
        ("q", &view.q),
        ("customer", &view.customer),
    ] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    format!("/console/live/{}?{}", view.page.name(), query.finish())
}

/// A whole page: every panel rendered at once, and the live stream that keeps them current.
async fn show(c: &Console, signed: &Signed, mut view: View) -> Response {
    if !view.page.allowed(&signed.access) {
        return html(
            StatusCode::FORBIDDEN,
            render(
                "denied.html",
                minijinja::context! { title => view.page.title(), ..chrome(signed) },
            ),
        );
    }
    if view.page == Page::Machines && view.machine.is_none() {
        view.machine = default_machine(c, &signed.access.principal).await;
    }
    let since = *c.clients.server().catalog.published().borrow();
    let drawn = &view;
    let rendered = futures::future::join_all(view.page.fragments().iter().map(|f| async move {
        let body = render_fragment(c, signed, drawn, f, c.versions(f.tables)).await;
        (f, body)
    }))
    .await;
    // The page's own panels in rows: a full panel alone, two half panels side by side.
    let mut alerts = String::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut pairing = false;
    for (f, body) in rendered {
        if f.id == pages::ALERTS.id {
            alerts = body;
            continue;
        }
        match rows.last_mut() {
            Some(row) if f.half && pairing => {
                row.push(body);
                pairing = false;
            }
            _ => {
                pairing = f.half;
                rows.push(vec![body]);
            }
        }
    }
    html(
        StatusCode::OK,
        render(
            "page.html",
            minijinja::context! {
                title => view.page.title(),
                page => view.page.name(),
                view => v(&view),
                alerts => alerts,
                rows => rows,
                live => live_url(&view, since),
                ..chrome(signed)
            },
        ),
    )
}

async fn home(Extension(signed): Extension<Signed>) -> Response {
    match pages::NAV.iter().find(|p| p.allowed(&signed.access)) {
        Some(p) => Redirect::to(&format!("/console/{}", p.name())).into_response(),
        None => (
            StatusCode::FORBIDDEN,
            "Forbidden: your persona has no console pages",
        )
            .into_response(),
    }
}

async fn page(
    State(c): State<Console>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
    params: QueryParams,
) -> Response {
    match requested(&name, params) {
        // A customer's 360 is at /console/customers/{id}.
        Ok((view, _)) if view.page != Page::Customer => show(&c, &signed, view).await,
        Ok(_) => (StatusCode::NOT_FOUND, "Not found").into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn customer_view(id: String) -> Result<(View, Option<u64>), Refusal> {
    requested(
        Page::Customer.name(),
        Ok(Query(Params {
            customer: Some(id),
            ..Params::default()
        })),
    )
}

async fn customer(
    State(c): State<Console>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Response {
    match customer_view(id) {
        Ok((view, _)) => show(&c, &signed, view).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// One panel (for the page's own controls: a machine picked, a name searched).
async fn fragment(
    State(c): State<Console>,
    Extension(signed): Extension<Signed>,
    Path((name, fragment)): Path<(String, String)>,
    params: QueryParams,
) -> Response {
    let view = match requested(&name, params).and_then(|v| permitted(&signed, v)) {
        Ok((view, _)) => view,
        Err(refusal) => return refusal.into_response(),
    };
    match view.page.fragments().iter().find(|f| f.id == fragment) {
        Some(f) => html(
            StatusCode::OK,
            render_fragment(&c, &signed, &view, f, c.versions(f.tables)).await,
        ),
        None => (StatusCode::NOT_FOUND, "Not found").into_response(),
    }
}

/// The page's live stream: after each new publication of the catalog, the panels whose tables
/// have new versions are rendered again and sent when they changed, as `<hx-partial>` swaps.
async fn live(
    State(c): State<Console>,
    Extension(signed): Extension<Signed>,
    Path(name): Path<String>,
    params: QueryParams,
) -> Response {
    let (view, since) = match requested(&name, params).and_then(|v| permitted(&signed, v)) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(follow(c, signed, view, since, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Sends `view`'s changed panels to `tx` until the browser goes away or the session expires.
async fn follow(
    c: Console,
    signed: Signed,
    view: View,
    since: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    let mut published = c.clients.server().catalog.published();
    // The versions each panel was drawn from. If the catalog moved on between drawing the page
    // and this stream, nothing is known and every panel is checked at once.
    let drawn_current = since == Some(*published.borrow_and_update());
    let mut seen: HashMap<&str, cache::Versions> = HashMap::new();
    if drawn_current {
        for f in view.page.fragments() {
            seen.insert(f.id, c.versions(f.tables));
        }
    }
    let mut sent: HashMap<&str, u64> = HashMap::new();
    let mut wait = drawn_current;
    loop {
        if wait {
            tokio::select! {
                changed = published.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
        wait = true;
        if signed.session.expired() {
            return;
        }
        for f in view.page.fragments() {
            let now = c.versions(f.tables);
            // A panel of no table (the operations figures) follows every publication.
            if !f.tables.is_empty() && seen.get(f.id) == Some(&now) {
                continue;
            }
            seen.insert(f.id, now.clone());
            let body = render_fragment(&c, &signed, &view, f, now).await;
            let digest = crate::model::stable_hash(&[&body]);
            if sent.insert(f.id, digest) == Some(digest) {
                continue;
            }
            let partial = format!(
                "<hx-partial hx-target=\"#{}\" hx-swap=\"outerHTML\">{body}</hx-partial>",
                f.id
            );
            if tx.send(Event::default().data(partial)).await.is_err() {
                return;
            }
        }
        // At most one round per interval: many commits a second cost one render.
        tokio::select! {
            _ = tokio::time::sleep(c.live_interval) => {}
            _ = tx.closed() => return,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderForm {
    part_id: String,
    warehouse_id: String,
    quantity: String,
    priority: String,
    idempotency_key: String,
}

/// An order from a shortage row, through `create_order` as the caller (its checks, its
/// idempotency: the row's key makes a double click one order).
async fn order(
    State(c): State<Console>,
    Extension(signed): Extension<Signed>,
    form: Result<Form<OrderForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            render(
                "receipt.html",
                minijinja::context! { error => "the order form is incomplete" },
            ),
        );
    };
    let Ok(quantity) = f.quantity.trim().parse::<i64>() else {
        return html(
            StatusCode::OK,
            render(
                "receipt.html",
                minijinja::context! { error => "quantity must be a whole number" },
            ),
        );
    };
    let args = json!({
        "part_id": f.part_id, "warehouse_id": f.warehouse_id, "quantity": quantity,
        "priority": f.priority, "idempotency_key": f.idempotency_key,
    });
    match c
        .clients
        .call(&signed.access.principal, "create_order", args)
        .await
    {
        Ok(receipt) => html(
            StatusCode::OK,
            render("receipt.html", minijinja::context! { r => v(&receipt) }),
        ),
        Err(e) => html(
            StatusCode::OK,
            render(
                "receipt.html",
                minijinja::context! { error => e.to_string() },
            ),
        ),
    }
}

/// A proposal draft for a customer: its profile and purchases, its churn drivers, and the
/// closest past proposals (knowledge search), or why those are not available.
async fn draft(
    State(c): State<Console>,
    Extension(signed): Extension<Signed>,
    Path(id): Path<String>,
) -> Response {
    let view = match customer_view(id).and_then(|v| permitted(&signed, v)) {
        Ok((view, _)) => view,
        Err(refusal) => return refusal.into_response(),
    };
    let p = &signed.access.principal;
    let (profile, proposals) = futures::join!(
        pages::load(&c.clients, p, &view, "profile"),
        pages::load(&c.clients, p, &view, "proposals"),
    );
    let body = match profile {
        Ok(profile) => render(
            "frag_proposals.html",
            minijinja::context! {
                d => v(&proposals.unwrap_or_else(|e| json!({"available": false, "why": e.to_string()}))),
                profile => v(&profile),
                draft => true,
                view => v(&view),
            },
        ),
        Err(e) => render(
            "frag_error.html",
            minijinja::context! { id => "proposals", error => e.to_string() },
        ),
    };
    html(StatusCode::OK, body)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    token: Option<String>,
    principal: Option<String>,
}

fn login_page(c: &Console, status: StatusCode, error: Option<String>) -> Response {
    let principals: Vec<Value> = if c.auth.is_none() {
        c.policies
            .principals()
            .filter_map(|p| {
                let a = c.policies.access(p).ok()?;
                Some(json!({"principal": p, "persona": a.persona}))
            })
            .collect()
    } else {
        Vec::new()
    };
    html(
        status,
        render(
            "login.html",
            minijinja::context! { title => "Sign in", token_mode => c.auth.is_some(), principals => v(&principals), error => error },
        ),
    )
}

async fn login_form(State(c): State<Console>) -> Response {
    login_page(&c, StatusCode::OK, None)
}

/// Signs in: a bearer token (checked as `/mcp` checks it) or, with `auth.mode = "none"`, a
/// principal of the policies. Only from this console's own origin (no login CSRF).
async fn login(
    State(c): State<Console>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers, &c.allowed_origins) {
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: sign in from the console's own page",
        )
            .into_response();
    }
    let Ok(Form(f)) = form else {
        return login_page(
            &c,
            StatusCode::BAD_REQUEST,
            Some("The sign-in form was incomplete.".into()),
        );
    };
    let (principal, not_after) = match (&c.auth, f.token, f.principal) {
        (Some(auth), Some(token), _) if !token.trim().is_empty() => {
            match auth
                .authenticate(Some(&format!("Bearer {}", token.trim())))
                .await
            {
                Ok(caller) => (caller.principal, caller.expires_at),
                Err(_) => {
                    tracing::info!("console sign-in refused: the token was not accepted");
                    return login_page(
                        &c,
                        StatusCode::UNAUTHORIZED,
                        Some("That token was not accepted.".into()),
                    );
                }
            }
        }
        (None, _, Some(p)) if c.policies.knows(&p) => (p, None),
        _ => {
            return login_page(
                &c,
                StatusCode::BAD_REQUEST,
                Some("Give a token (or choose a principal).".into()),
            );
        }
    };
    if c.policies.access(&principal).is_err() {
        return login_page(
            &c,
            StatusCode::FORBIDDEN,
            Some("This principal has no access.".into()),
        );
    }
    let (_, cookie) = c.sessions.start(&principal, not_after);
    tracing::info!(principal = %principal, "console sign-in");
    let mut resp = Redirect::to("/console").into_response();
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(c): State<Console>, Extension(signed): Extension<Signed>) -> Response {
    let cookie = c.sessions.end(&signed.session);
    let mut resp = (
        StatusCode::OK,
        [("hx-redirect", "/console/login")],
        "signed out",
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// The vendored scripts and styles, embedded.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "htmx.min.js",
        "text/javascript",
        include_bytes!("../../web/assets/htmx.min.js"),
    ),
    (
        "hx-sse.min.js",
        "text/javascript",
        include_bytes!("../../web/assets/hx-sse.min.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript",
        include_bytes!("../../web/assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css",
        include_bytes!("../../web/assets/uPlot.min.css"),
    ),
    (
        "console.js",
        "text/javascript",
        include_bytes!("../../web/assets/console.js"),
    ),
    (
        "console.css",
        "text/css",
        include_bytes!("../../web/assets/console.css"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "Not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn actions_come_from_the_consoles_own_origin_or_a_configured_one() {
        let host = (header::HOST, "127.0.0.1:9464");
        let none: Vec<String> = Vec::new();
        let any_port = vec!["https://console.example:*".to_string()];
        assert!(same_origin(
            &headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:9464")]),
            &none
        ));
        assert!(same_origin(
            &headers(&[
                host.clone(),
                (header::REFERER, "http://127.0.0.1:9464/console/stock")
            ]),
            &none
        ));
        assert!(!same_origin(
            &headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:9465")]),
            &none
        ));
        assert!(!same_origin(
            &headers(&[host.clone(), (header::ORIGIN, "https://evil.example")]),
            &none
        ));
        assert!(same_origin(
            &headers(&[
                host.clone(),
                (header::ORIGIN, "https://console.example:8443")
            ]),
            &any_port
        ));
        assert!(!same_origin(
            &headers(&[host, (header::ORIGIN, "https://console.example.evil:8443")]),
            &any_port
        ));
    }
}
