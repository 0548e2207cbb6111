// The whole path a new operator takes, in the browser only: the platform administrator signs
// in, creates a tenant and invites its owner; the owner accepts, uploads a model, calls it
// from the playground and sees the call on the dashboard.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { ADMIN, accessible, closeBrowser, done, newPage, open, screenshot, signIn, signOut } from "./helpers.mjs";

after(closeBrowser);

test("headline: a tenant from nothing to a served, measured model without a terminal", async (t) => {
  const page = await newPage();
  const started = Date.now();
  await page.goto("/portal/");
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  const firstPaint = Date.now() - started;
  t.diagnostic(`sign-in page interactive ${firstPaint} ms after navigation, cold cache`);
  assert.ok(firstPaint < 1000, `sign-in page interactive in ${firstPaint} ms`);
  await accessible(page, "sign-in");

  await signIn(page, ADMIN.email, ADMIN.password);
  await page.getByRole("heading", { level: 1, name: "Platform" }).waitFor();
  const create = page.getByRole("region", { name: "Create a tenant" });
  await create.getByLabel("Slug").fill("acme");
  await create.getByLabel("Name", { exact: true }).fill("Acme Corp");
  await create.getByLabel("Max models").fill("5");
  await create.getByRole("button", { name: "Create tenant" }).click();
  await page.getByRole("status").filter({ hasText: "Tenant acme created." }).waitFor();
  await page.getByTestId("status-acme").filter({ hasText: "active" }).waitFor();

  const invite = page.getByRole("region", { name: "Invite a member" });
  await invite.getByLabel("Tenant").selectOption("acme");
  await invite.getByLabel("Email").fill("alice@acme.test");
  await invite.getByLabel("Role").selectOption("owner");
  await invite.getByRole("button", { name: "Invite" }).click();
  const link = await page.getByTestId("secret").textContent();
  assert.match(link, /\/portal\/accept#token=tsi_/);
  await accessible(page, "platform");
  await signOut(page);

  // The owner opens the link the administrator sent.
  await page.goto(link);
  await page.getByLabel("Choose a password").fill("alice's long password");
  await page.getByRole("button", { name: "Accept" }).click();
  await page.getByRole("status").filter({ hasText: "You joined acme as owner." }).waitFor();
  await accessible(page, "accept invitation");
  await signIn(page, "alice@acme.test", "alice's long password");
  await page.getByRole("heading", { level: 1, name: "Dashboard" }).waitFor();

  await open(page, "Models");
  await page.getByLabel("Name", { exact: true }).fill("adder");
  await page.getByRole("button", { name: "Create model" }).click();
  await page.getByRole("status").filter({ hasText: "Model adder created." }).waitFor();
  await page.getByLabel(/^Artifact/).setInputFiles(process.env.TESSERA_MODEL);
  await page.getByRole("button", { name: "Upload version" }).click();
  await page.getByRole("status").filter({ hasText: "Version 1 of adder uploaded." }).waitFor();
  await page.getByRole("button", { name: "Make version 1 production" }).click();
  await page.getByRole("dialog", { name: "Move the production alias" }).getByRole("button", { name: "Move production" }).click();
  await page.getByRole("status").filter({ hasText: "production now points at version 1." }).waitFor();
  await page.getByText("Show").first().click();
  await page.getByText("Inputs: x: FP32[-1, 4]; y: FP32[-1, 4]").waitFor();
  await accessible(page, "models");
  await screenshot(page, "models");

  await page.getByRole("link", { name: "Try it in the playground" }).click();
  await page.getByRole("heading", { level: 1, name: "Playground" }).waitFor();
  await page.getByLabel(/^x \(FP32/).fill("1, 2, 3, 4");
  await page.getByLabel(/^y \(FP32/).fill("[10, 20, 30, 40]");
  await page.getByRole("button", { name: "Run" }).click();
  await page.getByTestId("output-z").filter({ hasText: "[11,22,33,44]" }).waitFor();
  // A few more calls, as a user trying values would make.
  for (const y of ["1 1 1 1", "2 2 2 2"]) {
    await page.getByLabel(/^y \(FP32/).fill(y);
    await page.getByRole("button", { name: "Run" }).click();
    await page.getByTestId("output-z").filter({ hasText: y === "1 1 1 1" ? "[2,3,4,5]" : "[3,4,5,6]" }).waitFor();
  }
  await accessible(page, "playground");

  await open(page, "Dashboard");
  // Usage is rolled up shortly after the call; the page is reloaded until it shows.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const text = (await page.getByRole("region", { name: "Usage" }).textContent()) ?? "";
    if (/3 calls in the/.test(text)) break;
    assert.ok(Date.now() < deadline, `the call never reached the dashboard: ${text}`);
    await page.waitForTimeout(1000);
    await page.reload();
    await page.getByRole("heading", { level: 1, name: "Dashboard" }).waitFor();
  }
  await accessible(page, "dashboard");
  await screenshot(page, "dashboard");
  await done(page);
});
