// A small router over the History API: every page lives under /portal/.
import { useEffect, useState } from "preact/hooks";

export const BASE = "/portal";

function current(): string {
  const path = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : "/";
  return path === "" ? "/" : path;
}

export function navigate(path: string, replace = false) {
  const url = BASE + path;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  window.dispatchEvent(new PopStateEvent("popstate"));
}

export function useRoute(): string {
  const [path, setPath] = useState(current());
  useEffect(() => {
    const update = () => setPath(current());
    window.addEventListener("popstate", update);
    return () => window.removeEventListener("popstate", update);
  }, []);
  return path;
}

/** Internal links: plain anchors (keyboard and screen readers know them) routed in place. */
export function onLinkClick(event: MouseEvent) {
  const anchor = (event.target as HTMLElement).closest("a");
  if (!anchor || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const href = anchor.getAttribute("href");
  if (!href || !href.startsWith(BASE + "/") || anchor.target || anchor.hasAttribute("download")) return;
  event.preventDefault();
  navigate(href.slice(BASE.length));
}
