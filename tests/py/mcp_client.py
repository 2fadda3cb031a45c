"""A real MCP client (the official Python SDK, PyPI `mcp`) against a running millstream server.

Usage:
    mcp_client.py http URL      every tool, errors, actions, resources, prompts (full check)
    mcp_client.py stdio CMD...  spawn CMD as a stdio server; tools listed and two tools called
    mcp_client.py bearer URL TOKEN
                                connect with `Authorization: Bearer TOKEN`; report the tools and
                                the warehouses query_sql shows, and that a wrong token is refused
    mcp_client.py stdio-as PRINCIPAL CMD...
                                spawn CMD with MILLSTREAM__SERVE__PRINCIPAL=PRINCIPAL; report
                                its tools and the warehouses query_sql shows it

Prints one JSON report on success; exits 1 with the reason on the first failed check. The SDK
validates every structured result against the tool's output schema (after list_tools).
"""

import asyncio
import json
import os
import sys
import time
import uuid

from mcp import ClientSession
from mcp.shared.exceptions import MCPError

TOOLS = {
    "get_inventory_status", "track_shipments", "predict_shortage", "list_shortage_risks",
    "create_order", "get_order_status",
    "lookup_customer_info", "predict_churn", "list_churn_risks", "sales_kpis",
    "query_sensor_data", "list_anomalies", "maintenance_alerts", "sensor_stats",
    "create_ticket", "get_ticket_status", "update_ticket_resolution", "search_tickets",
    "search_knowledge", "describe_tables", "query_sql",
}
INVALID_PARAMS = -32602
MATERIALIZE_TIMEOUT_S = 90


class CheckFailed(Exception):
    pass


def check(ok, what):
    if not ok:
        raise CheckFailed(what)


class Client:
    def __init__(self, session):
        self.s = session
        self.calls = {}

    async def call(self, tool, args):
        """Calls a tool that must succeed; returns its structured content."""
        started = time.perf_counter()
        r = await self.s.call_tool(tool, args)
        self.calls.setdefault(tool, []).append(round((time.perf_counter() - started) * 1000, 1))
        check(not r.is_error, f"{tool}({args}) failed: {r.content}")
        sc = r.structured_content
        check(isinstance(sc, dict), f"{tool} returned no structured content")
        # The text content mirrors the structured content, for clients without structure.
        check(json.loads(r.content[0].text) == sc, f"{tool}: text and structured content differ")
        return sc

    async def fails(self, tool, args, field=None, contains=None):
        """Calls a tool that must fail with invalid params (naming `field`)."""
        try:
            r = await self.s.call_tool(tool, args)
        except MCPError as e:
            check(e.code == INVALID_PARAMS, f"{tool}({args}): code {e.code} {e.message}")
            if field is not None:
                check(isinstance(e.data, dict) and e.data.get("field") == field,
                      f"{tool}({args}): error data {e.data} does not name {field}")
            if contains is not None:
                check(contains in e.message, f"{tool}({args}): {e.message!r} lacks {contains!r}")
            return e.message
        raise CheckFailed(f"{tool}({args}) succeeded: {r.structured_content}")

    async def malformed(self, tool, args, mentions):
        """Arguments that do not match the input schema: rmcp refuses them before the tool runs,
        as invalid params (or a tool error) whose text says what did not parse."""
        try:
            r = await self.s.call_tool(tool, args)
        except MCPError as e:
            check(e.code == INVALID_PARAMS, f"{tool}({args}): code {e.code} {e.message}")
            check(mentions in e.message, f"{tool}({args}): {e.message!r} lacks {mentions!r}")
            return e.message
        check(r.is_error, f"{tool}({args}) succeeded: {r.structured_content}")
        text = r.content[0].text
        check(mentions in text, f"{tool}({args}): {text!r} lacks {mentions!r}")
        return text

    async def sql(self, query, limit=100):
        return (await self.call("query_sql", {"sql": query, "limit": limit}))["rows"]

    async def until(self, what, fetch, done):
        """Polls `fetch` until `done(value)`; the pipeline materializes actions asynchronously."""
        deadline = time.monotonic() + MATERIALIZE_TIMEOUT_S
        while True:
            try:
                v = await fetch()
                if done(v):
                    return v
            except MCPError as e:
                if e.code != INVALID_PARAMS:
                    raise
            check(time.monotonic() < deadline, f"timed out waiting for {what}")
            await asyncio.sleep(0.25)


def as_of_ok(tool, sc, tables_expected=True):
    a = sc.get("as_of")
    check(isinstance(a, dict), f"{tool}: no as_of")
    for k in ("tables", "committed_at", "watermark", "lag_ms"):
        check(k in a, f"{tool}: as_of lacks {k}")
    if tables_expected:
        check(a["tables"], f"{tool}: as_of names no table")
        for t in a["tables"]:
            check(t["version"] >= 0 and t["committed_at"], f"{tool}: bad table version {t}")
        check(a["lag_ms"] is not None and a["lag_ms"] >= 0, f"{tool}: lag_ms {a['lag_ms']}")


UPDATED = []  # resources/updated notifications received, by URI


async def on_message(message):
    root = getattr(message, "root", message)
    if getattr(root, "method", None) == "notifications/resources/updated":
        UPDATED.append(root.params.uri)


async def full(session):
    c = Client(session)
    report = {}
    init = await session.initialize()
    check(init.server_info.name == "millstream", f"server is {init.server_info.name}")
    tools = (await session.list_tools()).tools
    names = {t.name for t in tools}
    check(names == TOOLS, f"tools differ: missing {TOOLS - names}, extra {names - TOOLS}")
    for t in tools:
        check(t.output_schema and t.output_schema.get("type") == "object", f"{t.name}: no output schema")
        check(t.input_schema.get("type") == "object", f"{t.name}: no input schema")
        check(t.description, f"{t.name}: no description")
    report["tools"] = len(tools)

    # --- analytics, and ids to call the rest with
    d = await c.call("describe_tables", {})
    as_of_ok("describe_tables", d)
    tnames = {t["name"] for t in d["tables"]}
    for want in ("supply_chain.shortage_signals", "sales.churn_signals", "views.get_inventory_status"):
        check(want in tnames, f"describe_tables lacks {want}")
    check(d["kpis"], "describe_tables lists no KPI")
    one = await c.call("describe_tables", {"table": "supply_chain.purchase_orders"})
    check([t["name"] for t in one["tables"]] == ["supply_chain.purchase_orders"], "describe one table")
    await c.fails("describe_tables", {"table": "nope.nothing"}, field="table")

    q = await c.call("query_sql", {"sql": "SELECT part_id, warehouse_id FROM supply_chain.inventory ORDER BY part_id LIMIT 3", "limit": 2})
    check(len(q["rows"]) == 2 and q["truncated"], f"query_sql limit: {q}")
    check([col["name"] for col in q["columns"]] == ["part_id", "warehouse_id"], "query_sql columns")
    as_of_ok("query_sql", q)
    check([t["table"] for t in q["as_of"]["tables"]] == ["supply_chain.inventory"], f"query_sql as_of {q['as_of']}")
    for bad in ("DROP TABLE supply_chain.parts", "SELECT 1; SELECT 2",
                "COPY (SELECT 1) TO '/tmp/x.csv'", "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc'",
                "SET datafusion.execution.batch_size = 1", "SELECT * FROM no_such_table"):
        await c.fails("query_sql", {"sql": bad}, field="sql")
    await c.fails("query_sql", {"sql": "SELECT 1", "limit": 0}, field="limit")

    # --- supply chain
    inv = await c.call("get_inventory_status", {"limit": 5})
    as_of_ok("get_inventory_status", inv)
    check(inv["positions"], "get_inventory_status returned nothing")
    pos = inv["positions"][0]
    part, wh = pos["part_id"], pos["warehouse_id"]
    filtered = await c.call("get_inventory_status", {"part_id": part, "warehouse_id": wh})
    check([(p["part_id"], p["warehouse_id"]) for p in filtered["positions"]] == [(part, wh)], "inventory filter")
    risky = await c.call("get_inventory_status", {"min_risk": "HIGH", "limit": 50})
    check(all(p.get("risk_level") in ("HIGH", "CRITICAL") for p in risky["positions"]), "min_risk filter")
    await c.fails("get_inventory_status", {"part_id": "P-NOPE"}, field="part_id", contains="unknown part_id")
    await c.fails("get_inventory_status", {"limit": 5000}, field="limit")
    # A malformed argument (wrong type) is refused by the schema, not half-run.
    await c.malformed("get_inventory_status", {"limit": "many"}, "many")
    # A misspelt filter is refused, not ignored: ignored, it would answer for every position.
    await c.malformed("get_inventory_status", {"part": part}, "unknown field `part`")
    await c.malformed("query_sql", {"sql": "SELECT 1", "rows": 5}, "unknown field `rows`")

    ps = await c.call("predict_shortage", {"part_id": part})
    as_of_ok("predict_shortage", ps)
    check(ps["signals"] and all(s["part_id"] == part for s in ps["signals"]), f"predict_shortage {part}: {ps['signals'][:1]}")
    await c.fails("predict_shortage", {"part_id": "P-99999"}, field="part_id")
    await c.malformed("predict_shortage", {}, "part_id")

    risks = await c.call("list_shortage_risks", {"min_risk": "LOW", "limit": 10})
    as_of_ok("list_shortage_risks", risks)
    check(risks["signals"], "list_shortage_risks (LOW) returned nothing")
    order = ["CRITICAL", "HIGH", "MEDIUM", "LOW"]
    ranks = [order.index(s["risk_level"]) for s in risks["signals"]]
    check(ranks == sorted(ranks), "list_shortage_risks is not most urgent first")
    await c.malformed("list_shortage_risks", {"min_risk": "SEVERE"}, "SEVERE")

    sh = await c.call("track_shipments", {"limit": 5})
    as_of_ok("track_shipments", sh)
    if sh["shipments"]:
        sid = sh["shipments"][0]["shipment_id"]
        one = await c.call("track_shipments", {"shipment_id": sid})
        check([s["shipment_id"] for s in one["shipments"]] == [sid], "track_shipments by id")
    await c.call("track_shipments", {"open_only": True, "limit": 5})
    await c.fails("track_shipments", {"shipment_id": "SH-NOPE"}, field="shipment_id")

    # --- sales
    cust = (await c.sql("SELECT customer_id FROM sales.customers ORDER BY customer_id LIMIT 1"))[0]["customer_id"]
    info = await c.call("lookup_customer_info", {"customer_id": cust})
    as_of_ok("lookup_customer_info", info)
    check(info["customer"]["customer_id"] == cust, "lookup_customer_info id")
    await c.fails("lookup_customer_info", {"customer_id": "C-NOPE"}, field="customer_id")
    churn = await c.call("predict_churn", {"customer_id": cust})
    as_of_ok("predict_churn", churn)
    check(all(s["customer_id"] == cust for s in churn["signals"]), "predict_churn id")
    await c.fails("predict_churn", {"customer_id": "C-NOPE"}, field="customer_id")
    cr = await c.call("list_churn_risks", {"min_risk": "LOW", "limit": 10})
    as_of_ok("list_churn_risks", cr)
    check(cr["signals"], "list_churn_risks (LOW) returned nothing")
    k = await c.call("sales_kpis", {"days": 30, "group_by": "region"})
    as_of_ok("sales_kpis", k)
    check(k["rows"] and all(r["transactions"] > 0 for r in k["rows"]), f"sales_kpis: {k['rows'][:2]}")
    total = await c.call("sales_kpis", {"days": 30})
    check(abs(sum(r["revenue"] for r in k["rows"]) - total["rows"][0]["revenue"]) < 0.01 * max(1.0, total["rows"][0]["revenue"]),
          "sales_kpis by region does not add up to the total")
    await c.fails("sales_kpis", {"days": 0}, field="days")

    # --- IoT
    dev = (await c.sql("SELECT device_id, machine_id FROM iot.telemetry ORDER BY ts DESC LIMIT 1"))[0]
    rd = await c.call("query_sensor_data", {"device_id": dev["device_id"], "minutes": 10080, "limit": 5})
    as_of_ok("query_sensor_data", rd)
    check(rd["readings"] and all(r["device_id"] == dev["device_id"] for r in rd["readings"]), "query_sensor_data")
    await c.call("query_sensor_data", {"machine_id": dev["machine_id"], "minutes": 10080, "limit": 5})
    await c.fails("query_sensor_data", {}, field="device_id")
    await c.fails("query_sensor_data", {"device_id": "DEV-NOPE"}, field="device_id")
    an = await c.call("list_anomalies", {"hours": 720, "limit": 5})
    as_of_ok("list_anomalies", an)
    await c.call("list_anomalies", {"hours": 720, "min_severity": "HIGH", "limit": 5})
    await c.fails("list_anomalies", {"hours": 0}, field="hours")
    ma = await c.call("maintenance_alerts", {"limit": 5})
    as_of_ok("maintenance_alerts", ma)
    st = await c.call("sensor_stats", {"machine_id": dev["machine_id"], "minutes": 10080})
    as_of_ok("sensor_stats", st)
    check(st["sensors"] and all(s["readings"] > 0 and s["min"] <= s["mean"] <= s["max"] for s in st["sensors"]), "sensor_stats")

    # --- tickets (read)
    found = await c.call("search_tickets", {"limit": 3})
    as_of_ok("search_tickets", found)
    check(found["tickets"], "search_tickets found nothing")
    t0 = found["tickets"][0]
    word = t0["subject"].split()[0]
    by_word = await c.call("search_tickets", {"text": word, "limit": 50})
    # Without knowledge search on the server, every word must appear in each ticket found.
    check(by_word["ranked_by"] == "words", f"search_tickets ranked by {by_word['ranked_by']}")
    check(by_word["tickets"] and all(word.lower() in (x["subject"] + " " + x["description"] + " " + (x.get("resolution") or "")).lower() for x in by_word["tickets"]),
          f"search_tickets({word!r}) returned a ticket without it")
    await c.call("search_tickets", {"text": "100%_literal", "limit": 5})
    ts = await c.call("get_ticket_status", {"ticket_id": t0["ticket_id"]})
    as_of_ok("get_ticket_status", ts)
    await c.fails("get_ticket_status", {"ticket_id": "TKT-NOPE"}, field="ticket_id")

    # --- knowledge search: this server runs without it, and the tool says which setting.
    started = time.perf_counter()
    try:
        await c.s.call_tool("search_knowledge", {"query": "bearing noise on the spindle"})
        raise CheckFailed("search_knowledge succeeded on a server without knowledge search")
    except MCPError as e:
        check("knowledge.enabled" in e.message, f"search_knowledge: {e.message}")
    c.calls.setdefault("search_knowledge", []).append(round((time.perf_counter() - started) * 1000, 1))

    # --- resources and prompts
    res = (await session.list_resources()).resources
    check(len(res) == 4, f"{len(res)} resources")
    for r in res:
        body = json.loads((await session.read_resource(r.uri)).contents[0].text)
        check("items" in body and "as_of" in body, f"resource {r.uri}: {list(body)}")
    try:
        await session.read_resource("millstream://nope")
        raise CheckFailed("reading an unknown resource succeeded")
    except MCPError:
        pass
    prompts = (await session.list_prompts()).prompts
    check({p.name for p in prompts} == {"supply_chain_manager", "sales_rep"}, "prompts")
    p = await session.get_prompt("supply_chain_manager", {"warehouse_id": wh})
    check(wh in p.messages[0].content.text, "prompt argument not used")
    await session.get_prompt("sales_rep", {})
    report["resources"] = len(res)
    report["prompts"] = len(prompts)

    # --- resource updates: shortage signals are recomputed when an order lands (purchase orders
    # are one of their inputs), and the Change Data Feed of that commit triggers the update.
    await session.subscribe_resource("millstream://signals/shortages")

    # --- actions: an order, twice with one idempotency key
    terms = (await c.sql(
        f"SELECT s.min_order_qty FROM supply_chain.parts p JOIN supply_chain.suppliers s "
        f"ON s.supplier_id = p.supplier_id WHERE p.part_id = '{part}'"))[0]
    qty = terms["min_order_qty"]
    await c.fails("create_order", {"part_id": part, "warehouse_id": wh, "quantity": qty - 1}, field="quantity", contains="minimum")
    await c.fails("create_order", {"part_id": part, "warehouse_id": wh, "quantity": 0}, field="quantity")
    await c.fails("create_order", {"part_id": "P-NOPE", "warehouse_id": wh, "quantity": qty}, field="part_id")
    await c.fails("create_order", {"part_id": part, "warehouse_id": "WH-NOPE", "quantity": qty}, field="warehouse_id")
    await c.malformed("create_order", {"part_id": part, "warehouse_id": wh, "quantity": qty, "priority": "yesterday"}, "yesterday")
    key = f"test-{uuid.uuid4()}"
    args = {"part_id": part, "warehouse_id": wh, "quantity": qty, "priority": "rush", "idempotency_key": key}
    first = await c.call("create_order", args)
    second = await c.call("create_order", args)
    check(first["po_id"] == second["po_id"], "one idempotency key gave two order ids")
    check(first["fee"] > 0 and first["total_cost"] > first["fee"], f"rush order without fee: {first}")
    status = await c.until(f"order {first['po_id']}", lambda: c.call("get_order_status", {"po_id": first["po_id"]}), lambda v: True)
    as_of_ok("get_order_status", status)
    check(status["order"]["quantity"] == qty and status["order"]["priority"] == "rush", f"order {status['order']}")
    third = await c.call("create_order", args)
    check(third["outcome"] == "exists" and third["po_id"] == first["po_id"], f"third call: {third}")
    n = (await c.sql(f"SELECT count(*) AS n FROM supply_chain.purchase_orders WHERE idempotency_key = '{key}'"))[0]["n"]
    check(n == 1, f"{n} orders for one idempotency key")
    sent = await c.until("both order sends in the action log",
                         lambda: c.sql(f"SELECT count(*) AS n FROM supply_chain.order_actions WHERE idempotency_key = '{key}'"),
                         lambda rows: rows[0]["n"] >= 2)
    report["order"] = {"po_id": first["po_id"], "sends": sent[0]["n"], "orders": n}
    deadline = time.monotonic() + MATERIALIZE_TIMEOUT_S
    while "millstream://signals/shortages" not in UPDATED:
        check(time.monotonic() < deadline, "no resources/updated for millstream://signals/shortages")
        await asyncio.sleep(0.25)
    report["resource_updates"] = len(UPDATED)
    await c.fails("get_order_status", {"po_id": "PO-NOPE"}, field="po_id")

    # --- actions: a ticket, then its resolution
    await c.fails("create_ticket", {"customer_id": "C-NOPE", "subject": "x", "description": "y", "category": "billing"}, field="customer_id")
    await c.fails("create_ticket", {"customer_id": cust, "subject": "", "description": "y", "category": "billing"}, field="subject")
    await c.malformed("create_ticket", {"customer_id": cust, "subject": "x", "description": "y", "category": "weather"}, "weather")
    tkey = f"test-{uuid.uuid4()}"
    created = await c.call("create_ticket", {"customer_id": cust, "subject": "Bearing batch arrived damaged",
                                              "description": "Two pallets crushed in transit.", "category": "delivery",
                                              "priority": "high", "idempotency_key": tkey})
    tid = created["ticket_id"]
    await c.until(f"ticket {tid}", lambda: c.call("get_ticket_status", {"ticket_id": tid}), lambda v: True)
    await c.fails("update_ticket_resolution", {"ticket_id": tid, "status": "resolved"}, field="resolution")
    await c.fails("update_ticket_resolution", {"ticket_id": "TKT-NOPE", "status": "in_progress"}, field="ticket_id")
    await c.call("update_ticket_resolution", {"ticket_id": tid, "status": "resolved", "resolution": "Replacement shipped."})
    done = await c.until(f"ticket {tid} resolved", lambda: c.call("get_ticket_status", {"ticket_id": tid}),
                         lambda v: v["ticket"]["status"] == "resolved")
    check(done["ticket"]["resolution"] == "Replacement shipped." and done["ticket"]["subject"] == "Bearing batch arrived damaged",
          f"resolved ticket: {done['ticket']}")
    # A retried create (same key) must not reopen it.
    await c.call("create_ticket", {"customer_id": cust, "subject": "Bearing batch arrived damaged",
                                    "description": "Two pallets crushed in transit.", "category": "delivery",
                                    "priority": "high", "idempotency_key": tkey})
    await c.until("the retried create in the action log",
                  lambda: c.sql(f"SELECT count(*) AS n FROM support.ticket_actions WHERE ticket_id = '{tid}'"),
                  lambda rows: rows[0]["n"] >= 3)
    after = await c.call("get_ticket_status", {"ticket_id": tid})
    check(after["ticket"]["status"] == "resolved", f"a retried create reopened the ticket: {after['ticket']}")
    report["ticket"] = tid

    check(set(c.calls) == TOOLS, f"tools never called: {TOOLS - set(c.calls)}")
    report["calls"] = {t: len(v) for t, v in sorted(c.calls.items())}
    return report


async def stdio(cmd):
    from mcp.client.stdio import StdioServerParameters, stdio_client

    # Knowledge search off: its index would embed the test lakehouse's documents meanwhile.
    env = {**os.environ, "MILLSTREAM__KNOWLEDGE__ENABLED": "false"}
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            check({t.name for t in tools} == TOOLS, "stdio: tools differ")
            c = Client(session)
            d = await c.call("describe_tables", {})
            as_of_ok("describe_tables", d)
            inv = await c.call("get_inventory_status", {"limit": 3})
            as_of_ok("get_inventory_status", inv)
            # Without a broker, actions are refused with a clear error, and the server lives on.
            try:
                await session.call_tool("create_order", {"part_id": inv["positions"][0]["part_id"], "warehouse_id": "WH-01", "quantity": 1000})
                raise CheckFailed("stdio: create_order without a broker succeeded")
            except MCPError as e:
                check("actions are disabled" in e.message, f"stdio: {e.message}")
            await c.call("describe_tables", {"table": "ops.alerts"})
            return {"tools": len(tools), "transport": "stdio"}


async def stdio_as(principal, cmd):
    """stdio takes its identity from the environment: the tools and rows it is given."""
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {**os.environ, "MILLSTREAM__SERVE__PRINCIPAL": principal,
           "MILLSTREAM__KNOWLEDGE__ENABLED": "false"}
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await tools_and_warehouses(session)


async def tools_and_warehouses(session):
    """The caller's tools, and the warehouses query_sql lets it see."""
    tools = sorted(t.name for t in (await session.list_tools()).tools)
    r = await session.call_tool(
        "query_sql", {"sql": "SELECT DISTINCT warehouse_id FROM supply_chain.inventory"}
    )
    check(not r.is_error, f"query_sql failed: {r.content}")
    rows = r.structured_content["rows"]
    return {"tools": tools, "warehouses": sorted(row["warehouse_id"] for row in rows)}


async def bearer(url, token):
    """The SDK over streamable HTTP with a bearer token; a wrong token must not get in (the
    statuses the server answered it with are reported: the SDK itself only says it failed)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async def connect(t, statuses):
        async def seen(response):
            statuses.append(response.status_code)

        headers = {"Authorization": f"Bearer {t}"}
        hooks = {"response": [seen]}
        async with httpx2.AsyncClient(headers=headers, event_hooks=hooks, timeout=30) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    return await tools_and_warehouses(session)

    report = await connect(token, [])
    statuses = []
    try:
        await asyncio.wait_for(connect(token + "x", statuses), 30)
        raise CheckFailed("a wrong token got in")
    except CheckFailed:
        raise
    except Exception:
        report["wrong_token_statuses"] = statuses
    return report


async def main():
    mode = sys.argv[1]
    if mode == "http":
        from mcp.client.streamable_http import streamable_http_client

        async with streamable_http_client(sys.argv[2]) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, message_handler=on_message) as session:
                return await full(session)
    if mode == "stdio":
        return await stdio(sys.argv[2:])
    if mode == "bearer":
        return await bearer(sys.argv[2], sys.argv[3])
    if mode == "stdio-as":
        return await stdio_as(sys.argv[2], sys.argv[3:])
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    try:
        print(json.dumps(asyncio.run(main())))
    except CheckFailed as e:
        print(f"check failed: {e}", file=sys.stderr)
        sys.exit(1)
