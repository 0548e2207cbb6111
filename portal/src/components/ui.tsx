// Small building blocks shared by the pages: every control has a visible label, every
// message is announced (role=status / role=alert), dialogs are native <dialog>s.
import type { ComponentChildren, JSX } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { describe } from "../api/client";
import { session } from "../session";

export function useSession() {
  const [, setTick] = useState(0);
  useEffect(() => session.subscribe(() => setTick((t) => t + 1)), []);
  return session;
}

/** Loads data once, again on `reload()` and whenever `deps` change (the tenant, a filter: what
 * `load`, a new closure each render, depends on); `error` is the message to show. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[] = []) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const reload = useCallback(() => {
    setLoading(true);
    load()
      .then((value) => {
        setData(value);
        setError(null);
      })
      .catch((e) => setError(describe(e)))
      .finally(() => setLoading(false));
  }, deps);
  useEffect(reload, [reload]);
  return { data, error, loading, reload };
}

/** Runs an action, keeping its error or success message for the page to show. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const run = useCallback(async (action: () => Promise<string | void>) => {
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      const message = await action();
      if (message) setNotice(message);
      return true;
    } catch (e) {
      setError(describe(e));
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  /** A submit handler: runs `handler` with the form's data, and clears the form when it succeeds. */
  const form = useCallback(
    (handler: (data: FormData) => Promise<string | void>) => (event: Event) => {
      event.preventDefault();
      const element = event.currentTarget as HTMLFormElement;
      const data = new FormData(element);
      void run(() => handler(data)).then((ok) => ok && element.reset());
    },
    [run],
  );
  return { busy, error, notice, run, form, setError, setNotice };
}

export type Action = ReturnType<typeof useAction>;

export function Messages({ error, notice }: { error?: string | null; notice?: string | null }) {
  return (
    <>
      <div role="alert" class={error ? "alert error" : "sr-only"}>
        {error}
      </div>
      <div role="status" class={notice ? "alert notice" : "sr-only"}>
        {notice}
      </div>
    </>
  );
}

type FieldProps = JSX.InputHTMLAttributes<HTMLInputElement> & { label: string; name: string; hint?: string };

export function Field({ label, name, hint, ...input }: FieldProps) {
  const id = `f-${name}`;
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <input id={id} name={name} aria-describedby={hint ? `${id}-hint` : undefined} {...input} />
      {hint && (
        <small id={`${id}-hint`} class="hint">
          {hint}
        </small>
      )}
    </div>
  );
}

type SelectProps = JSX.SelectHTMLAttributes<HTMLSelectElement> & { label: string; name: string; options: readonly string[] };

export function Select({ label, name, options, ...select }: SelectProps) {
  const id = `f-${name}`;
  return (
    <div class="field">
      <label for={id}>{label}</label>
      <select id={id} name={name} {...select}>
        {options.map((o) => (
          <option value={o}>{o}</option>
        ))}
      </select>
    </div>
  );
}

export function Section({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return (
    <section aria-labelledby={id} class="card">
      <div class="card-head">
        <h2 id={id}>{title}</h2>
        {actions}
      </div>
      {children}
    </section>
  );
}

/** A confirmation in a modal <dialog>: focus moves in, Escape cancels. */
export function Confirm({
  open,
  title,
  children,
  confirmLabel,
  onConfirm,
  onCancel,
}: {
  open: boolean;
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) dialog.showModal();
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onCancel={onCancel} onClose={onCancel}>
      <h2 id="confirm-title">{title}</h2>
      <div>{children}</div>
      <div class="row">
        <button type="button" class="danger" onClick={onConfirm}>
          {confirmLabel}
        </button>
        <button type="button" onClick={onCancel} autoFocus>
          Cancel
        </button>
      </div>
    </dialog>
  );
}

/** A destructive action on `subject`, asked for first; `perform` answers the message to show. */
export function Confirmed<T>({
  subject,
  clear,
  title,
  confirmLabel,
  action,
  perform,
  children,
}: {
  subject: T | null;
  clear: () => void;
  title: string;
  confirmLabel: string;
  action: Action;
  perform: (subject: T) => Promise<string>;
  children: ComponentChildren;
}) {
  return (
    <Confirm
      open={subject !== null}
      title={title}
      confirmLabel={confirmLabel}
      onCancel={clear}
      onConfirm={() => {
        const chosen = subject as T;
        clear();
        void action.run(() => perform(chosen));
      }}
    >
      {children}
    </Confirm>
  );
}

/** A table with a header row of `columns`; the rows are the children. */
export function Table({ columns, children }: { columns: (string | false)[]; children: ComponentChildren }) {
  return (
    <table>
      <thead>
        <tr>
          {columns.filter((c): c is string => c !== false).map((c) => (
            <th scope="col">{c}</th>
          ))}
        </tr>
      </thead>
      <tbody>{children}</tbody>
    </table>
  );
}

/** A secret shown once, with a copy button. */
export function Secret({ label, value }: { label: string; value: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <div class="secret">
      <p>
        <strong>{label}</strong> It is shown this once only.
      </p>
      <code data-testid="secret">{value}</code>
      <button
        type="button"
        onClick={() =>
          navigator.clipboard?.writeText(value).then(
            () => setCopied(true),
            () => setCopied(false),
          )
        }
      >
        Copy
      </button>
      <span role="status">{copied ? "Copied" : ""}</span>
    </div>
  );
}

export function when(value?: string | null): string {
  return value ? new Date(value).toLocaleString() : "never";
}

export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function Loading({ loading }: { loading: boolean }) {
  return loading ? <p aria-live="polite">Loading…</p> : null;
}
