import { api, must } from "../api/client";
import { session } from "../session";
import { BASE } from "../router";
import { Field, Messages, useAction, useSession } from "../components/ui";

// The token comes from the link the inviter handed over (#token=…: a fragment never reaches
// a server or a Referer), or is pasted.
function tokenFromLink(): string {
  return new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
}

export function AcceptInvitation() {
  const s = useSession();
  const { busy, error, notice, run } = useAction();
  const signedIn = !!s.accessToken && !!s.me?.email;

  const submit = (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const token = String(form.get("token")).trim();
    const password = form.get("password");
    void run(async () => {
      const accepted = must(
        await api.POST("/v1/invitations/accept", {
          body: signedIn ? { token } : { token, password: String(password) },
        }),
      );
      return `You joined ${accepted.tenant} as ${accepted.role}. Sign in to start.`;
    });
  };

  return (
    <main id="main" class="narrow">
      <h1 tabIndex={-1}>Accept an invitation</h1>
      <Messages error={error} notice={notice} />
      {notice ? (
        <p>
          <a href={`${BASE}/sign-in`} onClick={() => void session.signOut()}>
            Sign in
          </a>
        </p>
      ) : (
        <form onSubmit={submit}>
          <Field label="Invitation token" name="token" defaultValue={tokenFromLink()} required autoComplete="off" />
          {signedIn ? (
            <p>You accept as {s.me!.email}.</p>
          ) : (
            <Field
              label="Choose a password"
              name="password"
              type="password"
              autoComplete="new-password"
              minLength={12}
              required
              hint="At least 12 characters. If you already have an account, sign in first and come back."
            />
          )}
          <button type="submit" disabled={busy}>
            Accept
          </button>
        </form>
      )}
    </main>
  );
}
