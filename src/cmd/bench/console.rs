//! `bench console`: browsers' worth of console traffic against the live stack. Each client signs
//! in as a supply-chain manager or a sales rep (alternately), keeps its main page's live stream
//! open as a browser does, and loads its persona's pages (and, for sales reps, their customers'
//! 360s) at Poisson arrivals. Reported: page time on the server (`Server-Timing`) and at the
//! client, the live update latency from a table's commit to the panel arriving over the stream,
//! and the server's memory: with every page open, and per open page (measured once the writers
//! have stopped and the RSS is steady, as its growth when each client opens its page once
//! more).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;

use super::stack::{Finished, LiveStack};
use super::{pause, percentiles, rss_mb};
use crate::config::Config;
use crate::web::pages::{NAV, Page};

/// A persona the bench signs in as: its principal and the pages it may see.
struct Persona {
    principal: String,
    pages: Vec<Page>,
}

/// One principal per console persona, restricted to a tenant where the policies have one:
/// the first (by name) that sees the Stock page, and the first that sees the Sales page.
fn personas(config: &Config) -> anyhow::Result<Vec<Persona>> {
    let policies = crate::auth::Policies::load(&config.serve.policies)?;
    let mut names: Vec<&str> = policies.principals().collect();
    names.sort_unstable();
    let mut out = Vec::new();
    for home in [Page::Stock, Page::Sales] {
        let pick = names
            .iter()
            .filter_map(|n| Some((*n, policies.access(n).ok()?)))
            .filter(|(_, a)| home.allowed(a))
            .min_by_key(|(_, a)| a.reads_everything());
        if let Some((name, access)) = pick {
            out.push(Persona {
                principal: name.to_string(),
                pages: NAV
                    .into_iter()
                    .filter(|p| *p != Page::Ops && p.allowed(&access))
                    .collect(),
            });
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no principal of the policies may see a console page"
    );
    Ok(out)
}

/// What one client measured.
#[derive(Default)]
struct Measured {
    /// Per page: (server ms from `Server-Timing`, client ms).
    pages: Vec<(&'static str, f64, f64)>,
    errors: usize,
}

/// The `as_of` commit time of a live panel (`<time datetime=…>` in its freshness line).
fn committed_at(partial: &str) -> Option<DateTime<Utc>> {
    let from = partial.find("class=\"asof\"")?;
    let rest = &partial[from..];
    let at = rest.find("datetime=\"")? + "datetime=\"".len();
    let end = rest[at..].find('"')?;
    DateTime::parse_from_rfc3339(&rest[at..at + end])
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The process's RSS once it is steady: medians of 5 samples a second apart (robust to the
/// transient buffers that swing it now and then), until two in a row differ by at most 2 MiB,
/// for at most 120 s; `None` if it never steadied.
async fn steady_rss() -> Option<f64> {
    let started = Instant::now();
    let mut previous: Option<f64> = None;
    while started.elapsed() < Duration::from_secs(120) {
        let mut samples = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            samples.push(rss_mb());
        }
        samples.sort_by(f64::total_cmp);
        let median = samples[2];
        if previous.is_some_and(|p| (p - median).abs() <= 2.0) {
            return Some(median);
        }
        previous = Some(median);
    }
    None
}

/// `/console/{path}` as the session `cookie`: its body, or why it was refused.
async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
) -> anyhow::Result<String> {
    let resp = http
        .get(format!("{base}/console/{path}"))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "/console/{path}: {}",
        resp.status()
    );
    Ok(resp.text().await?)
}

fn server_ms(resp: &reqwest::Response) -> Option<f64> {
    let v = resp.headers().get("server-timing")?.to_str().ok()?;
    v.split(';')
        .find_map(|p| p.trim().strip_prefix("dur="))
        .and_then(|d| d.parse().ok())
}

/// Signs in as `principal` (the console runs with `auth.mode = "none"` here); the session
/// cookie.
async fn sign_in(http: &reqwest::Client, base: &str, principal: &str) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/console/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("principal", principal)
                .finish(),
        )
        .send()
        .await?;
    let cookie = resp
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    cookie
        .ok_or_else(|| anyhow::anyhow!("sign-in as {principal}: {} and no session", resp.status()))
}

/// Follows `page`'s live stream until `stop`, recording for each panel that arrives how long
/// after its commit it came (panels committed before the stream opened are the initial
/// drawing, not updates, and are left out).
async fn follow(
    http: reqwest::Client,
    url: String,
    cookie: String,
    latencies: Arc<Mutex<Vec<f64>>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let opened = Utc::now();
    let resp = http
        .get(url)
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await?
        .error_for_status()?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = stop.cancelled() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            anyhow::bail!("the live stream ended");
        };
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let arrived = Utc::now();
            if let Some(c) = committed_at(&event).filter(|c| *c > opened) {
                let ms = (arrived - c).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                latencies.lock().expect("poisoned").push(ms);
            }
        }
    }
}

pub async fn run(
    mut config: Config,
    clients: usize,
    seconds: u64,
    rate: f64,
) -> anyhow::Result<()> {
    // Sign-in by choosing a principal: the bench holds no one's token.
    config.auth.mode = "none".into();
    config.console.enabled = true;
    let personas = Arc::new(personas(&config)?);
    let stack = LiveStack::start(&config, "console").await?;
    let base = format!("http://{}", stack.addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(clients.max(1))
        .build()?;

    // Every client signs in and draws its main page, as a browser would. A sales rep's
    // customer 360s: the customers its own Customers page lists (one listing per persona).
    let mut listed: Vec<Option<Arc<[String]>>> = vec![None; personas.len()];
    let mut sessions = Vec::new();
    for c in 0..clients {
        let persona = &personas[c % personas.len()];
        let cookie = sign_in(&http, &base, &persona.principal).await?;
        get(&http, &base, persona.pages[0].name(), &cookie)
            .await
            .with_context(|| format!("as {}", persona.principal))?;
        let customers = match &listed[c % personas.len()] {
            Some(ids) => ids.clone(),
            None => {
                let ids: Arc<[String]> = if persona.pages.contains(&Page::Customers) {
                    get(&http, &base, "customers", &cookie)
                        .await?
                        .split("href=\"/console/customers/")
                        .skip(1)
                        .filter_map(|s| s.split('"').next())
                        .filter(|id| !id.contains('/'))
                        .take(50)
                        .map(str::to_string)
                        .collect()
                } else {
                    Arc::from([])
                };
                listed[c % personas.len()] = Some(ids.clone());
                ids
            }
        };
        sessions.push((c, cookie, customers));
    }
    let rss_signed_in = rss_mb();
    let stop = tokio_util::sync::CancellationToken::new();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let open = |latencies: &Arc<Mutex<Vec<f64>>>| -> Vec<_> {
        sessions
            .iter()
            .map(|(c, cookie, _)| {
                let home = personas[c % personas.len()].pages[0].name();
                tokio::spawn(follow(
                    http.clone(),
                    format!("{base}/console/live/{home}"),
                    cookie.clone(),
                    latencies.clone(),
                    stop.clone(),
                ))
            })
            .collect()
    };
    let mut streams = open(&latencies);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_open = rss_mb();
    eprintln!(
        "bench console: {clients} clients signed in as {} with a live page each; {seconds} s at {rate} page loads/s per client against {base}/console",
        personas
            .iter()
            .map(|p| p.principal.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );

    latencies.lock().expect("poisoned").clear();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (c, cookie, customers) in sessions.iter().cloned() {
        let (http, base, personas) = (http.clone(), base.clone(), personas.clone());
        tasks.push(tokio::spawn(async move {
            let persona = &personas[c % personas.len()];
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(c as u64);
            let mut out = Measured::default();
            let mut i = c;
            while pause(&mut rng, rate, deadline).await {
                // The persona's pages in turn, a customer 360 in place of every other
                // Customers visit.
                let page = persona.pages[i % persona.pages.len()];
                let (label, path) = match page {
                    Page::Customers
                        if !customers.is_empty() && (i / persona.pages.len()) % 2 == 1 =>
                    {
                        (
                            "customer_360",
                            format!("customers/{}", customers[i % customers.len()]),
                        )
                    }
                    p => (p.name(), p.name().to_string()),
                };
                i += 1;
                let t0 = Instant::now();
                let resp = http
                    .get(format!("{base}/console/{path}"))
                    .header(reqwest::header::COOKIE, &cookie)
                    .send()
                    .await;
                let ok = match resp {
                    Ok(r) if r.status().is_success() => {
                        let server = server_ms(&r);
                        let body = r.bytes().await;
                        let client = t0.elapsed().as_secs_f64() * 1000.0;
                        match (server, body) {
                            (Some(s), Ok(_)) => {
                                out.pages.push((label, s, client));
                                true
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                out.errors += (!ok) as usize;
            }
            out
        }));
    }
    let (mut server, mut client, mut errors) = (Vec::new(), Vec::new(), 0);
    let mut per_page: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for t in tasks {
        let m = t.await?;
        errors += m.errors;
        for (label, s, c) in m.pages {
            server.push(s);
            client.push(c);
            per_page.entry(label).or_default().push(s);
        }
    }
    let live = std::mem::take(&mut *latencies.lock().expect("poisoned"));
    // Memory per open page: with the writers stopped (their transient buffers swing the RSS by
    // hundreds of MiB), the growth when every client opens its page a second time, as a second
    // tab.
    stack.stop_writers();
    let rss_idle = steady_rss().await;
    streams.extend(open(&Arc::new(Mutex::new(Vec::new()))));
    let rss_more = steady_rss().await;
    let rss_per_page = rss_idle
        .zip(rss_more)
        .map(|(idle, more)| ((more - idle) / clients as f64 * 100.0).round() / 100.0);
    stop.cancel();
    let mut broken_streams = 0;
    for s in streams {
        if !matches!(s.await, Ok(Ok(()))) {
            broken_streams += 1;
        }
    }
    let (peak, peak_rss_scope) = (super::peak_rss_mb(), stack.peak_rss_scope);
    let Finished { pipeline, produced } = stack.finish().await?;
    let loads = server.len();
    println!(
        "{}",
        json!({
            "bench": "console",
            "clients": clients,
            "principals": personas.iter().map(|p| p.principal.clone()).collect::<Vec<_>>(),
            "seconds": seconds,
            "rate_per_client": rate,
            "page_loads": loads,
            "errors": errors,
            "broken_streams": broken_streams,
            "pages_per_s": (loads as f64 / seconds as f64).round(),
            "page_server": percentiles(server),
            "page_client": percentiles(client),
            "page_server_by_page": per_page
                .into_iter()
                .map(|(k, v)| (k.to_string(), percentiles(v)))
                .collect::<serde_json::Map<_, _>>(),
            "live_update_after_commit": percentiles(live),
            "live_interval_ms": config.console.live_interval_ms,
            "rss_mb_signed_in": rss_signed_in.round(),
            "rss_mb_live_pages_open": rss_open.round(),
            // null: the RSS did not steady with the writers stopped.
            "rss_mb_per_open_page": rss_per_page,
            "peak_rss_mb": peak.round(),
            "peak_rss_scope": peak_rss_scope,
            "live_events": produced.events,
            "pipeline_records": pipeline.records,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_time_of_a_live_panel_is_read_from_its_freshness_line() {
        let partial = "data: <hx-partial hx-target=\"#alerts\"><section><time datetime=\"2020-01-01T00:00:00Z\">x</time>\n\
             data: <p class=\"asof\">Data as of <time datetime=\"2026-12-03T14:00:01.250+00:00\" data-age>…</time></p></section></hx-partial>\n\n";
        assert_eq!(
            committed_at(partial).unwrap().to_rfc3339(),
            "2026-12-03T14:00:01.250+00:00"
        );
        assert_eq!(committed_at("data: <p>No data yet.</p>"), None);
    }
}
