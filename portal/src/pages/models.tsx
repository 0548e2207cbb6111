import { useState } from "preact/hooks";
import { api, itemsOf, must, tenantPath } from "../api/client";
import type { Schemas } from "../api/client";
import { uploadWithProgress } from "../upload";
import { BASE } from "../router";
import { Confirm, Confirmed, Field, Loading, Messages, Section, Select, Table, bytes, useAction, useLoad, useSession, when } from "../components/ui";

type Model = Schemas["ModelView"];
type Version = Schemas["VersionView"];

export function Models() {
  const s = useSession();
  const tenant = s.tenant!;
  const write = s.can("models_write");
  const models = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/models", { params: { path: { tenant } } }))), [tenant]);
  const action = useAction();
  const [selected, setSelected] = useState<string | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);

  const create = action.form(async (data) => {
    const model = must(
      await api.POST("/v1/tenants/{tenant}/models", {
        params: { path: { tenant } },
        body: {
          name: String(data.get("name")),
          framework: String(data.get("framework")) as Schemas["Framework"],
          description: String(data.get("description") ?? ""),
          deterministic: data.get("deterministic") === "on",
        },
      }),
    );
    models.reload();
    setSelected(model.name);
    return `Model ${model.name} created.`;
  });

  return (
    <>
      <h1 tabIndex={-1}>Models</h1>
      <Messages error={action.error || models.error} notice={action.notice} />
      {write && (
        <Section title="Create a model">
          <form onSubmit={create} class="inline">
            <Field label="Name" name="name" required pattern="[a-z0-9][a-z0-9._-]*" hint="Lower case letters, digits, dot, dash, underscore." />
            <Select label="Framework" name="framework" options={["onnx", "burn"]} />
            <Field label="Description" name="description" />
            <div class="field check">
              <input type="checkbox" id="f-deterministic" name="deterministic" />
              <label for="f-deterministic">Deterministic (results may be cached)</label>
            </div>
            <button type="submit" disabled={action.busy}>
              Create model
            </button>
          </form>
        </Section>
      )}
      <Section title="Models">
        <Loading loading={models.loading} />
        {models.data?.length === 0 && <p>No models yet.</p>}
        <Table columns={["Name", "Framework", "Latest version", "Aliases", "Actions"]}>
            {models.data?.map((m) => (
              <tr>
                <td>{m.name}</td>
                <td>{m.framework}</td>
                <td>{m.latest_version ?? "none"}</td>
                <td>
                  {Object.entries(m.aliases)
                    .map(([a, v]) => `${a} → ${v}`)
                    .join(", ") || "none"}
                </td>
                <td>
                  <div class="row">
                    <button type="button" onClick={() => setSelected(m.name)} aria-pressed={selected === m.name}>
                      Open {m.name}
                    </button>
                    {write && (
                      <button type="button" class="danger" onClick={() => setDeleting(m.name)}>
                        Delete {m.name}
                      </button>
                    )}
                  </div>
                </td>
              </tr>
            ))}
        </Table>
      </Section>
      {selected && models.data?.find((m) => m.name === selected) && (
        <ModelDetail key={selected} model={models.data.find((m) => m.name === selected)!} onChange={models.reload} />
      )}
      <Confirmed
        subject={deleting}
        clear={() => setDeleting(null)}
        title="Delete model"
        confirmLabel="Delete"
        action={action}
        perform={async (name) => {
          must(await api.DELETE("/v1/tenants/{tenant}/models/{model}", { params: { path: { tenant, model: name } } }));
          if (selected === name) setSelected(null);
          models.reload();
          return `Model ${name} deleted.`;
        }}
      >
        <p>Delete {deleting} and every version of it? Calls to it fail from now on.</p>
      </Confirmed>
    </>
  );
}

function ModelDetail({ model, onChange }: { model: Model; onChange: () => void }) {
  const s = useSession();
  const tenant = s.tenant!;
  const write = s.can("models_write");
  const params = { params: { path: { tenant, model: model.name } } };
  const versions = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/models/{model}/versions", params))), [model.name]);
  const action = useAction();
  const [progress, setProgress] = useState<number | null>(null);
  const [moving, setMoving] = useState<{ alias: string; version: number } | null>(null);

  const upload = (e: Event) => {
    e.preventDefault();
    const formEl = e.currentTarget as HTMLFormElement;
    const file = (formEl.elements.namedItem("artifact") as HTMLInputElement).files?.[0];
    if (!file) return;
    setProgress(0);
    void action.run(async () => {
      const url = `${tenantPath(tenant)}/models/${encodeURIComponent(model.name)}/versions`;
      const version = await uploadWithProgress<Version>(url, file, "application/octet-stream", setProgress).finally(() =>
        setProgress(null),
      );
      formEl.reset();
      versions.reload();
      onChange();
      return `Version ${version.version} of ${model.name} uploaded.`;
    });
  };

  /** A change to the model's versions or aliases: both lists are read again after it. */
  const change = (message: string, call: () => Promise<{ data?: unknown; error?: unknown; response: Response }>) =>
    action.run(async () => {
      must(await call());
      versions.reload();
      onChange();
      return message;
    });

  const setAlias = (alias: string, version: number) =>
    change(`${alias} now points at version ${version}.`, () =>
      api.PUT("/v1/tenants/{tenant}/models/{model}/aliases/{alias}", { params: { path: { tenant, model: model.name, alias } }, body: { version } }),
    );

  return (
    <Section title={`Model ${model.name}`}>
      <Messages error={action.error || versions.error} notice={action.notice} />
      <p>
        {model.description || "No description."} Framework {model.framework}
        {model.deterministic ? ", deterministic" : ""}.{" "}
        {s.can("inference_run") && <a href={`${BASE}/playground?model=${encodeURIComponent(model.name)}`}>Try it in the playground</a>}
      </p>
      {write && (
        <form onSubmit={upload} class="inline">
          <div class="field">
            <label for="f-artifact">Artifact ({model.framework === "onnx" ? ".onnx" : "burnpack"})</label>
            <input id="f-artifact" name="artifact" type="file" required />
          </div>
          <button type="submit" disabled={action.busy}>
            Upload version
          </button>
          {progress !== null && (
            <div class="field">
              <label for="upload-progress">Upload progress</label>
              <progress id="upload-progress" max={1} value={progress}>
                {Math.round(progress * 100)}%
              </progress>
            </div>
          )}
        </form>
      )}
      <Loading loading={versions.loading} />
      <Table columns={["Version", "Size", "SHA-256", "Signature", "Aliases", "Uploaded", write && "Actions"]}>
          {versions.data?.map((v) => (
            <tr>
              <td>{v.version}</td>
              <td>{bytes(v.size_bytes)}</td>
              <td>
                <code title={v.sha256}>{v.sha256.slice(0, 12)}…</code>
              </td>
              <td>
                <Signature version={v} />
              </td>
              <td>{v.aliases.join(", ") || "none"}</td>
              <td>{when(v.created_at)}</td>
              {write && (
                <td>
                  <div class="row">
                    {!v.aliases.includes("production") && (
                      <button type="button" onClick={() => setMoving({ alias: "production", version: v.version })}>
                        Make version {v.version} production
                      </button>
                    )}
                    {v.aliases.map((alias) => (
                      <button type="button" onClick={() => void change(`Alias ${alias} removed.`, () => api.DELETE("/v1/tenants/{tenant}/models/{model}/aliases/{alias}", { params: { path: { tenant, model: model.name, alias } } }))}>
                        Remove alias {alias}
                      </button>
                    ))}
                    {v.aliases.length === 0 && (
                      <button
                        type="button"
                        class="danger"
                        onClick={() =>
                          void change(`Version ${v.version} deleted.`, () =>
                            api.DELETE("/v1/tenants/{tenant}/models/{model}/versions/{version}", { params: { path: { tenant, model: model.name, version: String(v.version) } } }),
                          )
                        }
                      >
                        Delete version {v.version}
                      </button>
                    )}
                  </div>
                </td>
              )}
            </tr>
          ))}
      </Table>
      <Confirm
        open={!!moving}
        title="Move the production alias"
        confirmLabel="Move production"
        onCancel={() => setMoving(null)}
        onConfirm={() => {
          const m = moving!;
          setMoving(null);
          void setAlias(m.alias, m.version);
        }}
      >
        <p>
          Point production of {model.name} at version {moving?.version}
          {model.aliases.production !== undefined ? ` (now ${model.aliases.production})` : ""}? Calls to production are served by it
          at once.
        </p>
      </Confirm>
    </Section>
  );
}

type Tensor = { name: string; datatype: string; shape: number[] };

function Signature({ version }: { version: Version }) {
  const signature = version.signature as { inputs?: Tensor[]; outputs?: Tensor[] } | null | undefined;
  const metadata = Object.entries((version.metadata ?? {}) as Record<string, unknown>);
  if (!signature && metadata.length === 0 && !version.burn) return <>none</>;
  const line = (t: Tensor) => `${t.name}: ${t.datatype}[${t.shape.join(", ")}]`;
  return (
    <details>
      <summary>Show</summary>
      {signature?.inputs && <p>Inputs: {signature.inputs.map(line).join("; ")}</p>}
      {signature?.outputs && <p>Outputs: {signature.outputs.map(line).join("; ")}</p>}
      {version.burn && <pre>{JSON.stringify(version.burn, null, 2)}</pre>}
      {metadata.length > 0 && <pre>{JSON.stringify(version.metadata, null, 2)}</pre>}
    </details>
  );
}
