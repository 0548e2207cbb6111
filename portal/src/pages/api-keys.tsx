import { useState } from "preact/hooks";
import { api, itemsOf, must } from "../api/client";
import type { Schemas } from "../api/client";
import { keyRoles } from "../roles";
import { Confirmed, Field, Loading, Messages, Secret, Section, Select, Table, useAction, useLoad, useSession, when } from "../components/ui";

export function ApiKeys() {
  const s = useSession();
  const tenant = s.tenant!;
  const path = { params: { path: { tenant } } };
  const manage = s.can("api_keys_manage");
  const keys = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/api-keys", path))), [tenant]);
  const action = useAction();
  const [secret, setSecret] = useState<string | null>(null);
  const [revoking, setRevoking] = useState<Schemas["ApiKeyView"] | null>(null);

  const create = action.form(async (data) => {
    const days = String(data.get("days") || "");
    const created = must(
      await api.POST("/v1/tenants/{tenant}/api-keys", {
        ...path,
        body: { name: String(data.get("name")), role: String(data.get("role")) as Schemas["ApiKeyRole"], ...(days ? { expires_in_days: Number(days) } : {}) },
      }),
    );
    setSecret(created.secret);
    keys.reload();
    return `Key ${created.name} created.`;
  });

  return (
    <>
      <h1 tabIndex={-1}>API keys</h1>
      <Messages error={action.error || keys.error} notice={action.notice} />
      {manage && (
        <Section title="Create a key">
          <form onSubmit={create} class="inline">
            <Field label="Name" name="name" required maxLength={200} />
            <Select label="Role" name="role" options={keyRoles()} />
            <Field label="Expires in days (optional)" name="days" type="number" min={1} />
            <button type="submit" disabled={action.busy}>
              Create key
            </button>
          </form>
          {secret && <Secret label="The key's secret." value={secret} />}
        </Section>
      )}
      <Section title="Keys">
        <Loading loading={keys.loading} />
        <Table columns={["Name", "Prefix", "Role", "Created by", "Last used", "Expires", "State", manage && "Actions"]}>
          {keys.data?.map((k) => (
            <tr>
              <td>{k.name}</td>
              <td>
                <code>{k.prefix}</code>
              </td>
              <td>{k.role}</td>
              <td>{k.created_by_email ?? "operator"}</td>
              <td>{when(k.last_used_at)}</td>
              <td>{k.expires_at ? when(k.expires_at) : "no expiry"}</td>
              <td>{k.revoked_at ? `revoked ${when(k.revoked_at)}` : "active"}</td>
              {manage && (
                <td>
                  {!k.revoked_at && (
                    <button type="button" class="danger" onClick={() => setRevoking(k)}>
                      Revoke {k.name}
                    </button>
                  )}
                </td>
              )}
            </tr>
          ))}
        </Table>
      </Section>
      <Confirmed
        subject={revoking}
        clear={() => setRevoking(null)}
        title="Revoke key"
        confirmLabel="Revoke"
        action={action}
        perform={async (k) => {
          must(await api.DELETE("/v1/tenants/{tenant}/api-keys/{key_id}", { params: { path: { tenant, key_id: k.id } } }));
          keys.reload();
          return `Key ${k.name} revoked.`;
        }}
      >
        <p>Revoke {revoking?.name}? Every machine using it is refused from now on.</p>
      </Confirmed>
    </>
  );
}
