// Who is signed in. The access token lives only in this module's memory; the refresh token
// lives only in an HttpOnly cookie scoped to /v1/auth, which no script can read: a reload
// signs in again from it through POST /v1/auth/refresh.
import type { components } from "./api/schema";

type Me = components["schemas"]["MeView"];
type TokenPair = components["schemas"]["TokenPair"];

// Asks the server for the cookie mode; also the proof, for a refresh from the cookie, that
// the request comes from this origin (other origins cannot send it without a preflight).
const COOKIE_MODE = { "X-Tessera-Refresh": "cookie" } as const;

type Listener = () => void;

class Session {
  accessToken: string | null = null;
  me: Me | null = null;
  private listeners = new Set<Listener>();
  private refreshing: Promise<boolean> | null = null;
  private timer: number | undefined;

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed() {
    this.listeners.forEach((l) => l());
  }

  authorize(request: Request): Request {
    if (this.accessToken) request.headers.set("Authorization", `Bearer ${this.accessToken}`);
    return request;
  }

  /** Whether the caller holds `permission` (a name of the Permission schema). */
  can(permission: components["schemas"]["Permission"] | "usage_read"): boolean {
    return !!(this.me?.permissions as string[] | undefined)?.includes(permission);
  }

  get tenant(): string | null {
    return this.me?.tenant ?? null;
  }

  /** Signs in; answers the tokens (whose tenant is null when the user must choose one). */
  async signIn(email: string, password: string, tenant?: string): Promise<TokenPair> {
    const response = await fetch("/v1/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...COOKIE_MODE },
      body: JSON.stringify(tenant ? { email, password, tenant } : { email, password }),
      credentials: "same-origin",
    });
    const body = await response.json();
    if (!response.ok) throw Object.assign(new Error(body.detail ?? "sign-in failed"), { code: body.code });
    await this.adopt(body as TokenPair);
    return body as TokenPair;
  }

  /** A new access token from the refresh cookie; false when there is no live session. */
  refresh(): Promise<boolean> {
    this.refreshing ??= (async () => {
      try {
        const response = await fetch("/v1/auth/refresh", {
          method: "POST",
          headers: { "Content-Type": "application/json", ...COOKIE_MODE },
          body: "{}",
          credentials: "same-origin",
        });
        if (!response.ok) {
          this.clear();
          return false;
        }
        await this.adopt((await response.json()) as TokenPair);
        return true;
      } catch {
        return false;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  async signOut(): Promise<void> {
    if (this.accessToken) {
      await fetch("/v1/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.accessToken}` },
        body: "{}",
        credentials: "same-origin",
      }).catch(() => undefined);
    }
    this.clear();
  }

  clear() {
    window.clearTimeout(this.timer);
    this.accessToken = null;
    this.me = null;
    this.changed();
  }

  private async adopt(pair: TokenPair) {
    this.accessToken = pair.access_token;
    const response = await fetch("/v1/me", { headers: { Authorization: `Bearer ${pair.access_token}` } });
    this.me = response.ok ? ((await response.json()) as Me) : null;
    // Refresh a minute before the access token expires, so a page left open keeps working.
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.refresh(), Math.max(10, pair.expires_in - 60) * 1000);
    this.changed();
  }
}

export const session = new Session();
