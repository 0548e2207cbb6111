import { useState } from "preact/hooks";
import { api, itemsOf, must } from "../api/client";
import type { Role, Schemas } from "../api/client";
import { grantableRoles } from "../roles";
import { BASE } from "../router";
import { Confirmed, Field, Loading, Messages, Secret, Section, Select, Table, useAction, useLoad, useSession, when } from "../components/ui";

/** The link an invitee opens: the token in the fragment never reaches a server log. */
export function invitationLink(token: string): string {
  return `${location.origin}${BASE}/accept#token=${encodeURIComponent(token)}`;
}

/** Invites `email` to `tenant`; answers the link to hand over. */
export async function invite(tenant: string, data: FormData): Promise<{ link: string; message: string }> {
  const created = must(
    await api.POST("/v1/tenants/{tenant}/invitations", {
      params: { path: { tenant } },
      body: { email: String(data.get("email")), role: String(data.get("role")) as Role },
    }),
  );
  return { link: invitationLink(created.token), message: `Invited ${created.email} to ${tenant} as ${created.role}.` };
}

export function Members() {
  const s = useSession();
  const tenant = s.tenant!;
  const path = { params: { path: { tenant } } };
  const manage = s.can("members_manage");
  const roles = grantableRoles();
  const members = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/members", path))), [tenant]);
  const invitations = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/invitations", path))), [tenant]);
  const action = useAction();
  const [invited, setInvited] = useState<string | null>(null);
  const [removing, setRemoving] = useState<Schemas["MemberView"] | null>(null);

  const changeRole = (m: Schemas["MemberView"], role: Role) =>
    action.run(async () => {
      must(await api.PATCH("/v1/tenants/{tenant}/members/{user_id}", { params: { path: { tenant, user_id: m.user_id } }, body: { role } }));
      members.reload();
      return `${m.email} is now ${role}.`;
    });

  const revoke = (i: Schemas["InvitationView"]) =>
    action.run(async () => {
      must(await api.DELETE("/v1/tenants/{tenant}/invitations/{invitation_id}", { params: { path: { tenant, invitation_id: i.id } } }));
      invitations.reload();
      return `Invitation of ${i.email} revoked.`;
    });

  return (
    <>
      <h1 tabIndex={-1}>Members</h1>
      <Messages error={action.error || members.error || invitations.error} notice={action.notice} />
      {manage && (
        <Section title="Invite someone">
          <form
            class="inline"
            onSubmit={action.form(async (data) => {
              const { link, message } = await invite(tenant, data);
              setInvited(link);
              invitations.reload();
              return message;
            })}
          >
            <Field label="Email" name="email" type="email" required />
            <Select label="Role" name="role" options={roles} />
            <button type="submit" disabled={action.busy}>
              Invite
            </button>
          </form>
          {invited && <Secret label="Send this invitation link to the invitee." value={invited} />}
        </Section>
      )}
      <Section title="Members">
        <Loading loading={members.loading} />
        <Table columns={["Email", "Role", "Since", manage && "Actions"]}>
          {members.data?.map((m) => {
            const mayTouch = manage && roles.includes(m.role) && m.email !== s.me?.email;
            return (
              <tr>
                <td>{m.email}</td>
                <td>
                  {mayTouch ? (
                    <select aria-label={`Role of ${m.email}`} value={m.role} onChange={(e) => void changeRole(m, (e.currentTarget as HTMLSelectElement).value as Role)}>
                      {roles.map((r) => (
                        <option value={r}>{r}</option>
                      ))}
                    </select>
                  ) : (
                    m.role
                  )}
                </td>
                <td>{when(m.created_at)}</td>
                {manage && (
                  <td>
                    {mayTouch && (
                      <button type="button" class="danger" onClick={() => setRemoving(m)}>
                        Remove {m.email}
                      </button>
                    )}
                  </td>
                )}
              </tr>
            );
          })}
        </Table>
      </Section>
      <Section title="Invitations">
        <Table columns={["Email", "Role", "Expires", "State", manage && "Actions"]}>
          {invitations.data?.map((i) => (
            <tr>
              <td>{i.email}</td>
              <td>{i.role}</td>
              <td>{when(i.expires_at)}</td>
              <td>{i.accepted_at ? "accepted" : i.revoked_at ? "revoked" : "pending"}</td>
              {manage && (
                <td>
                  {!i.accepted_at && !i.revoked_at && (
                    <button type="button" onClick={() => void revoke(i)}>
                      Revoke invitation of {i.email}
                    </button>
                  )}
                </td>
              )}
            </tr>
          ))}
        </Table>
      </Section>
      <Confirmed
        subject={removing}
        clear={() => setRemoving(null)}
        title="Remove member"
        confirmLabel="Remove"
        action={action}
        perform={async (m) => {
          must(await api.DELETE("/v1/tenants/{tenant}/members/{user_id}", { params: { path: { tenant, user_id: m.user_id } } }));
          members.reload();
          return `${m.email} removed.`;
        }}
      >
        <p>
          Remove {removing?.email} from {tenant}? Their sessions lose the tenant within seconds.
        </p>
      </Confirmed>
    </>
  );
}
