// The back-office (/admin) in real headless Chromium, against the real Leaseline binary
// started by tests/browser.rs: sign in with an admin key, see a call reported through
// POST /v1/calls with its amount, the statistics chart, the pools' numbers, download the
// transactions as CSV; a site key sees its transactions only; a wrong key is refused.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const L = process.env.LEASELINE_URL;
const TEL_KEY = process.env.TEL_KEY;
const SITE_KEY = process.env.SITE_KEY;
const ADMIN_KEY = process.env.ADMIN_KEY;
const ARTIFACTS = process.env.ARTIFACTS;

let browser, lease;

async function api(method, p, key, body) {
  const r = await fetch(`${L}${p}`, {
    method,
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json();
  assert.ok(r.ok, `${method} ${p}: ${JSON.stringify(j)}`);
  return j;
}

before(async () => {
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  lease = await api("POST", "/v1/leases", SITE_KEY, { pool: "fr", session: "bo-visitor", listing: "bo-1" });
  await api("POST", "/v1/calls", TEL_KEY, { call_id: "bo-call-1", event: "start", called: lease.number, caller: "+33612345678" });
  await api("POST", "/v1/calls", TEL_KEY, { call_id: "bo-call-1", event: "end", duration_secs: 42 });
});

after(async () => {
  await browser?.close();
});

async function signIn(key, locale) {
  const c = await browser.newContext({ locale, acceptDownloads: true, viewport: { width: 1100, height: 1400 } });
  const p = await c.newPage();
  await p.goto(`${L}/admin`);
  await p.fill("#key", key);
  await p.click("#signin-form button[type=submit]");
  return { c, p };
}

test("an admin signs in and sees the call's amount, statistics, numbers, and downloads the CSV", async () => {
  const { c, p } = await signIn(ADMIN_KEY, "fr-FR");
  await p.waitForSelector("body[data-ready=admin]");
  assert.equal(await p.textContent("#transactions h2"), "Transactions");
  // The call reported through POST /v1/calls, with its amount.
  const call = p.locator('#journal tr[data-call="bo-call-1"] td.amount');
  assert.match(await call.textContent(), /^2,99\s€$/);
  // Its lease among the transactions, paid 2.99.
  const tx = p.locator(`#tx tr[data-lease="${lease.lease_id}"]`);
  assert.match(await tx.locator("td.amount").textContent(), /^2,99\s€$/);
  assert.match(await tx.textContent(), /bo-1/);
  // Thirty days of statistics as an SVG chart; today's bar is not empty.
  assert.equal(await p.locator("#chart svg rect.bar").count(), 30);
  const today = new Date().toISOString().slice(0, 10);
  assert.ok(Number(await p.getAttribute(`#chart rect[data-day="${today}"]`, "height")) > 0);
  assert.match(await p.textContent("#totals tbody"), /2,99\s€/);
  // The pools' numbers with their state, and their settings.
  assert.match(await p.textContent(`#pool-list tr[data-number="${lease.number}"]`), /louée/);
  assert.match(await p.textContent("#pool-list"), /Tarif : 2,99\s€ par appel/);
  // The transactions as CSV, fetched with the bearer key (no cookie anywhere).
  const [dl] = await Promise.all([p.waitForEvent("download"), p.click("#csv")]);
  assert.equal(dl.suggestedFilename(), "leaseline-transactions.csv");
  const csv = fs.readFileSync(await dl.path(), "utf8");
  assert.match(csv, /^lease_id,pool,number,session,listing,state/);
  assert.ok(csv.split("\n").some((l) => l.startsWith(`${lease.lease_id},fr,`) && l.includes(",2.99,0.00,EUR,")), csv);
  assert.deepEqual(await c.cookies(), []);
  // English on demand.
  await p.click("#lang");
  await p.waitForFunction(() => document.querySelector("#stats h2").textContent === "Statistics — last 30 days");
  await p.waitForSelector("body[data-ready=admin]");
  if (ARTIFACTS) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await p.click("#lang");
    await p.waitForFunction(() => document.documentElement.lang === "fr");
    await p.waitForSelector('#journal tr[data-call="bo-call-1"]');
    await p.screenshot({ path: path.join(ARTIFACTS, "admin.png") });
  }
  await c.close();
});

test("a site key sees its own transactions and statistics only; a wrong key is refused", async () => {
  const { c, p } = await signIn(SITE_KEY, "en-GB");
  await p.waitForSelector("body[data-ready=site]");
  assert.ok(await p.locator(`#tx tr[data-lease="${lease.lease_id}"]`).isVisible());
  assert.equal(await p.locator("#calls").isVisible(), false, "the call journal is for admins");
  assert.equal(await p.locator("#pools").isVisible(), false);
  // Its own statistics (its pages' leases count too: they share its tenant): the call's amount.
  assert.ok(await p.locator("#stats").isVisible());
  assert.equal(await p.locator("#chart svg rect.bar").count(), 30);
  assert.match(await p.textContent("#totals tbody"), /^fr\d+.*€2\.99/);
  assert.ok(await p.locator("#site-note").isVisible());
  await c.close();

  const bad = await signIn("not-a-key", "fr-FR");
  await bad.p.waitForFunction(() => document.querySelector("#status").textContent === "Clé refusée.");
  assert.ok(await bad.p.locator("#signin").isVisible());
  assert.equal(await bad.p.evaluate(() => sessionStorage.getItem("leaseline.key")), null);
  await bad.c.close();
});
