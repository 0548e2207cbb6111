// A line chart drawn as SVG: no chart library. Each series is a path; the numbers behind it
// are also in a visually hidden table, so screen readers get the data, not a picture.

export type Series = { name: string; values: (number | null)[]; color: string };

const W = 560;
const H = 180;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function nice(max: number): number {
  if (max <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  return Math.ceil(max / step) * step;
}

export function LineChart({ title, labels, series, unit = "" }: { title: string; labels: string[]; series: Series[]; unit?: string }) {
  const all = series.flatMap((s) => s.values.filter((v): v is number => v !== null && Number.isFinite(v)));
  const top = nice(Math.max(0, ...all));
  const n = Math.max(labels.length, 1);
  const x = (i: number) => PAD.left + (n === 1 ? (W - PAD.left - PAD.right) / 2 : (i * (W - PAD.left - PAD.right)) / (n - 1));
  const y = (v: number) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const id = `chart-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return (
    <figure class="chart" aria-labelledby={id}>
      <figcaption id={id}>{title}</figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${title}: line chart, data in the table below`}>
        {[0, 0.5, 1].map((f) => (
          <g>
            <line x1={PAD.left} x2={W - PAD.right} y1={y(top * f)} y2={y(top * f)} class="grid" />
            <text x={PAD.left - 6} y={y(top * f) + 4} text-anchor="end" class="axis">
              {fmt(top * f)}
              {unit}
            </text>
          </g>
        ))}
        {labels.length > 0 && (
          <>
            <text x={x(0)} y={H - 8} class="axis" text-anchor="start">
              {labels[0]}
            </text>
            <text x={x(n - 1)} y={H - 8} class="axis" text-anchor="end">
              {labels[n - 1]}
            </text>
          </>
        )}
        {series.map((s) => {
          const points = s.values
            .map((v, i) => (v === null || !Number.isFinite(v) ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`))
            .filter(Boolean);
          return (
            <g>
              <polyline points={points.join(" ")} fill="none" stroke={s.color} stroke-width="2" />
              {points.length === 1 && <circle cx={points[0]!.split(",")[0]} cy={points[0]!.split(",")[1]} r="3" fill={s.color} />}
            </g>
          );
        })}
      </svg>
      <ul class="legend" aria-hidden="true">
        {series.map((s) => (
          <li>
            <svg width="12" height="12" viewBox="0 0 12 12">
              <rect width="12" height="12" fill={s.color} />
            </svg>
            {s.name}
          </li>
        ))}
      </ul>
      <table class="sr-only">
        <caption>{title}</caption>
        <thead>
          <tr>
            <th scope="col">Time</th>
            {series.map((s) => (
              <th scope="col">{s.name}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {labels.map((label, i) => (
            <tr>
              <th scope="row">{label}</th>
              {series.map((s) => (
                <td>{s.values[i] ?? ""}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}

function fmt(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

/** Quota use as a native <meter>, labelled. */
export function Meter({ label, used, limit, format = String }: { label: string; used: number; limit: number; format?: (n: number) => string }) {
  const id = `meter-${label.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return (
    <div class="meter">
      <label for={id}>
        {label}: {format(used)} of {format(limit)}
      </label>
      <meter id={id} min={0} max={limit} value={used} high={limit * 0.9} />
    </div>
  );
}
