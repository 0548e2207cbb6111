// Usage over time (GET /v1/tenants/{tenant}/usage) and quota use.
import { useState } from "preact/hooks";
import { api, itemsOf, must, rawFetch, tenantPath } from "../api/client";
import { LineChart, Meter } from "../components/chart";
import { saveResponse } from "../download";
import { Loading, Messages, Section, Select, useAction, useLoad, useSession } from "../components/ui";

export type Bucket = {
  start: string;
  calls: number;
  rows?: number;
  errors?: Record<string, number> | number;
  cache_hits?: number;
  p50_ms?: number | null;
  p99_ms?: number | null;
  bytes_in?: number;
  bytes_out?: number;
};

const RANGES: Record<string, { hours: number; granularity: "hour" | "day" }> = {
  "last 24 hours": { hours: 24, granularity: "hour" },
  "last 7 days": { hours: 24 * 7, granularity: "day" },
  "last 30 days": { hours: 24 * 30, granularity: "day" },
};

function errorCount(errors: Bucket["errors"]): number {
  if (typeof errors === "number") return errors;
  return Object.values(errors ?? {}).reduce((a, b) => a + b, 0);
}

export function Dashboard() {
  const s = useSession();
  const tenant = s.tenant!;
  const [range, setRange] = useState("last 24 hours");
  const { hours, granularity } = RANGES[range]!;
  const action = useAction();
  const usageUrl = () => {
    const to = new Date(Math.ceil(Date.now() / 3600_000) * 3600_000);
    const from = new Date(to.getTime() - hours * 3600_000);
    return `${tenantPath(tenant)}/usage?granularity=${granularity}&from=${from.toISOString()}&to=${to.toISOString()}`;
  };
  const usage = useLoad(async () => {
    const response = await rawFetch(usageUrl());
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`usage: ${response.status}`);
    const body = await response.json();
    return (Array.isArray(body) ? body : (body.items ?? body.buckets ?? [])) as Bucket[];
  }, [tenant, range]);
  const quota = useLoad(async () => {
    const info = must(await api.GET("/v1/tenants/{tenant}", { params: { path: { tenant } } }));
    const models = s.can("models_read") ? itemsOf(must(await api.GET("/v1/tenants/{tenant}/models", { params: { path: { tenant } } }))).length : null;
    return { info, models };
  }, [tenant]);

  const buckets = usage.data ?? [];
  const labels = buckets.map((b) => new Date(b.start).toLocaleString(undefined, granularity === "hour" ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric" }));
  const total = buckets.reduce((a, b) => a + b.calls, 0);
  return (
    <>
      <h1 tabIndex={-1}>Dashboard</h1>
      <Messages error={usage.error || quota.error || action.error} />
      <Section
        title="Usage"
        actions={
          <div class="row">
            <Select label="Period" name="range" options={Object.keys(RANGES)} value={range} onChange={(e) => setRange((e.currentTarget as HTMLSelectElement).value)} />
            <button
              type="button"
              onClick={() =>
                void action.run(async () => {
                  const url = usageUrl().replace("/usage?", "/usage/export?");
                  const response = await rawFetch(url);
                  if (!response.ok) throw new Error(`export failed: ${response.status}`);
                  await saveResponse(response, `usage-${tenant}.csv`);
                })
              }
            >
              Export usage CSV
            </button>
          </div>
        }
      >
        <Loading loading={usage.loading} />
        {usage.data === null && <p>Usage is not recorded by this server.</p>}
        {usage.data && (
          <>
            <p data-testid="total-calls">
              {total} calls in the {range}.
            </p>
            <div class="charts">
              <LineChart title="Calls" labels={labels} series={[{ name: "calls", values: buckets.map((b) => b.calls), color: "#1f5fbf" }]} />
              <LineChart title="Errors" labels={labels} series={[{ name: "errors", values: buckets.map((b) => errorCount(b.errors)), color: "#b3261e" }]} />
              <LineChart
                title="Latency"
                unit=" ms"
                labels={labels}
                series={[
                  { name: "p50", values: buckets.map((b) => b.p50_ms ?? null), color: "#2e7d32" },
                  { name: "p99", values: buckets.map((b) => b.p99_ms ?? null), color: "#b8420f" },
                ]}
              />
              <LineChart
                title="Cache hit rate"
                unit="%"
                labels={labels}
                series={[{ name: "hit rate", values: buckets.map((b) => (b.calls ? Math.round(((b.cache_hits ?? 0) / b.calls) * 100) : null)), color: "#6a1b9a" }]}
              />
            </div>
          </>
        )}
      </Section>
      <Section title="Quotas">
        <Loading loading={quota.loading} />
        {quota.data && (
          <>
            {quota.data.models !== null && <Meter label="Models" used={quota.data.models} limit={quota.data.info.max_models} />}
            <p>
              Rate limit {quota.data.info.rate_limit_per_second} calls/s (burst {quota.data.info.rate_limit_burst}); tenant{" "}
              {quota.data.info.status}.
            </p>
          </>
        )}
      </Section>
    </>
  );
}
