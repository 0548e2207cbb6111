import { useState } from "preact/hooks";
import { session } from "../session";
import { navigate, BASE } from "../router";
import { Field, Messages, useAction } from "../components/ui";

type Membership = { tenant: string; role: string };

export function SignIn() {
  const { busy, error, run } = useAction();
  const [credentials, setCredentials] = useState<{ email: string; password: string } | null>(null);
  const [choices, setChoices] = useState<Membership[]>([]);
  const [platformAdmin, setPlatformAdmin] = useState(false);

  const submit = (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const email = String(form.get("email"));
    const password = String(form.get("password"));
    void run(async () => {
      const pair = await session.signIn(email, password);
      const memberships = session.me?.memberships ?? [];
      // Several tenants (or a platform administrator who belongs to some): the user picks.
      if (!pair.tenant && memberships.length > 0) {
        setCredentials({ email, password });
        setChoices(memberships);
        setPlatformAdmin(!!session.me?.platform_admin);
        return;
      }
      navigate("/");
    });
  };

  const choose = (e: Event) => {
    e.preventDefault();
    const tenant = String(new FormData(e.currentTarget as HTMLFormElement).get("tenant"));
    void run(async () => {
      if (tenant !== "") await session.signIn(credentials!.email, credentials!.password, tenant);
      setCredentials(null);
      navigate(tenant === "" ? "/platform" : "/");
    });
  };

  return (
    <main id="main" class="narrow">
      <h1 tabIndex={-1}>Sign in</h1>
      <Messages error={error} />
      {credentials ? (
        <form onSubmit={choose} aria-labelledby="choose-tenant">
          <fieldset>
            <legend id="choose-tenant">Choose the tenant to act for</legend>
            {choices.map((m, i) => (
              <div class="choice">
                <input type="radio" id={`tenant-${m.tenant}`} name="tenant" value={m.tenant} checked={i === 0} />
                <label for={`tenant-${m.tenant}`}>
                  {m.tenant} ({m.role})
                </label>
              </div>
            ))}
            {platformAdmin && (
              <div class="choice">
                <input type="radio" id="tenant-none" name="tenant" value="" />
                <label for="tenant-none">No tenant: platform administration</label>
              </div>
            )}
          </fieldset>
          <button type="submit" disabled={busy}>
            Continue
          </button>
        </form>
      ) : (
        <form onSubmit={submit}>
          <Field label="Email" name="email" type="email" autoComplete="username" required />
          <Field label="Password" name="password" type="password" autoComplete="current-password" required />
          <button type="submit" disabled={busy}>
            Sign in
          </button>
        </form>
      )}
      <p>
        Invited? <a href={`${BASE}/accept`}>Accept your invitation</a>.
      </p>
    </main>
  );
}
