// The shell: who is signed in decides which pages are offered. A page whose permission the
// caller lacks is not linked, and says so if reached by its address; the server refuses the
// calls regardless.
import { useEffect, useState } from "preact/hooks";
import type { ComponentType } from "preact";
import { BASE, navigate, onLinkClick, useRoute } from "./router";
import { session } from "./session";
import { useSession } from "./components/ui";
import type { Permission } from "./api/client";
import { SignIn } from "./pages/sign-in";
import { AcceptInvitation } from "./pages/accept";
import { ChangePassword } from "./pages/password";
import { Dashboard } from "./pages/dashboard";
import { Members } from "./pages/members";
import { ApiKeys } from "./pages/api-keys";
import { Models } from "./pages/models";
import { Playground } from "./pages/playground";
import { Jobs } from "./pages/jobs";
import { Audit } from "./pages/audit";
import { Platform } from "./pages/platform";

type Page = { path: string; title: string; component: ComponentType; allowed: () => boolean; nav: boolean };

const tenantWith = (p: Permission) => () => !!session.tenant && session.can(p);

const PAGES: Page[] = [
  { path: "/", title: "Dashboard", component: Dashboard, allowed: () => !!session.tenant, nav: true },
  { path: "/models", title: "Models", component: Models, allowed: tenantWith("models_read"), nav: true },
  { path: "/playground", title: "Playground", component: Playground, allowed: tenantWith("inference_run"), nav: true },
  { path: "/jobs", title: "Datasets and jobs", component: Jobs, allowed: tenantWith("jobs_run"), nav: true },
  { path: "/members", title: "Members", component: Members, allowed: tenantWith("members_read"), nav: true },
  { path: "/api-keys", title: "API keys", component: ApiKeys, allowed: tenantWith("api_keys_read"), nav: true },
  { path: "/audit", title: "Audit", component: Audit, allowed: tenantWith("audit_read"), nav: true },
  { path: "/platform", title: "Platform", component: Platform, allowed: () => session.can("tenants_manage"), nav: true },
  { path: "/password", title: "Change password", component: ChangePassword, allowed: () => !!session.me?.email, nav: false },
];

const PUBLIC: Record<string, { title: string; component: ComponentType }> = {
  "/sign-in": { title: "Sign in", component: SignIn },
  "/accept": { title: "Accept an invitation", component: AcceptInvitation },
};

export function App() {
  const s = useSession();
  const path = useRoute();
  const [restoring, setRestoring] = useState(true);

  // A reload: the access token is gone, the refresh cookie may still hold a session.
  useEffect(() => {
    if (s.accessToken) return setRestoring(false);
    s.refresh().finally(() => setRestoring(false));
  }, []);

  const open = PUBLIC[path];
  useEffect(() => {
    document.title = `${(open ?? PAGES.find((p) => p.path === path))?.title ?? "Not found"} · Tessera`;
    document.querySelector<HTMLElement>("main h1")?.focus();
  }, [path, s.me]);

  // Where the user must go instead: signed out, or a platform administrator acting for no
  // tenant, who starts on the platform page.
  const redirect = restoring || open ? null : !s.accessToken || !s.me ? "/sign-in" : path === "/" && !s.tenant && s.can("tenants_manage") ? "/platform" : null;
  useEffect(() => {
    if (redirect) navigate(redirect, true);
  }, [redirect]);

  if (restoring) return <p role="status">Loading…</p>;
  if (open) return <Frame>{<open.component />}</Frame>;
  if (redirect || !s.me) return null;
  const page = PAGES.find((p) => p.path === path);
  const visible = PAGES.filter((p) => p.nav && p.allowed());
  return (
    <Frame>
      <nav aria-label="Main">
        <ul>
          {visible.map((p) => (
            <li>
              <a href={BASE + p.path} aria-current={p.path === path ? "page" : undefined}>
                {p.title}
              </a>
            </li>
          ))}
        </ul>
        <div class="who">
          <span data-testid="who">
            {s.me.email ?? "API key"}
            {s.tenant ? ` · ${s.tenant} · ${s.me.role}` : s.me.platform_admin ? " · platform administrator" : ""}
          </span>
          <a href={`${BASE}/password`}>Change password</a>
          <button
            type="button"
            onClick={async () => {
              await s.signOut();
              navigate("/sign-in");
            }}
          >
            Sign out
          </button>
        </div>
      </nav>
      <main id="main">
        {!page ? (
          <NotFound />
        ) : page.allowed() ? (
          <page.component />
        ) : (
          <>
            <h1 tabIndex={-1}>{page.title}</h1>
            <p role="alert">Your role ({s.me.role ?? "none"}) may not use this page.</p>
          </>
        )}
      </main>
    </Frame>
  );
}

function Frame({ children }: { children: preact.ComponentChildren }) {
  return (
    <div class="frame" onClick={onLinkClick}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header>
        <span class="brand">Tessera</span>
      </header>
      {children}
    </div>
  );
}

function NotFound() {
  return (
    <>
      <h1 tabIndex={-1}>Not found</h1>
      <p>
        No page here. <a href={`${BASE}/`}>Go to the dashboard</a>.
      </p>
    </>
  );
}
