import { useEffect, useState } from "preact/hooks";
import { api, describe, must, rawFetch, tenantPath } from "../api/client";
import type { Schemas } from "../api/client";
import { saveResponse } from "../download";
import { Field, Loading, Messages, Section, Select, Table, useAction, useSession, when } from "../components/ui";

type Event = Schemas["ChainedEvent"];
type Filters = Record<string, string>;

const FILTERS = ["action", "actor_type", "outcome", "resource_type", "from", "to"] as const;

/** The filters that are set, dates as RFC 3339. */
function query(filters: Filters): Filters {
  return Object.fromEntries(
    Object.entries(filters)
      .filter(([, v]) => v !== "")
      .map(([k, v]) => [k, k === "from" || k === "to" ? new Date(v).toISOString() : v]),
  );
}

export function Audit() {
  const s = useSession();
  const tenant = s.tenant!;
  const exportable = s.can("audit_export");
  const [filters, setFilters] = useState<Filters>({});
  const [events, setEvents] = useState<Event[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const [verdict, setVerdict] = useState<{ valid: boolean; detail: string } | null>(null);
  const action = useAction();

  const load = async (next: Filters, after: string | null) => {
    setLoading(true);
    try {
      const page = must(
        await api.GET("/v1/tenants/{tenant}/audit/events", {
          params: { path: { tenant }, query: { ...(Object.fromEntries(Object.entries(query(next))) as object), cursor: after === null ? undefined : Number(after), limit: 50 } },
        }),
      );
      setEvents((all) => (after ? [...all, ...page.items] : page.items));
      setCursor(page.next_cursor ?? null);
      action.setError(null);
    } catch (e) {
      action.setError(describe(e));
    } finally {
      setLoading(false);
    }
  };

  useEffect(() => void load({}, null), [tenant]);

  const apply = (e: SubmitEvent) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const next: Filters = {};
    FILTERS.forEach((f) => (next[f] = String(form.get(f) ?? "")));
    setFilters(next);
    setVerdict(null);
    void load(next, null);
  };

  const active = filters;

  const exportAs = (format: "csv" | "jsonl") =>
    action.run(async () => {
      const q = new URLSearchParams(query(active)).toString();
      const response = await rawFetch(`${tenantPath(tenant)}/audit/export?format=${format}${q ? `&${q}` : ""}`);
      if (!response.ok) throw new Error(`export failed: ${response.status}`);
      await saveResponse(response, `audit-${tenant}.${format}`);
      return `Exported as ${format.toUpperCase()}.`;
    });

  const verify = () =>
    action.run(async () => {
      setVerdict(null);
      const exported = await rawFetch(`${tenantPath(tenant)}/audit/export?format=jsonl`);
      if (!exported.ok) throw new Error(`export failed: ${exported.status}`);
      const response = await rawFetch("/v1/audit/verify", {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream" },
        body: await exported.blob(),
      });
      const report = await response.json();
      if (!response.ok) throw new Error(report.detail ?? `verification failed: ${response.status}`);
      setVerdict(report);
    });

  return (
    <>
      <h1 tabIndex={-1}>Audit</h1>
      <Messages error={action.error} notice={action.notice} />
      <Section title="Filter">
        <form onSubmit={apply} class="inline">
          <Field label="Action" name="action" placeholder="auth.login" />
          <Select label="Actor type" name="actor_type" options={["", "user", "api_key", "system"]} />
          <Select label="Outcome" name="outcome" options={["", "success", "failure", "denied"]} />
          <Field label="Resource type" name="resource_type" />
          <Field label="From" name="from" type="datetime-local" />
          <Field label="To" name="to" type="datetime-local" />
          <button type="submit">Apply filters</button>
        </form>
      </Section>
      <Section
        title="Chain"
        actions={
          <div class="row">
            {exportable && (
              <>
                <button type="button" onClick={() => void exportAs("csv")} disabled={action.busy}>
                  Export CSV
                </button>
                <button type="button" onClick={() => void exportAs("jsonl")} disabled={action.busy}>
                  Export JSONL
                </button>
                <button type="button" onClick={() => void verify()} disabled={action.busy}>
                  Verify chain
                </button>
              </>
            )}
          </div>
        }
      >
        {verdict && (
          <p role="status" class={verdict.valid ? "alert notice" : "alert error"} data-testid="verdict">
            {verdict.valid ? "Verified: " : "Broken: "}
            {verdict.detail}
          </p>
        )}
        <Loading loading={loading} />
        <Table columns={["Seq", "When", "Action", "Actor", "Resource", "Outcome", "Details"]}>
            {events.map((e) => (
              <tr>
                <td>{e.seq}</td>
                <td>{when(e.occurred_at)}</td>
                <td>{e.action}</td>
                <td>
                  {e.actor_type}
                  {e.actor_id ? ` ${e.actor_id.slice(0, 8)}` : ""}
                </td>
                <td>{e.resource_type ? `${e.resource_type} ${e.resource_id ?? ""}` : ""}</td>
                <td>{e.outcome}</td>
                <td>
                  <code class="details">{JSON.stringify(e.details)}</code>
                </td>
              </tr>
            ))}
        </Table>
        {cursor && (
          <button type="button" onClick={() => void load(active, cursor)}>
            Load more
          </button>
        )}
      </Section>
    </>
  );
}
