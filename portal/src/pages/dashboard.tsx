// Usage over time (GET /v1/tenants/{tenant}/usage: buckets per model version and hour or
// day, with the tenant's quotas), summed over the models shown.
import { useState } from "preact/hooks";
import { api, itemsOf, must, rawFetch, tenantPath } from "../api/client";
import { LineChart, Meter } from "../components/chart";
import { saveResponse } from "../download";
import { Loading, Messages, Section, Select, bytes, useAction, useLoad, useSession } from "../components/ui";

type Bucket = {
  start: string;
  model: string;
  version: number;
  calls: number;
  errors: Record<string, number>;
  cache_hits: number;
  p50_ms: number | null;
  p99_ms: number | null;
};
type QuotaUse = { used: number; limit: number };
type Report = {
  from: string;
  to: string;
  buckets: Bucket[];
  next_cursor?: string | null;
  quota: { models: QuotaUse; storage_bytes: QuotaUse; rate_limit_per_second: number; rate_limit_burst: number };
};

const RANGES: Record<string, { hours: number; granularity: "hour" | "day" }> = {
  "last 24 hours": { hours: 24, granularity: "hour" },
  "last 7 days": { hours: 24 * 7, granularity: "day" },
  "last 30 days": { hours: 24 * 30, granularity: "day" },
};

/** One point per period of the window, zero where nothing was called. */
export type Point = { start: number; calls: number; errors: number; cacheHits: number; p50: number | null; p99: number | null };

export function series(report: Report, stepMs: number): Point[] {
  const points = new Map<number, Point & { weighted: number }>();
  for (let t = Date.parse(report.from); t < Date.parse(report.to); t += stepMs) {
    points.set(t, { start: t, calls: 0, errors: 0, cacheHits: 0, p50: null, p99: null, weighted: 0 });
  }
  for (const b of report.buckets) {
    const p = points.get(Date.parse(b.start));
    if (!p) continue;
    const errors = Object.values(b.errors).reduce((a, n) => a + n, 0);
    p.calls += b.calls;
    p.errors += errors;
    p.cacheHits += b.cache_hits;
    // Percentiles do not add up across models: the median is weighted by successful calls,
    // the tail is the worst model's.
    if (b.p50_ms !== null) {
      const ok = b.calls - errors;
      p.p50 = ((p.p50 ?? 0) * p.weighted + b.p50_ms * ok) / Math.max(1, p.weighted + ok);
      p.weighted += ok;
    }
    if (b.p99_ms !== null) p.p99 = Math.max(p.p99 ?? 0, b.p99_ms);
  }
  return [...points.values()];
}

export function Dashboard() {
  const s = useSession();
  const tenant = s.tenant!;
  const [range, setRange] = useState("last 24 hours");
  const [model, setModel] = useState("");
  const { hours, granularity } = RANGES[range]!;
  const action = useAction();
  const mayRead = s.can("usage_read");
  const query = () => {
    const to = new Date(Math.ceil(Date.now() / 3600_000) * 3600_000);
    const from = new Date(to.getTime() - hours * 3600_000);
    const q = new URLSearchParams({ granularity, from: from.toISOString(), to: to.toISOString() });
    if (model) q.set("model", model);
    return q.toString();
  };
  const usage = useLoad(async () => {
    if (!mayRead) return null;
    let report: Report | null = null;
    let cursor: string | null | undefined;
    // Every page of the window (a page per 100 buckets); ten pages are more than a chart shows.
    for (let i = 0; i < 10 && (i === 0 || cursor); i++) {
      const response = await rawFetch(`${tenantPath(tenant)}/usage?${query()}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      if (!response.ok) throw new Error(`usage: ${response.status}`);
      const page = (await response.json()) as Report;
      report = report ? { ...page, buckets: [...report.buckets, ...page.buckets] } : page;
      cursor = page.next_cursor;
    }
    return report;
  }, [tenant, range, model]);
  const models = useLoad(async () => (s.can("models_read") ? itemsOf(must(await api.GET("/v1/tenants/{tenant}/models", { params: { path: { tenant } } }))) : []), [tenant]);

  const report = usage.data;
  const points = report ? series(report, granularity === "hour" ? 3600_000 : 86400_000) : [];
  const labels = points.map((p) =>
    new Date(p.start).toLocaleString(undefined, granularity === "hour" ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric" }),
  );
  const total = points.reduce((a, p) => a + p.calls, 0);
  return (
    <>
      <h1 tabIndex={-1}>Dashboard</h1>
      <Messages error={usage.error || action.error || models.error} />
      {mayRead ? (
        <Section
          title="Usage"
          actions={
            <div class="row">
              <Select label="Period" name="range" options={Object.keys(RANGES)} value={range} onChange={(e) => setRange((e.currentTarget as HTMLSelectElement).value)} />
              <div class="field">
                <label for="f-usage-model">Model</label>
                <select id="f-usage-model" value={model} onChange={(e) => setModel((e.currentTarget as HTMLSelectElement).value)}>
                  <option value="">All models</option>
                  {models.data?.map((m) => (
                    <option value={m.name}>{m.name}</option>
                  ))}
                </select>
              </div>
              <button
                type="button"
                onClick={() =>
                  void action.run(async () => {
                    const response = await rawFetch(`${tenantPath(tenant)}/usage/export?${query()}`);
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
          {report && (
            <>
              <p data-testid="total-calls">
                {total} {total === 1 ? "call" : "calls"} in the {range}.
              </p>
              <div class="charts">
                <LineChart title="Calls" labels={labels} series={[{ name: "calls", values: points.map((p) => p.calls), color: "#1f5fbf" }]} />
                <LineChart title="Errors" labels={labels} series={[{ name: "errors", values: points.map((p) => p.errors), color: "#b3261e" }]} />
                <LineChart
                  title="Latency"
                  unit=" ms"
                  labels={labels}
                  series={[
                    { name: "p50", values: points.map((p) => p.p50), color: "#2e7d32" },
                    { name: "p99 (slowest model)", values: points.map((p) => p.p99), color: "#b8420f" },
                  ]}
                />
                <LineChart
                  title="Cache hit rate"
                  unit="%"
                  labels={labels}
                  series={[{ name: "hit rate", values: points.map((p) => (p.calls ? Math.round((p.cacheHits / p.calls) * 100) : null)), color: "#6a1b9a" }]}
                />
              </div>
            </>
          )}
        </Section>
      ) : (
        <p>Your role does not read usage.</p>
      )}
      <Quotas report={report ?? null} />
    </>
  );
}

function Quotas({ report }: { report: Report | null }) {
  const s = useSession();
  const tenant = s.tenant!;
  // Without usage the tenant's own limits still show.
  const info = useLoad(async () => must(await api.GET("/v1/tenants/{tenant}", { params: { path: { tenant } } })), [tenant]);
  const quota = report?.quota;
  return (
    <Section title="Quotas">
      <Messages error={info.error} />
      {quota && (
        <>
          <Meter label="Models" used={quota.models.used} limit={quota.models.limit} />
          <Meter label="Storage" used={quota.storage_bytes.used} limit={quota.storage_bytes.limit} format={bytes} />
        </>
      )}
      {info.data && (
        <p>
          Rate limit {info.data.rate_limit_per_second} calls/s (burst {info.data.rate_limit_burst}); at most {info.data.max_models} models and{" "}
          {bytes(info.data.max_storage_bytes)} stored; tenant {info.data.status}.
        </p>
      )}
    </Section>
  );
}
