// Fails when src/api/schema.d.ts is not what openapi-typescript makes of
// ../openapi/openapi.json: the portal's client must be regenerated (npm run gen-client).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "tessera-client-"));
try {
  const fresh = join(dir, "schema.d.ts");
  execFileSync("npx", ["--no-install", "openapi-typescript", "../openapi/openapi.json", "-o", fresh], { stdio: "pipe" });
  if (readFileSync(fresh, "utf8") !== readFileSync("src/api/schema.d.ts", "utf8")) {
    console.error("portal/src/api/schema.d.ts is stale: regenerate it with `npm run gen-client` in portal/");
    process.exit(1);
  }
  console.log("portal client matches openapi/openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
