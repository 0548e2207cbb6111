// One test per page's main flow (the headline test covers models, playground, accept and
// platform creation), plus the session's handling of its tokens.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ADMIN, BASE, PASSWORD, accessible, call, closeBrowser, done, login, newPage, open, seedTenant, signIn, signOut } from "./helpers.mjs";

let globex;
before(async () => {
  globex = await seedTenant("globex");
});
after(closeBrowser);

test("session: the refresh token stays in an HttpOnly cookie and a reload signs in again", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.owner);
  const stored = await page.evaluate(() => JSON.stringify({ cookie: document.cookie, local: { ...localStorage }, session: { ...sessionStorage } }));
  assert.doesNotMatch(stored, /trt_|tessera_refresh|eyJ/, "no token where scripts can read it");
  const [cookie] = (await page.context().cookies()).filter((c) => c.name === "tessera_refresh");
  assert.ok(cookie, "the refresh cookie is set");
  assert.deepEqual([cookie.httpOnly, cookie.secure, cookie.sameSite, cookie.path], [true, true, "Strict", "/v1/auth"]);
  await page.reload();
  await page.getByTestId("who").filter({ hasText: globex.emails.owner }).waitFor();
  await signOut(page);
  assert.equal((await page.context().cookies()).filter((c) => c.name === "tessera_refresh").length, 0, "sign-out clears the cookie");
  await page.goto("/portal/models");
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await done(page);
});

test("session: another site's page can neither use nor spend the refresh cookie", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.owner);
  const target = new URL("/v1/auth/refresh", BASE).href;
  // A page of another site in the same browser, as an attacker's would be: localhost is not
  // the site of 127.0.0.1 (both loopback, so the browser's private network checks stay out of
  // it), and /healthz is a document without the portal's CSP to hold its script back.
  const attacker = await page.context().newPage();
  await attacker.goto(new URL("/healthz", BASE.replace("127.0.0.1", "localhost")).href);
  const sent = [];
  // Held as promises, pushed when the event fires: reading the headers is asynchronous and
  // may finish after the page's fetches have returned.
  attacker.on("request", (request) => {
    if (request.url() === target) sent.push(request.allHeaders().then((headers) => headers.cookie ?? ""));
  });
  const outcomes = await attacker.evaluate(async (url) => {
    const results = [];
    // A simple request: no preflight, but SameSite=Strict keeps the cookie home.
    await fetch(url, { method: "POST", mode: "no-cors", credentials: "include", headers: { "Content-Type": "text/plain" }, body: "{}" })
      .then((r) => results.push(`simple: ${r.type}`))
      .catch((e) => results.push(`simple: ${e.name}`));
    // With the header the server requires: the preflight gets no CORS grant.
    await fetch(url, { method: "POST", credentials: "include", headers: { "Content-Type": "application/json", "X-Tessera-Refresh": "cookie" }, body: "{}" })
      .then((r) => results.push(`with header: ${r.status}`))
      .catch((e) => results.push(`with header: ${e.name}`));
    return results;
  }, target);
  assert.deepEqual(outcomes, ["simple: opaque", "with header: TypeError"]);
  assert.ok(sent.length > 0, "the simple request was sent");
  const cookies = await Promise.all(sent);
  assert.ok(cookies.every((cookie) => !cookie.includes("tessera_refresh")), `the cookie left for another site: ${cookies}`);
  // The session is intact: the portal still refreshes from its cookie.
  await page.reload();
  await page.getByTestId("who").filter({ hasText: globex.emails.owner }).waitFor();
  await attacker.close();
  await done(page);
});

test("sign-in: a user of several tenants chooses one", async () => {
  const initech = await seedTenant("initech");
  const own = await login(initech.emails.owner, PASSWORD);
  // An existing account accepts while logged in.
  const [, fresh] = await call("POST", "/v1/tenants/globex/invitations", globex.admin, { email: "owner@initech.test", role: "auditor" });
  const [accepted] = await call("POST", "/v1/invitations/accept", own, { token: fresh.token });
  assert.equal(accepted, 201);
  const page = await newPage();
  await page.goto("/portal/sign-in");
  await page.getByLabel("Email").fill(initech.emails.owner);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("group", { name: "Choose the tenant to act for" }).waitFor();
  await accessible(page, "tenant choice");
  await page.getByLabel("globex (auditor)").check();
  await page.getByRole("button", { name: "Continue" }).click();
  await page.getByTestId("who").filter({ hasText: "globex · auditor" }).waitFor();
  await done(page);
});

test("members: invite, change a role, remove", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.admin);
  await open(page, "Members");
  const inviteForm = page.getByRole("region", { name: "Invite someone" });
  // An admin may not grant owner or auditor: those roles are not offered.
  const offered = await inviteForm.getByLabel("Role").locator("option").allTextContents();
  assert.deepEqual(offered, ["admin", "ml_engineer", "inference"]);
  await inviteForm.getByLabel("Email").fill("newbie@globex.test");
  await inviteForm.getByLabel("Role").selectOption("inference");
  await inviteForm.getByRole("button", { name: "Invite" }).click();
  const link = await page.getByTestId("secret").textContent();
  await page.getByRole("cell", { name: "newbie@globex.test", exact: true }).first().waitFor();
  await accessible(page, "members");
  const token = decodeURIComponent(link.split("#token=")[1]);
  const [accepted] = await call("POST", "/v1/invitations/accept", null, { token, password: PASSWORD });
  assert.equal(accepted, 201);
  await page.reload();
  await page.getByLabel("Role of newbie@globex.test").selectOption("ml_engineer");
  await page.getByRole("status").filter({ hasText: "newbie@globex.test is now ml_engineer." }).waitFor();
  await page.getByRole("button", { name: "Remove newbie@globex.test" }).click();
  await page.getByRole("dialog", { name: "Remove member" }).getByRole("button", { name: "Remove" }).click();
  await page.getByRole("status").filter({ hasText: "newbie@globex.test removed." }).waitFor();
  const members = page.getByRole("region", { name: "Members", exact: true });
  await members.getByRole("cell", { name: "newbie@globex.test", exact: true }).waitFor({ state: "detached" });
  await done(page);
});

test("api keys: create with the secret shown once, revoke", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.owner);
  await open(page, "API keys");
  await page.getByLabel("Name").fill("scoring service");
  await page.getByLabel("Role").selectOption("inference");
  await page.getByRole("button", { name: "Create key" }).click();
  const secret = await page.getByTestId("secret").textContent();
  assert.match(secret, /^tsk_/);
  const [status] = await call("GET", "/v2/models/nothing", secret);
  assert.equal(status, 404, "the key authenticates");
  await page.getByRole("button", { name: "Copy" }).waitFor();
  await accessible(page, "api keys");
  await page.reload();
  assert.equal(await page.getByTestId("secret").count(), 0, "the secret is not shown again");
  await page.getByRole("button", { name: "Revoke scoring service" }).click();
  await page.getByRole("dialog", { name: "Revoke key" }).getByRole("button", { name: "Revoke" }).click();
  await page.getByRole("status").filter({ hasText: "Key scoring service revoked." }).waitFor();
  const [refused] = await call("GET", "/v2/models/nothing", secret);
  assert.equal(refused, 401, "a revoked key is refused");
  await done(page);
});

test("datasets and jobs: upload a CSV, train, watch loss and accuracy live", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.ml_engineer);
  await open(page, "Datasets and jobs");
  const rows = ["a,b,label"];
  for (let i = 0; i < 200; i++) {
    const a = (i % 10) / 10;
    const b = ((i * 7) % 10) / 10;
    rows.push(`${a},${b},${a + b > 1 ? 1 : 0}`);
  }
  await page.getByLabel(/^CSV file/).setInputFiles({ name: "sums.csv", mimeType: "text/csv", buffer: Buffer.from(rows.join("\n") + "\n") });
  await page.getByRole("button", { name: "Upload dataset" }).click();
  await page.getByRole("status").filter({ hasText: "Dataset sums uploaded: 200 rows." }).waitFor();
  await page.getByLabel("Model to train").fill("sums");
  await page.getByLabel("Target column").selectOption("label");
  await page.getByLabel("Epochs").fill("8");
  await page.getByRole("button", { name: "Start training" }).click();
  await page.getByTestId("job-status").filter({ hasText: "succeeded" }).waitFor({ timeout: 120_000 });
  await page.getByRole("figure", { name: "Loss" }).waitFor();
  await page.getByRole("figure", { name: "Accuracy" }).waitFor();
  // The job's status can read "succeeded" (fetched once on opening) before its event stream
  // has delivered every epoch: wait for the eighth point, then check there are no more.
  const points = page.getByRole("figure", { name: "Loss" }).locator("tbody tr");
  await points.nth(7).waitFor();
  assert.equal(await points.count(), 8, "one point per epoch");
  await accessible(page, "datasets and jobs");
  await done(page);
});

test("audit: filter, export and verify the chain", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.auditor);
  await open(page, "Audit");
  await page.getByRole("cell", { name: "tenant.created" }).first().waitFor();
  await page.getByLabel("Action").fill("member.invited");
  await page.getByRole("button", { name: "Apply filters" }).click();
  await page.waitForFunction(() =>
    [...document.querySelectorAll("tbody tr td:nth-child(3)")].every((td) => td.textContent === "member.invited"),
  );
  const download = page.waitForEvent("download");
  await page.getByRole("button", { name: "Export CSV" }).click();
  assert.match((await download).suggestedFilename(), /^audit-globex\.csv$/);
  await page.getByRole("button", { name: "Verify chain" }).click();
  await page.getByTestId("verdict").filter({ hasText: /Verified: OK: \d+ events, chain and signatures valid/ }).waitFor();
  await accessible(page, "audit");
  await done(page);
});

test("platform: change a tenant's limits, suspend and resume it", async () => {
  const page = await newPage();
  await signIn(page, ADMIN.email, ADMIN.password);
  await page.getByRole("heading", { level: 1, name: "Platform" }).waitFor();
  const limits = page.getByRole("region", { name: "Change limits" });
  await limits.getByLabel("Tenant").selectOption("globex");
  await limits.getByLabel("Max models").fill("7");
  await limits.getByRole("button", { name: "Change limits" }).click();
  await page.getByRole("status").filter({ hasText: "Limits of globex changed." }).waitFor();
  const [, view] = await call("GET", "/v1/tenants/globex", globex.admin);
  assert.equal(view.max_models, 7);
  await page.getByRole("button", { name: "Suspend globex" }).click();
  await page.getByRole("dialog", { name: "Suspend tenant" }).getByRole("button", { name: "Suspend" }).click();
  await page.getByTestId("status-globex").filter({ hasText: "suspended" }).waitFor();
  assert.equal((await call("POST", "/v1/auth/login", null, { email: globex.emails.owner, password: PASSWORD }))[0], 403);
  await page.getByRole("button", { name: "Resume globex" }).click();
  await page.getByTestId("status-globex").filter({ hasText: "active" }).waitFor();
  await done(page);
});

test("change password: every session ends, the new password signs in", async () => {
  const page = await newPage();
  await signIn(page, globex.emails.inference);
  await page.getByRole("link", { name: "Change password" }).click();
  await page.getByRole("heading", { level: 1, name: "Change password" }).waitFor();
  await accessible(page, "change password");
  await page.getByLabel("Current password").fill(PASSWORD);
  await page.getByLabel("New password").fill("a brand new password");
  await page.getByRole("button", { name: "Change password" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await signIn(page, globex.emails.inference, "a brand new password");
  await done(page);
});

test("keyboard: sign in, move between pages and answer a dialog without a mouse", async () => {
  const page = await newPage();
  await page.goto("/portal/sign-in");
  const focused = () => page.evaluate(() => document.activeElement?.getAttribute("aria-label") || document.activeElement?.textContent?.trim() || document.activeElement?.getAttribute("name"));
  // Tab until `name` has the focus (at most 30 steps), as a keyboard user would.
  const tabTo = async (name) => {
    for (let i = 0; i < 30; i++) {
      await page.keyboard.press("Tab");
      if ((await focused()) === name) return;
    }
    assert.fail(`${name} never got the focus`);
  };
  await tabTo("email");
  await page.keyboard.type(globex.emails.admin);
  await page.keyboard.press("Tab");
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { level: 1, name: "Dashboard" }).waitFor();
  await tabTo("API keys");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { level: 1, name: "API keys" }).waitFor();
  await tabTo("name");
  await page.keyboard.type("keyboard key");
  await page.keyboard.press("Enter");
  await page.getByRole("status").filter({ hasText: "Key keyboard key created." }).waitFor();
  await tabTo("Revoke keyboard key");
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog", { name: "Revoke key" });
  await dialog.waitFor();
  assert.equal(await focused(), "Cancel", "the dialog takes the focus, on its safe choice");
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });
  assert.equal(await page.getByRole("button", { name: "Revoke keyboard key" }).count(), 1, "Escape revoked nothing");
  await done(page);
});
