"""Drives the millstream console in a real browser (Debian's Chromium, headless, through
Playwright) for tests/it/console.rs, and prints what it saw as JSON lines on stdout.

Usage: console_browser.py BASE_URL TOKENS_JSON ARTIFACTS_DIR

TOKENS_JSON maps principals to their dev tokens. The test talks back on stdin: after printing
{"ready": "alert"} the script waits for a line {"alert_id": ...} (written once the pipeline has
committed that alert) and reports how long the open page took to show it.

Every page is visited by every principal allowed to see it, at 1280x800 and at phone width
(390x844), with a screenshot of each in ARTIFACTS_DIR. A JavaScript error or a failed request on
any page fails the run (the last line then carries "errors").
"""

import json
import shutil
import sys
import time

from playwright.sync_api import sync_playwright

BASE, TOKENS, ARTIFACTS = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
ALL_PAGES = ["stock", "shipments", "machines", "sales", "customers", "ops"]

errors = []


def emit(obj):
    print(json.dumps(obj), flush=True)


def watch(page, where):
    page.on("console", lambda m: errors.append(f"{where()}: console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{where()}: page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"{where()}: request failed: {r.url} {r.failure}")
            if not aborted_at_eof(r) else None)


def aborted_at_eof(r):
    """A streamed console response that Chromium reports as aborted although it reached its
    end: live streams (closed by the page on leaving), and chat turns, which Chromium reports as
    ERR_ABORTED at EOF now and then because they are `Cache-Control: no-store`
    (microsoft/playwright#42742, open). The chat step checks separately that every turn got its
    `done` event."""
    if "/console/live/" in r.url:
        return True
    return r.url.endswith("/console/chat") and r.failure == "net::ERR_ABORTED"


def sign_in(browser, principal, size="desktop", watched=True):
    ctx = browser.new_context(viewport=SIZES[size])
    page = ctx.new_page()
    current = {"url": ""}
    if watched:
        watch(page, lambda: f"{principal} {current['url']}")
    page.goto(f"{BASE}/console/login")
    page.fill("#token", TOKENS[principal])
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/console/" in u and "/login" not in u, timeout=10_000)
    return ctx, page, current


def texts(page, selector):
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def attrs(page, selector, name):
    return [e.get_attribute(name) for e in page.locator(selector).element_handles()]


def visit(page, current, path):
    current["url"] = path
    resp = page.goto(f"{BASE}{path}")
    # Let the live stream connect and the charts draw.
    page.wait_for_timeout(700)
    return resp.status


def collect(page, name):
    """What a page shows that the test compares with the tables."""
    seen = {"alerts": attrs(page, "#alerts [data-alert-id]", "data-alert-id")}
    if name == "stock":
        seen["warehouses"] = texts(page, "#warehouses tbody th[scope=row]")
        seen["shortage_warehouses"] = attrs(page, "#shortages tr[data-warehouse]", "data-warehouse")
    elif name == "shipments":
        seen["lane_warehouses"] = texts(page, "#lanes .lane .to")
    elif name == "machines":
        seen["maintenance_plants"] = texts(page, "#maintenance tbody td:nth-child(2)")
        seen["charts"] = page.locator("#sensors figure.chart canvas").count()
    elif name == "sales":
        seen["heatmap_regions"] = texts(page, "#heatmap thead th[scope=col]")[1:]
        seen["churn_regions"] = texts(page, "#churn tbody td:nth-child(3)")
        seen["leads_panel"] = page.locator("#leads h2").count()
        seen["leads"] = [h.split("/")[-1] for h in attrs(page, "#leads tbody th a", "href")]
    elif name == "customers":
        seen["customers"] = [h.split("/")[-1] for h in attrs(page, "#customer_list tbody th a", "href")]
    return seen


def refused(browser, principal, nav):
    """The status of every page not in `nav`, fetched by the signed-in browser (a page whose
    refusal the browser logs, so not watched for errors)."""
    ctx, page, _ = sign_in(browser, principal, watched=False)
    out = {}
    for name in ALL_PAGES:
        if name not in nav:
            out[name] = page.evaluate(
                "(u) => fetch(u, {redirect: 'manual'}).then(r => r.status)", f"/console/{name}")
    ctx.close()
    return out


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        # 1. Each principal: its navigation, every page it may see (at both sizes), and a
        #    refusal for every page it may not.
        for principal in TOKENS:
            for size in SIZES:
                ctx, page, current = sign_in(browser, principal, size)
                nav = [h.split("/")[-1] for h in attrs(page, "header nav a", "href")]
                report = {"principal": principal, "size": size, "nav": nav, "pages": {}, "refused": {}}
                for name in nav:
                    status = visit(page, current, f"/console/{name}")
                    page.screenshot(path=f"{ARTIFACTS}/{principal}-{name}-{size}.png", full_page=True)
                    report["pages"][name] = {"status": status, **collect(page, name)}
                emit(report | {"refused": refused(browser, principal, nav) if size == "desktop" else {}})
                ctx.close()

        # 2. An order from a shortage row, double-clicked: one order, its status live.
        ctx, page, current = sign_in(browser, "maria@emea")
        visit(page, current, "/console/stock")
        row = page.locator("#shortages tr[data-part]").first
        part, warehouse = row.get_attribute("data-part"), row.get_attribute("data-warehouse")
        row.locator("button[type=submit]").dblclick()
        po = row.locator(".receipt .po")
        po.wait_for(timeout=10_000)
        po_id = po.inner_text().strip()
        order_row = page.locator(f'#orders tr[data-po="{po_id}"]')
        started = time.monotonic()
        order_row.wait_for(timeout=20_000)
        shown_after = time.monotonic() - started
        page.screenshot(path=f"{ARTIFACTS}/maria@emea-order.png", full_page=True)
        emit({"order": {"part_id": part, "warehouse_id": warehouse, "po_id": po_id,
                        "receipt": row.locator(".receipt").inner_text(),
                        "rows_with_po": page.locator(f'#orders tr[data-po="{po_id}"]').count(),
                        "status": order_row.locator(".status").inner_text().strip(),
                        "seconds_to_listed": round(shown_after, 3)}})
        ctx.close()

        # 3. A sales rep's customer 360.
        ctx, page, current = sign_in(browser, "alice@emea")
        visit(page, current, "/console/customers")
        first = attrs(page, "#customer_list tbody th a", "href")[0].split("/")[-1]
        visit(page, current, f"/console/customers/{first}")
        page.click("#proposals button")
        page.locator("#proposals .draft, #proposals .notice").first.wait_for(timeout=10_000)
        page.screenshot(path=f"{ARTIFACTS}/alice@emea-customer-360.png", full_page=True)
        facts = {dt.strip(): dd.strip() for dt, dd in zip(texts(page, "#profile .facts dt"), texts(page, "#profile .facts dd"))}
        emit({"customer": {"customer_id": first,
                           "heading": page.locator("#profile h2").inner_text(),
                           "facts": facts,
                           "transactions": attrs(page, "#profile tr[data-transaction]", "data-transaction"),
                           "tickets": attrs(page, "#tickets li[data-ticket]", "data-ticket"),
                           "draft": page.locator("#proposals .draft").count()}})
        ctx.close()

        # 4. A new alert, committed by the pipeline while the page is open.
        ctx, page, current = sign_in(browser, "maria@emea")
        visit(page, current, "/console/machines")
        page.wait_for_timeout(1000)
        page.evaluate("window.__notReloaded = true")
        emit({"ready": "alert"})
        line = json.loads(sys.stdin.readline())
        started = time.monotonic()
        found = True
        try:
            page.locator(f'#alerts [data-alert-id="{line["alert_id"]}"]').wait_for(timeout=2_000)
        except Exception:
            found = False
        emit({"alert": {"alert_id": line["alert_id"], "shown": found,
                        "seconds": round(time.monotonic() - started, 3),
                        "reloaded": page.evaluate("window.__notReloaded !== true")}})
        page.screenshot(path=f"{ARTIFACTS}/maria@emea-live-alert.png", full_page=True)
        ctx.close()

        # 5. Chat: a question answered from a governed query, its tool call shown; an action
        #    that runs only once approved in the page.
        ctx, page, current = sign_in(browser, "alice@emea")
        visit(page, current, "/console/sales")
        page.fill("#chat-input", "How many customers do I have?")
        page.click("#chat-form button[type=submit]")
        page.locator("#chat-log p.agent", has_text="You can see").wait_for(timeout=20_000)
        page.locator('#chat-log[aria-busy="false"]').wait_for(timeout=20_000)
        page.fill("#chat-input", "Please open a ticket for the late delivery")
        page.click("#chat-form button[type=submit]")
        approve = page.locator("#chat-log .confirm button", has_text="Approve")
        approve.wait_for(timeout=20_000)
        page.locator('#chat-log[aria-busy="false"]').wait_for(timeout=20_000)
        asked = page.locator("#chat-log .confirm p").inner_text()
        approve.click()
        # The answer with the ticket's id. The turn that asked for approval already answered
        # without one ("Ticket ? is open."), so a bare "Ticket" matches two lines once both
        # are shown.
        page.locator("#chat-log p.agent", has_text="Ticket TKT-").wait_for(timeout=20_000)
        page.locator('#chat-log[aria-busy="false"]').wait_for(timeout=20_000)
        page.screenshot(path=f"{ARTIFACTS}/alice@emea-chat.png", full_page=True)
        emit({"chat": {"lines": [[p.get_attribute("class"), p.inner_text()]
                                 for p in page.locator("#chat-log > p").all()],
                       "asked": asked,
                       "turns_done": page.locator("#chat-log").get_attribute("data-turns")}})
        ctx.close()
        browser.close()
    emit({"done": True, "errors": errors})


if __name__ == "__main__":
    main()
