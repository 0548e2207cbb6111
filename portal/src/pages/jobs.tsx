import { useEffect, useState } from "preact/hooks";
import { api, describe, itemsOf, must, rawFetch, tenantPath } from "../api/client";
import type { Schemas } from "../api/client";
import { uploadWithProgress } from "../upload";
import { followEvents } from "../sse";
import { saveResponse } from "../download";
import { LineChart } from "../components/chart";
import { Field, Loading, Messages, Section, Select, Table, bytes, useAction, useLoad, useSession, when } from "../components/ui";

type Dataset = Schemas["DatasetView"];
type Job = Schemas["JobView"];
type Epoch = { epoch: number; train_loss?: number; validation_loss?: number; accuracy?: number; rmse?: number };

export function Jobs() {
  const s = useSession();
  const tenant = s.tenant!;
  const path = { params: { path: { tenant } } };
  const base = tenantPath(tenant);
  const datasets = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/datasets", path))), [tenant]);
  const jobs = useLoad(async () => itemsOf(must(await api.GET("/v1/tenants/{tenant}/jobs", path))), [tenant]);
  const action = useAction();
  const [progress, setProgress] = useState<number | null>(null);
  const [watching, setWatching] = useState<string | null>(null);

  const upload = action.form(async (data) => {
    const file = data.get("csv") as File;
    const name = String(data.get("name") || file.name.replace(/\.csv$/i, ""));
    setProgress(0);
    const dataset = await uploadWithProgress<Dataset>(`${base}/datasets?name=${encodeURIComponent(name)}`, file, "text/csv", setProgress).finally(() =>
      setProgress(null),
    );
    datasets.reload();
    return `Dataset ${dataset.name} uploaded: ${dataset.rows} rows.`;
  });

  const submit = async (request: Schemas["JobRequest"]) => {
    const job = must(await api.POST("/v1/tenants/{tenant}/jobs", { ...path, body: request }));
    jobs.reload();
    setWatching(job.id);
    return `${job.kind === "train" ? "Training" : "Batch"} job ${job.id} submitted.`;
  };

  const train = action.form((data) =>
    submit({
      kind: "train",
      model: String(data.get("model")),
      architecture: "mlp",
      dataset: String(data.get("dataset")),
      target: String(data.get("target")),
      epochs: Number(data.get("epochs")),
      config: JSON.parse(String(data.get("config"))),
    }),
  );

  const batch = action.form((data) =>
    submit({ kind: "batch_infer", model: String(data.get("model")), dataset: String(data.get("dataset")), version: String(data.get("version") || "") || null }),
  );

  const names = datasets.data?.map((d) => d.id) ?? [];
  const label = (id: string) => datasets.data?.find((d) => d.id === id)?.name ?? id;
  return (
    <>
      <h1 tabIndex={-1}>Datasets and jobs</h1>
      <Messages error={action.error || datasets.error || jobs.error} notice={action.notice} />
      <Section title="Upload a dataset">
        <form onSubmit={upload} class="inline">
          <div class="field">
            <label for="f-csv">CSV file (header row, numeric values)</label>
            <input id="f-csv" name="csv" type="file" accept=".csv,text/csv" required />
          </div>
          <Field label="Name" name="name" pattern="[A-Za-z0-9._-]+" hint="Optional: the file's name by default." />
          <button type="submit" disabled={action.busy}>
            Upload dataset
          </button>
          {progress !== null && (
            <div class="field">
              <label for="dataset-progress">Upload progress</label>
              <progress id="dataset-progress" max={1} value={progress} />
            </div>
          )}
        </form>
        <Loading loading={datasets.loading} />
        <Table columns={["Name", "Columns", "Rows", "Size", "Uploaded"]}>
            {datasets.data?.map((d) => (
              <tr>
                <td>{d.name}</td>
                <td>{d.columns.join(", ")}</td>
                <td>{d.rows}</td>
                <td>{bytes(d.size_bytes)}</td>
                <td>{when(d.created_at)}</td>
              </tr>
            ))}
        </Table>
      </Section>
      {names.length > 0 && <TrainForm datasets={datasets.data!} label={label} onSubmit={train} busy={action.busy} />}
      {names.length > 0 && (
        <Section title="Run a batch inference">
          <form onSubmit={batch} class="inline">
            <Field label="Model" name="model" required />
            <Field label="Version or alias" name="version" hint="Optional: the latest version by default." />
            <Select label="Dataset" name="dataset" options={names} />
            <button type="submit" disabled={action.busy}>
              Start batch job
            </button>
          </form>
        </Section>
      )}
      <Section title="Jobs" actions={<button type="button" onClick={jobs.reload}>Refresh jobs</button>}>
        <Table columns={["Kind", "Model", "Status", "Submitted", "Actions"]}>
            {jobs.data?.map((j) => (
              <tr>
                <td>{j.kind}</td>
                <td>{String((j.spec as Record<string, unknown>).model ?? "")}</td>
                <td data-testid={`job-status-${j.id}`}>{j.status}</td>
                <td>{when(j.created_at)}</td>
                <td>
                  <button type="button" onClick={() => setWatching(j.id)} aria-pressed={watching === j.id}>
                    Watch job {j.id.slice(0, 8)}
                  </button>
                </td>
              </tr>
            ))}
        </Table>
      </Section>
      {watching && <JobWatch key={watching} id={watching} onChange={jobs.reload} />}
    </>
  );
}

function TrainForm({ datasets, label, onSubmit, busy }: { datasets: Dataset[]; label: (id: string) => string; onSubmit: (e: Event) => void; busy: boolean }) {
  const [dataset, setDataset] = useState(datasets[0]!.id);
  const columns = datasets.find((d) => d.id === dataset)?.columns ?? [];
  const [target, setTarget] = useState(columns[columns.length - 1] ?? "");
  const config = JSON.stringify({ inputs: Math.max(1, columns.length - 1), hidden: [16], outputs: 2 });
  return (
    <Section title="Train a model">
      <form onSubmit={onSubmit} class="inline">
        <Field label="Model to train" name="model" required pattern="[a-z0-9][a-z0-9._-]*" />
        <div class="field">
          <label for="f-train-dataset">Dataset</label>
          <select id="f-train-dataset" name="dataset" value={dataset} onChange={(e) => setDataset((e.currentTarget as HTMLSelectElement).value)}>
            {datasets.map((d) => (
              <option value={d.id}>{label(d.id)}</option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="f-target">Target column</label>
          <select id="f-target" name="target" value={target} onChange={(e) => setTarget((e.currentTarget as HTMLSelectElement).value)}>
            {columns.map((c) => (
              <option value={c}>{c}</option>
            ))}
          </select>
        </div>
        <Field label="Epochs" name="epochs" type="number" min={1} max={1000} defaultValue="20" />
        <Field label="MLP configuration (JSON)" name="config" defaultValue={config} key={config} />
        <button type="submit" disabled={busy}>
          Start training
        </button>
      </form>
    </Section>
  );
}

function JobWatch({ id, onChange }: { id: string; onChange: () => void }) {
  const tenant = useSession().tenant!;
  const [job, setJob] = useState<Job | null>(null);
  const [epochs, setEpochs] = useState<Epoch[]>([]);
  const [error, setError] = useState<string | null>(null);
  const action = useAction();

  const load = async () => setJob(must(await api.GET("/v1/tenants/{tenant}/jobs/{id}", { params: { path: { tenant, id } } })));

  useEffect(() => {
    const stop = new AbortController();
    void load().catch((e) => setError(describe(e)));
    followEvents(
      `${tenantPath(tenant)}/jobs/${id}/events`,
      (event) => {
        if (event.event === "progress") {
          const report = JSON.parse(event.data) as Epoch;
          // The first report (epoch 0) only says training started: no loss yet.
          if (typeof report.epoch === "number" && report.train_loss !== undefined) setEpochs((all) => [...all.filter((e) => e.epoch !== report.epoch), report]);
        } else if (event.event === "status") {
          void load();
          onChange();
        }
      },
      stop.signal,
    ).catch((e) => {
      if (!stop.signal.aborted) setError(describe(e));
    });
    return () => stop.abort();
  }, [id]);

  const download = async () => {
    const response = await rawFetch(`${tenantPath(tenant)}/jobs/${id}/output`);
    if (!response.ok) return action.setError(`download failed: ${response.status}`);
    await saveResponse(response, `job-${id}.csv`);
  };

  const finished = job && ["succeeded", "failed", "cancelled", "dead"].includes(job.status);
  const labels = epochs.map((e) => `epoch ${e.epoch}`);
  const metric = epochs.some((e) => e.accuracy !== undefined) ? "accuracy" : "rmse";
  return (
    <Section title={`Job ${id.slice(0, 8)}`}>
      <Messages error={error || action.error} notice={action.notice} />
      <p role="status" data-testid="job-status">
        Status: {job?.status ?? "loading"}
        {job?.error ? `: ${job.error}` : ""}
      </p>
      <div class="row">
        {!finished && (
          <button
            type="button"
            class="danger"
            onClick={() =>
              void action.run(async () => {
                must(await api.POST("/v1/tenants/{tenant}/jobs/{id}/cancel", { params: { path: { tenant, id } } }));
                await load();
                return "Cancellation requested.";
              })
            }
          >
            Cancel job
          </button>
        )}
        {job?.status === "succeeded" && job.kind === "batch_infer" && (
          <button type="button" onClick={() => void download()}>
            Download output
          </button>
        )}
      </div>
      {epochs.length > 0 && (
        <div class="charts">
          <LineChart
            title="Loss"
            labels={labels}
            series={[
              { name: "training loss", values: epochs.map((e) => e.train_loss ?? null), color: "#1f5fbf" },
              { name: "validation loss", values: epochs.map((e) => e.validation_loss ?? null), color: "#b8420f" },
            ]}
          />
          <LineChart title={metric === "accuracy" ? "Accuracy" : "RMSE"} labels={labels} series={[{ name: metric, values: epochs.map((e) => e[metric] ?? null), color: "#2e7d32" }]} />
        </div>
      )}
      {job?.result && <pre>{JSON.stringify(job.result, null, 2)}</pre>}
    </Section>
  );
}
