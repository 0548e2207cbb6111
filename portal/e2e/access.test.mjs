// What each role is offered, what a tenant's members can see of another tenant (nothing),
// and that the server refuses what the portal does not offer.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { PASSWORD, accessible, call, closeBrowser, done, login, newPage, open, seedTenant, signIn } from "./helpers.mjs";

let umbrella;
let hooli;
before(async () => {
  umbrella = await seedTenant("umbrella");
  hooli = await seedTenant("hooli");
  // Hooli's names, which no member of Umbrella may ever see.
  const owner = await login(hooli.emails.owner, PASSWORD);
  for (const name of ["hooli-secret-model"]) {
    const [status] = await call("POST", "/v1/tenants/hooli/models", owner, { name, framework: "onnx" });
    assert.equal(status, 201);
  }
  const [key] = await call("POST", "/v1/tenants/hooli/api-keys", owner, { name: "hooli-secret-key", role: "inference" });
  assert.equal(key, 201);
  const umbrellaOwner = await login(umbrella.emails.owner, PASSWORD);
  const [model] = await call("POST", "/v1/tenants/umbrella/models", umbrellaOwner, { name: "umbrella-model", framework: "onnx" });
  assert.equal(model, 201);
});
after(closeBrowser);

const NAV = {
  owner: ["Dashboard", "Models", "Playground", "Datasets and jobs", "Members", "API keys", "Audit"],
  admin: ["Dashboard", "Models", "Playground", "Datasets and jobs", "Members", "API keys"],
  ml_engineer: ["Dashboard", "Models", "Playground", "Datasets and jobs"],
  auditor: ["Dashboard", "Audit"],
  inference: ["Dashboard", "Models", "Playground"],
};

for (const [role, pages] of Object.entries(NAV)) {
  test(`${role}: only the pages and actions of the role are offered`, async () => {
    const page = await newPage();
    await signIn(page, umbrella.emails[role]);
    const links = await page.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
    assert.deepEqual(links.filter((l) => l !== "Change password"), pages);
    if (pages.includes("Models")) {
      await open(page, "Models");
      await page.getByRole("cell", { name: "umbrella-model", exact: true }).waitFor();
      const writes = role !== "inference";
      assert.equal(await page.getByRole("button", { name: "Create model" }).count(), writes ? 1 : 0);
      assert.equal(await page.getByRole("button", { name: "Delete umbrella-model" }).count(), writes ? 1 : 0);
    }
    if (pages.includes("Members")) {
      await open(page, "Members");
      await page.getByRole("cell", { name: umbrella.emails.owner, exact: true }).first().waitFor();
      // Nobody below owner may touch an owner.
      assert.equal(await page.getByRole("button", { name: `Remove ${umbrella.emails.owner}` }).count(), 0);
    }
    // A page the role may not use, reached by its address, says so and offers nothing.
    if (!pages.includes("Members")) {
      await page.goto("/portal/members");
      await page.getByRole("alert").filter({ hasText: `Your role (${role}) may not use this page.` }).waitFor();
      assert.equal(await page.getByRole("button", { name: "Invite" }).count(), 0);
      await accessible(page, `members refused to ${role}`);
    }
    await done(page);
  });
}

test("the server refuses what the portal does not offer", async () => {
  const inference = await login(umbrella.emails.inference, PASSWORD);
  assert.equal((await call("POST", "/v1/tenants/umbrella/models", inference, { name: "sneaky", framework: "onnx" }))[0], 403);
  const auditor = await login(umbrella.emails.auditor, PASSWORD);
  assert.equal((await call("GET", "/v1/tenants/umbrella/members", auditor))[0], 403);
  const admin = await login(umbrella.emails.admin, PASSWORD);
  const [status, body] = await call("POST", "/v1/tenants/umbrella/invitations", admin, { email: "x@umbrella.test", role: "owner" });
  assert.equal(status, 403, JSON.stringify(body));
});

test("a member of one tenant never sees another tenant's names", async () => {
  const page = await newPage();
  const seen = [];
  page.on("response", async (response) => {
    if (response.url().includes("/v1/") || response.url().includes("/v2/")) seen.push(await response.text().catch(() => ""));
  });
  await signIn(page, umbrella.emails.owner);
  for (const name of ["Dashboard", "Models", "Playground", "Datasets and jobs", "Members", "API keys", "Audit"]) {
    await open(page, name);
    await page.waitForLoadState("networkidle");
    seen.push(await page.content());
    await accessible(page, name);
  }
  // Reaching for the other tenant by its address answers as if it did not exist.
  await page.goto("/portal/playground?model=hooli-secret-model");
  await page.getByRole("alert").filter({ hasText: "not_found" }).waitFor();
  const text = seen.join("\n");
  for (const secret of ["hooli-secret-key", hooli.emails.owner, hooli.emails.admin, "Tenant hooli"]) {
    assert.ok(!text.includes(secret), `tenant umbrella saw ${secret}`);
  }
  assert.ok(!/"hooli"|hooli\.test/.test(text), "no slug or email of hooli");
  await done(page);
});
