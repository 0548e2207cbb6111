// Builds an input form from the model's OIP metadata (GET /v2/models/{name}: each input's
// name, datatype and shape) and shows what POST /v2/models/{name}/infer answers.
import { useState } from "preact/hooks";
import { api, describe, itemsOf, must, rawFetch } from "../api/client";
import type { Schemas } from "../api/client";
import { Loading, Messages, Section, Table, useLoad, useSession } from "../components/ui";

type Tensor = Schemas["TensorMetadata"];
type Output = { name: string; datatype: string; shape: number[]; data: unknown[] };

/** Parses "1, 2 3" or a JSON array (nested or flat) into a flat list of values. */
export function parseValues(text: string, datatype: string): unknown[] {
  const trimmed = text.trim();
  const flat: unknown[] = trimmed.startsWith("[")
    ? (JSON.parse(trimmed) as unknown[]).flat(Infinity)
    : trimmed.split(/[\s,]+/).filter((t) => t !== "");
  return flat.map((v) => {
    if (datatype === "BYTES") return String(v);
    if (datatype === "BOOL") return v === true || v === "true" || v === "1" || v === 1;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${String(v)} is not a number`);
    return n;
  });
}

/** The shape of `count` values for a declared shape whose -1 dimensions are free. */
export function concreteShape(shape: number[], count: number): number[] {
  const known = shape.filter((d) => d >= 0).reduce((a, b) => a * b, 1);
  const free = shape.filter((d) => d < 0).length;
  if (free === 0) {
    if (known !== count) throw new Error(`expected ${known} values, got ${count}`);
    return shape;
  }
  if (known === 0 || count % known !== 0) throw new Error(`${count} values do not fill shape [${shape.join(", ")}]`);
  // The first free dimension takes what is left (the batch, usually); the others are 1.
  let first = true;
  return shape.map((d) => {
    if (d >= 0) return d;
    if (first) {
      first = false;
      return count / known;
    }
    return 1;
  });
}

export function Playground() {
  const s = useSession();
  const tenant = s.tenant!;
  const initial = new URLSearchParams(location.search).get("model") ?? "";
  const [model, setModel] = useState(initial);
  const models = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/models", { params: { path: { tenant } } }))), [tenant]);
  const metadata = useLoad(
    async () => (model ? (must(await api.GET("/v2/models/{name}", { params: { path: { name: model } } })) as Schemas["ModelMetadata"]) : null),
    [model],
  );
  const [outputs, setOutputs] = useState<Output[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const infer = async (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    setError(null);
    setOutputs(null);
    setBusy(true);
    try {
      const inputs = metadata.data!.inputs.map((t: Tensor) => {
        const data = parseValues(String(form.get(`input-${t.name}`) ?? ""), t.datatype);
        return { name: t.name, datatype: t.datatype, shape: concreteShape(t.shape, data.length), data };
      });
      const response = await rawFetch(`/v2/models/${encodeURIComponent(model)}/infer`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ inputs }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(`${body.detail ?? body.error ?? response.statusText} (${body.code ?? response.status})`);
      setOutputs(body.outputs as Output[]);
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <h1 tabIndex={-1}>Playground</h1>
      <Messages error={error || models.error || metadata.error} />
      <Section title="Model">
        <div class="field">
          <label for="f-model">Model</label>
          <select id="f-model" value={model} onChange={(e) => setModel((e.currentTarget as HTMLSelectElement).value)}>
            <option value="">Choose a model</option>
            {models.data?.map((m) => (
              <option value={m.name}>{m.name}</option>
            ))}
          </select>
        </div>
      </Section>
      {model && (
        <Section title="Inputs">
          <Loading loading={metadata.loading} />
          {metadata.data && (
            <form onSubmit={infer}>
              <p>
                Platform {metadata.data.platform}, versions {metadata.data.versions.join(", ")}. Enter values separated by commas or
                spaces, or a JSON array.
              </p>
              {metadata.data.inputs.map((t) => (
                <div class="field">
                  <label for={`input-${t.name}`}>
                    {t.name} ({t.datatype}, shape [{t.shape.join(", ")}])
                  </label>
                  <textarea id={`input-${t.name}`} name={`input-${t.name}`} rows={2} required />
                </div>
              ))}
              <button type="submit" disabled={busy}>
                Run
              </button>
            </form>
          )}
        </Section>
      )}
      {outputs && (
        <Section title="Outputs">
          <Table columns={["Name", "Type", "Shape", "Values"]}>
              {outputs.map((o) => (
                <tr>
                  <td>{o.name}</td>
                  <td>{o.datatype}</td>
                  <td>[{o.shape.join(", ")}]</td>
                  <td data-testid={`output-${o.name}`}>{JSON.stringify(o.data)}</td>
                </tr>
              ))}
          </Table>
        </Section>
      )}
    </>
  );
}
