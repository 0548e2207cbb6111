import { useState } from "preact/hooks";
import { api, itemsOf, must } from "../api/client";
import { ROLES } from "../roles";
import { invite } from "./members";
import { Confirmed, Field, Loading, Messages, Secret, Section, Select, Table, bytes, useAction, useLoad, when } from "../components/ui";

const GIB = 1024 ** 3;

export function Platform() {
  const tenants = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants", {}))), []);
  const action = useAction();
  const [invited, setInvited] = useState<string | null>(null);
  const [suspending, setSuspending] = useState<string | null>(null);

  const create = action.form(async (data) => {
    const number = (name: string) => (data.get(name) ? Number(data.get(name)) : null);
    const storage = number("max_storage_gib");
    const tenant = must(
      await api.POST("/v1/tenants", {
        body: {
          slug: String(data.get("slug")),
          name: String(data.get("name")),
          max_models: number("max_models"),
          max_storage_bytes: storage === null ? null : Math.round(storage * GIB),
          rate_limit_per_second: number("rate_limit_per_second"),
        },
      }),
    );
    tenants.reload();
    return `Tenant ${tenant.slug} created.`;
  });

  const setStatus = async (slug: string, suspend: boolean) => {
    const params = { params: { path: { tenant: slug } } };
    must(suspend ? await api.POST("/v1/tenants/{tenant}/suspend", params) : await api.POST("/v1/tenants/{tenant}/resume", params));
    tenants.reload();
    return `Tenant ${slug} ${suspend ? "suspended" : "resumed"}.`;
  };

  // Blank fields keep their values.
  const limits = action.form(async (data) => {
    const slug = String(data.get("limit_tenant"));
    const number = (name: string) => (data.get(name) ? Number(data.get(name)) : null);
    const storage = number("limit_storage_gib");
    must(
      await api.PATCH("/v1/tenants/{tenant}", {
        params: { path: { tenant: slug } },
        body: {
          max_models: number("limit_models"),
          max_storage_bytes: storage === null ? null : Math.round(storage * GIB),
          rate_limit_per_second: number("limit_rate"),
          rate_limit_burst: number("limit_burst"),
        },
      }),
    );
    tenants.reload();
    return `Limits of ${slug} changed.`;
  });

  const slugs = tenants.data?.map((t) => t.slug) ?? [];
  return (
    <>
      <h1 tabIndex={-1}>Platform</h1>
      <Messages error={action.error || tenants.error} notice={action.notice} />
      <Section title="Create a tenant">
        <form onSubmit={create} class="inline">
          <Field label="Slug" name="slug" required pattern="[a-z0-9][a-z0-9-]{1,62}" hint="2-63 of a-z, 0-9 and -." />
          <Field label="Name" name="name" required maxLength={200} />
          <Field label="Max models" name="max_models" type="number" min={0} placeholder="100" />
          <Field label="Max storage (GiB)" name="max_storage_gib" type="number" min={0} step="any" placeholder="10" />
          <Field label="Rate limit (calls/s)" name="rate_limit_per_second" type="number" min={1} placeholder="1000" />
          <button type="submit" disabled={action.busy}>
            Create tenant
          </button>
        </form>
      </Section>
      {slugs.length > 0 && (
        <Section title="Invite a member">
          <form
            class="inline"
            onSubmit={action.form(async (data) => {
              const { link, message } = await invite(String(data.get("tenant")), data);
              setInvited(link);
              return message;
            })}
          >
            <Select label="Tenant" name="tenant" options={slugs} />
            <Field label="Email" name="email" type="email" required />
            <Select label="Role" name="role" options={ROLES} />
            <button type="submit" disabled={action.busy}>
              Invite
            </button>
          </form>
          {invited && <Secret label="Send this invitation link to the invitee." value={invited} />}
        </Section>
      )}
      {slugs.length > 0 && (
        <Section title="Change limits">
          <form onSubmit={limits} class="inline">
            <Select label="Tenant" name="limit_tenant" options={slugs} />
            <Field label="Max models" name="limit_models" type="number" min={0} />
            <Field label="Max storage (GiB)" name="limit_storage_gib" type="number" min={0} step="any" />
            <Field label="Rate limit (calls/s)" name="limit_rate" type="number" min={1} />
            <Field label="Burst" name="limit_burst" type="number" min={1} />
            <button type="submit" disabled={action.busy}>
              Change limits
            </button>
          </form>
          <p class="hint">Blank fields keep their values.</p>
        </Section>
      )}
      <Section title="Tenants">
        <Loading loading={tenants.loading} />
        <Table columns={["Slug", "Name", "Status", "Max models", "Max storage", "Rate limit", "Created", "Actions"]}>
          {tenants.data?.map((t) => (
            <tr>
              <td>{t.slug}</td>
              <td>{t.name}</td>
              <td data-testid={`status-${t.slug}`}>{t.status}</td>
              <td>{t.max_models}</td>
              <td>{bytes(t.max_storage_bytes)}</td>
              <td>
                {t.rate_limit_per_second}/s (burst {t.rate_limit_burst})
              </td>
              <td>{when(t.created_at)}</td>
              <td>
                {t.status === "active" ? (
                  <button type="button" class="danger" onClick={() => setSuspending(t.slug)}>
                    Suspend {t.slug}
                  </button>
                ) : (
                  <button type="button" onClick={() => void action.run(() => setStatus(t.slug, false))}>
                    Resume {t.slug}
                  </button>
                )}
              </td>
            </tr>
          ))}
        </Table>
      </Section>
      <Confirmed
        subject={suspending}
        clear={() => setSuspending(null)}
        title="Suspend tenant"
        confirmLabel="Suspend"
        action={action}
        perform={(slug) => setStatus(slug, true)}
      >
        <p>Suspend {suspending}? Its tokens and API keys stop working until it is resumed.</p>
      </Confirmed>
    </>
  );
}
