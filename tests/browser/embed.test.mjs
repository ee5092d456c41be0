// The drop-in script in real headless Chromium, against the real Leaseline binary started by
// tests/browser.rs (which passes the addresses and keys in the environment). A small HTTP
// server here plays the classifieds site (an allowed origin) and a foreign site.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const L = process.env.LEASELINE_URL;
const PAGE_KEY = process.env.PAGE_KEY;
const TEL_KEY = process.env.TEL_KEY;
const SITE_PORT = +process.env.SITE_PORT;
const EVIL_PORT = +process.env.EVIL_PORT;
const DEAD_PORT = +process.env.DEAD_PORT;
const ARTIFACTS = process.env.ARTIFACTS;

function page(q) {
  const attrs = [`data-leaseline-pool="${q.get("pool") || "fr"}"`, `data-leaseline-fallback="01 23 45 67 89"`];
  for (const k of ["listing", "mode", "heartbeat", "calls", "price"]) if (q.get(k)) attrs.push(`data-leaseline-${k}="${q.get(k)}"`);
  const endpoint = q.get("dead") ? ` data-leaseline-endpoint="http://127.0.0.1:${DEAD_PORT}"` : "";
  const late = q.get("late")
    ? `<script>setTimeout(function(){var s=document.createElement("span");s.id="late";s.setAttribute("data-leaseline-pool","fr");s.setAttribute("data-leaseline-listing","late-1");s.textContent="Voir le numéro";document.body.appendChild(s);},300);</script>`
    : "";
  return `<!doctype html><html><body><h1>Annonce</h1><span id="n" ${attrs.join(" ")}>Voir le numéro</span>${late}
<script src="${L}/embed.js" data-leaseline-key="${PAGE_KEY}"${endpoint}></script></body></html>`;
}

const servers = [];
let browser;

before(async () => {
  for (const port of [SITE_PORT, EVIL_PORT]) {
    const s = http.createServer((req, res) => {
      const q = new URL(req.url, "http://x").searchParams;
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      res.end(page(q));
    });
    await new Promise((r) => s.listen(port, "127.0.0.1", r));
    servers.push(s);
  }
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  for (const s of servers) s.close();
});

const site = (q) => `http://127.0.0.1:${SITE_PORT}/?${q}`;

async function open(url, ctx) {
  const c = ctx || (await browser.newContext());
  const p = await c.newPage();
  await p.goto(url);
  return { c, p };
}

async function showNumber(p) {
  await p.click("#n button.leaseline-show");
  await p.waitForSelector("#n a.leaseline-number");
  return p.getAttribute("#n a.leaseline-number", "href");
}

test("two visitors on the same listing get different numbers", async () => {
  const a = await open(site("listing=car-1"));
  const b = await open(site("listing=car-1"));
  const na = await showNumber(a.p);
  const nb = await showNumber(b.p);
  assert.match(na, /^tel:\+33899100\d{3}$/);
  assert.match(nb, /^tel:\+33899100\d{3}$/);
  assert.notEqual(na, nb);
  await a.c.close();
  await b.c.close();
});

test("clicking shows the number with a tel: link, and reloading keeps it", async () => {
  const { c, p } = await open(site("listing=car-2"));
  assert.equal(await p.getAttribute("#n", "data-leaseline-state"), "ready");
  assert.equal(await p.$("#n a"), null, "nothing is allocated before the click");
  const before = await showNumber(p);
  assert.match(await p.textContent("#n a.leaseline-number"), /^08 99 10 0\d \d\d$/);
  await p.reload();
  await p.waitForSelector("#n a.leaseline-number");
  assert.equal(await p.getAttribute("#n a.leaseline-number", "href"), before);
  await c.close();
});

test("the heartbeat renews the lease while the tab is visible", async () => {
  const { c, p } = await open(site("listing=hb&heartbeat=1"));
  await showNumber(p);
  const id = await p.getAttribute("#n", "data-leaseline-lease");
  const first = await p.getAttribute("#n", "data-leaseline-expires");
  await p.waitForFunction((f) => document.querySelector("#n").getAttribute("data-leaseline-expires") !== f, first, { timeout: 10000 });
  const moved = await p.getAttribute("#n", "data-leaseline-expires");
  const lease = await (await fetch(`${L}/v1/leases/${id}`)).json();
  assert.ok(Date.parse(moved) > Date.parse(first));
  assert.ok(Date.parse(lease.expires_at) >= Date.parse(moved), "Leaseline has the renewed deadline");
  await c.close();
});

test("a page lease that reaches page_max_ttl shows the button again", async () => {
  const { c, p } = await open(site("pool=brief&listing=b&heartbeat=1"));
  await showNumber(p);
  await p.waitForSelector("#n button.leaseline-show", { timeout: 10000 });
  assert.equal(await p.$("#n a.leaseline-number"), null, "the ended number is not shown");
  assert.equal(await p.getAttribute("#n", "data-leaseline-state"), "ready");
  await c.close();
});

test("an element added later (single-page apps) is filled", async () => {
  const { c, p } = await open(site("listing=x&late=1"));
  await p.waitForSelector("#late button.leaseline-show");
  await p.click("#late button.leaseline-show");
  await p.waitForSelector("#late a.leaseline-number");
  assert.match(await p.getAttribute("#late a.leaseline-number", "href"), /^tel:\+33899100\d{3}$/);
  await c.close();
});

test("an exhausted pool shows the shared number and a code", async () => {
  const a = await open(site("pool=tiny&listing=t&mode=load"));
  await a.p.waitForSelector("#n a.leaseline-number");
  const b = await open(site("pool=tiny&listing=t&mode=load"));
  await b.p.waitForSelector("#n .leaseline-code");
  assert.match(await b.p.textContent("#n .leaseline-code"), /code \d{4}$/);
  assert.equal(await b.p.textContent("#n a.leaseline-number"), "08 99 19 99 99");
  assert.match(await b.p.getAttribute("#n a.leaseline-number", "href"), /^tel:\+33899199999,\d{4}$/);
  assert.equal(await b.p.getAttribute("#n", "data-leaseline-state"), "code");
  await a.c.close();
  await b.c.close();
});

test("a call drops the missing-calls counter live", async () => {
  const { c, p } = await open(site("listing=multi&calls=2"));
  const tel = await showNumber(p);
  await p.waitForFunction(() => /appels restants : 2/.test(document.querySelector("#n .leaseline-missing").textContent));
  const r = await fetch(`${L}/v1/calls`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${TEL_KEY}` },
    body: JSON.stringify({ call_id: "browser-call-1", event: "start", called: tel.slice(4), caller: "+33612345678" }),
  });
  assert.equal(r.status, 200);
  await p.waitForFunction(() => /appels restants : 1/.test(document.querySelector("#n .leaseline-missing").textContent), null, { timeout: 10000 });
  await c.close();
});

test("the price is shown beside a surcharged number, as its country writes it", async () => {
  const fr = await open(site("listing=price-1&mode=load"));
  await fr.p.waitForSelector("#n .leaseline-price");
  assert.match(await fr.p.textContent("#n"), /^08 99 10 0\d \d\d \u2014 2,99\u00a0\u20ac\/appel$/);
  const ch = await open(site("pool=ch&listing=price-2&mode=load"));
  await ch.p.waitForSelector("#n .leaseline-price");
  assert.match(await ch.p.textContent("#n"), /^0900 100 00\d \u2014 CHF\u00a03\.13\/min$/);
  const off = await open(site("listing=price-3&mode=load&price=off"));
  await off.p.waitForSelector("#n a.leaseline-number");
  assert.equal(await off.p.$("#n .leaseline-price"), null, "data-leaseline-price=off hides it");
  for (const x of [fr, ch, off]) await x.c.close();
});

test("a page from a foreign origin is refused and shows the fallback", async () => {
  const { c, p } = await open(`http://127.0.0.1:${EVIL_PORT}/?listing=car-1&mode=load`);
  await p.waitForSelector('#n[data-leaseline-state="fallback"]');
  assert.equal(await p.textContent("#n a"), "01 23 45 67 89");
  assert.equal(await p.getAttribute("#n a", "href"), "tel:0123456789");
  await c.close();
});

test("with Leaseline unreachable the element shows the site's own number", async () => {
  const { c, p } = await open(site("listing=car-3&dead=1"));
  await p.click("#n button.leaseline-show");
  await p.waitForSelector('#n[data-leaseline-state="fallback"]');
  assert.equal(await p.textContent("#n a"), "01 23 45 67 89");
  await c.close();
});

test("the demo page works and is captured", async () => {
  const { c, p } = await open(`${L}/demo`);
  await p.waitForSelector("button.leaseline-show");
  await p.click("article:first-of-type button.leaseline-show");
  await p.waitForSelector("article:first-of-type a.leaseline-number");
  await p.waitForSelector("article:nth-of-type(3) a.leaseline-number");
  if (ARTIFACTS) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await p.screenshot({ path: path.join(ARTIFACTS, "demo.png"), fullPage: true });
  }
  await c.close();
});
