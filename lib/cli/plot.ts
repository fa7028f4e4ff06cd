/** A dependency-free SVG line chart with several panels, for `nysact train`'s curves. */

export interface Series {
  label: string;
  color: string;
  /** [x, y] points; `band` (optional) gives [x, lo, hi] for a shaded spread. */
  points: [number, number][];
  band?: [number, number, number][];
}

export interface Panel {
  title: string;
  xLabel: string;
  yFormat: (v: number) => string;
  series: Series[];
  /** Clamp of the y range (e.g. [0, 1] for accuracies). */
  yClamp?: [number, number];
}

function escapeXml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c] as string);
}

function niceTicks(lo: number, hi: number, count: number): number[] {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Renders panels side by side with a shared legend under them. */
export function renderSvg(title: string, subtitle: string, panels: Panel[]): string {
  const pw = 340;
  const ph = 220;
  const gap = 80;
  const left0 = 64;
  const top = 78;
  const W = left0 + panels.length * (pw + gap) - gap + 30;
  const H = top + ph + 90;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(`<text x="${W / 2}" y="42" text-anchor="middle" fill="#555">${escapeXml(subtitle)}</text>`);
  panels.forEach((panel, p) => {
    const left = left0 + p * (pw + gap);
    const all = panel.series.flatMap((s) => [...s.points.map((pt) => pt[1]), ...(s.band ?? []).flatMap((b) => [b[1], b[2]])]);
    const xs = panel.series.flatMap((s) => s.points.map((pt) => pt[0]));
    const xMin = Math.min(...xs, 0);
    const xMax = Math.max(...xs, 1);
    let yLo = Math.min(...all);
    let yHi = Math.max(...all);
    const pad = (yHi - yLo) * 0.08 || 0.05;
    yLo -= pad;
    yHi += pad;
    if (panel.yClamp) {
      yLo = Math.max(panel.yClamp[0], yLo);
      yHi = Math.min(panel.yClamp[1], yHi);
    }
    const sx = (x: number) => left + ((x - xMin) / (xMax - xMin || 1)) * pw;
    const sy = (y: number) => top + ph - ((y - yLo) / (yHi - yLo || 1)) * ph;
    out.push(`<text x="${left + pw / 2}" y="${top - 8}" text-anchor="middle" font-weight="bold">${escapeXml(panel.title)}</text>`);
    out.push(`<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
    for (const t of niceTicks(yLo, yHi, 5)) {
      if (t < yLo || t > yHi) continue;
      const y = sy(t).toFixed(1);
      out.push(`<line x1="${left}" x2="${left + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
      out.push(`<text x="${left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" fill="#444">${escapeXml(panel.yFormat(t))}</text>`);
    }
    for (const t of niceTicks(xMin, xMax, 6)) {
      const x = sx(t).toFixed(1);
      out.push(`<line x1="${x}" x2="${x}" y1="${top + ph}" y2="${top + ph + 4}" stroke="#888"/>`);
      out.push(`<text x="${x}" y="${top + ph + 17}" text-anchor="middle" fill="#444">${t}</text>`);
    }
    out.push(`<text x="${left + pw / 2}" y="${top + ph + 36}" text-anchor="middle" fill="#444">${escapeXml(panel.xLabel)}</text>`);
    for (const s of panel.series) {
      if (s.band && s.band.length > 1) {
        const upper = s.band.map((b) => `${sx(b[0]).toFixed(1)},${sy(b[2]).toFixed(1)}`);
        const lower = s.band.map((b) => `${sx(b[0]).toFixed(1)},${sy(b[1]).toFixed(1)}`).reverse();
        out.push(`<polygon points="${[...upper, ...lower].join(' ')}" fill="${s.color}" fill-opacity="0.15" stroke="none"/>`);
      }
      const d = s.points.map((pt) => `${sx(pt[0]).toFixed(1)},${sy(pt[1]).toFixed(1)}`).join(' ');
      out.push(`<polyline points="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
      if (s.points.length <= 40) {
        for (const pt of s.points) out.push(`<circle cx="${sx(pt[0]).toFixed(1)}" cy="${sy(pt[1]).toFixed(1)}" r="2.5" fill="${s.color}"/>`);
      }
    }
  });
  const legend = panels[0]?.series ?? [];
  let x = left0;
  legend.forEach((s) => {
    const y = H - 18;
    out.push(`<line x1="${x}" x2="${x + 24}" y1="${y}" y2="${y}" stroke="${s.color}" stroke-width="3"/>`);
    out.push(`<text x="${x + 30}" y="${y}" dominant-baseline="middle">${escapeXml(s.label)}</text>`);
    x += 30 + 7 * s.label.length + 40;
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
