// Shared by the browser tests: the served Tessera (portal-e2e.sh starts it), API calls for
// seeding, a Chromium page that fails the test on any script error or CSP violation, and the
// accessibility check every page passes.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { AxeBuilder } from "@axe-core/playwright";

export const BASE = process.env.TESSERA_URL ?? "http://127.0.0.1:8080";
export const ADMIN = { email: process.env.TESSERA_ADMIN_EMAIL, password: process.env.TESSERA_ADMIN_PASSWORD };
export const PASSWORD = "portal member password";

let browser;
export async function launch() {
  browser ??= await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  return browser;
}

export async function closeBrowser() {
  await browser?.close();
  browser = undefined;
}

/** A fresh browser context (no cookies) and page; collects what must never happen. */
export async function newPage() {
  const context = await (await launch()).newContext({ baseURL: BASE, viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  page.problems = problems;
  return page;
}

export async function done(page) {
  assert.deepEqual(page.problems, [], "no script errors or CSP violations");
  await page.context().close();
}

/** JSON API call with an optional bearer token; answers [status, body]. */
export async function call(method, path, token, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(BASE + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return [response.status, parsed];
}

export async function login(email, password, tenant) {
  const [status, body] = await call("POST", "/v1/auth/login", null, tenant ? { email, password, tenant } : { email, password });
  assert.equal(status, 200, `login of ${email}: ${JSON.stringify(body)}`);
  return body.access_token;
}

/** A tenant with one member per role (emails role@slug.test) created through the API. */
export async function seedTenant(slug) {
  const admin = await login(ADMIN.email, ADMIN.password);
  const [created, tenant] = await call("POST", "/v1/tenants", admin, { slug, name: `Tenant ${slug}` });
  assert.equal(created, 201, JSON.stringify(tenant));
  const emails = {};
  for (const role of ["owner", "admin", "ml_engineer", "auditor", "inference"]) {
    const email = `${role.replace("_", "-")}@${slug}.test`;
    const [invited, invitation] = await call("POST", `/v1/tenants/${slug}/invitations`, admin, { email, role });
    assert.equal(invited, 201, JSON.stringify(invitation));
    const [accepted, body] = await call("POST", "/v1/invitations/accept", null, { token: invitation.token, password: PASSWORD });
    assert.equal(accepted, 201, JSON.stringify(body));
    emails[role] = email;
  }
  return { slug, emails, admin };
}

export async function signIn(page, email, password = PASSWORD) {
  await page.goto("/portal/sign-in");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("navigation", { name: "Main" }).waitFor();
}

export async function signOut(page) {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
}

/** Opens a page of the portal by its navigation link, as a user would. */
export async function open(page, name) {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();
  await page.getByRole("heading", { level: 1, name }).waitFor();
}

/** axe-core on the page as it is: no serious or critical violation. */
export async function accessible(page, label) {
  const results = await new AxeBuilder({ page }).analyze();
  const bad = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`),
    [],
    `accessibility of ${label}`,
  );
}

export async function screenshot(page, name) {
  const dir = process.env.TESSERA_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: `${dir}/${name}.png`, fullPage: true });
}
