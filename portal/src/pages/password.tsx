import { api, must } from "../api/client";
import { session } from "../session";
import { navigate } from "../router";
import { Field, Messages, useAction } from "../components/ui";

export function ChangePassword() {
  const { busy, error, run } = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    void run(async () => {
      must(
        await api.POST("/v1/me/password", {
          body: { current_password: String(form.get("current")), new_password: String(form.get("new")) },
        }),
      );
      // Every session ended with the change, this one included.
      session.clear();
      navigate("/sign-in");
    });
  };
  return (
    <div class="narrow">
      <h1 tabIndex={-1}>Change password</h1>
      <p>Every session of yours ends: you sign in again afterwards.</p>
      <Messages error={error} />
      <form onSubmit={submit}>
        <Field label="Current password" name="current" type="password" autoComplete="current-password" required />
        <Field label="New password" name="new" type="password" autoComplete="new-password" minLength={12} required hint="At least 12 characters." />
        <button type="submit" disabled={busy}>
          Change password
        </button>
      </form>
    </div>
  );
}
