/**
 * `nysact info`: what this installation is and what it can use here — package and native versions,
 * the binary that loaded, every backend with the exact reason any of them is unavailable, the CPU
 * (features, threads) and the GPUs the backends report.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { loadNative, packageRoot } from '../loader.js';
import { ExitCode, parseCommandLine } from './args.js';
import { cpuFacts, type CpuFacts } from './system.js';

const HELP = `Usage: nysact info [--json]

Shows the package version, the native binary that loads (a build or a prebuild), every compute
backend with whether it is usable on this machine and exactly why not, the CPU model, features
(AVX2, FMA, AVX-512, ...) and thread counts, memory, and the GPUs the backends report.

Options:
  --json      print one JSON object on stdout instead of text
  -h, --help  show this help

Exit codes: 0 when the native addon loads, 1 when it does not (the report says why), 2 bad usage.`;

/** One backend as `info` reports it: the native fields, plus any extra fields the backend adds. */
export interface InfoBackend {
  name: string;
  available: boolean;
  reason: string;
  [extra: string]: unknown;
}

/**
 * A GPU reported by a backend: its backends() entry's `device` description (the CUDA backend gives
 * name, compute capability, multiprocessors and memory in one string), or `devices: [{ name,
 * memoryBytes, ... }]` should a backend report several.
 */
export interface InfoGpu {
  backend: string;
  name: string;
  memoryBytes: number | null;
  [extra: string]: unknown;
}

/** The `nysact info --json` object. */
export interface InfoReport {
  package: { name: string; version: string; root: string };
  node: { version: string; napi: string | null; modules: string; platform: string; arch: string };
  native: {
    loaded: boolean;
    /** The .node file node-gyp-build resolves (null when none). */
    path: string | null;
    /** `prebuild`, `build` (compiled here) or `override` (NYSACT_PREBUILD). */
    origin: 'prebuild' | 'build' | 'override' | null;
    version: string | null;
    interfaceVersion: number | null;
    threads: number | null;
    error: string | null;
  };
  backends: InfoBackend[];
  cpu: CpuFacts;
  memory: { totalBytes: number; freeBytes: number };
  gpus: InfoGpu[];
}

function resolveBinary(root: string): string | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('node-gyp-build') as { resolve(dir: string): string }).resolve(root);
  } catch {
    return null;
  }
}

function originOf(root: string, file: string | null): InfoReport['native']['origin'] {
  if (file === null) return null;
  if (process.env.NYSACT_PREBUILD) return 'override';
  return path.relative(root, file).split(path.sep)[0] === 'prebuilds' ? 'prebuild' : 'build';
}

/**
 * The GPUs the backends describe (the hook for GPU details): whatever a non-CPU backend reports as
 * `device` (a description) or `devices` (objects with at least a name) is listed as is.
 */
export function gpusOf(backends: InfoBackend[]): InfoGpu[] {
  const gpus: InfoGpu[] = [];
  for (const b of backends) {
    if (b.name !== 'cpu' && typeof b.device === 'string' && b.device !== '') {
      gpus.push({ backend: b.name, name: b.device, memoryBytes: null });
    }
    const devices = b.devices;
    if (!Array.isArray(devices)) continue;
    for (const d of devices as unknown[]) {
      if (typeof d !== 'object' || d === null) continue;
      const device = d as Record<string, unknown>;
      gpus.push({
        ...device,
        backend: b.name,
        name: typeof device.name === 'string' ? device.name : 'unknown',
        memoryBytes: typeof device.memoryBytes === 'number' ? device.memoryBytes : null,
      });
    }
  }
  return gpus;
}

/** Collects the report (never throws for a missing or broken native addon: it reports it). */
export function collectInfo(): InfoReport {
  const root = packageRoot();
  let pkg: { name?: string; version?: string } = {};
  try {
    pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as typeof pkg;
  } catch {
    // reported as unknown
  }
  const file = resolveBinary(root);
  const native: InfoReport['native'] = {
    loaded: false,
    path: file,
    origin: originOf(root, file),
    version: null,
    interfaceVersion: null,
    threads: null,
    error: null,
  };
  let backends: InfoBackend[] = [];
  try {
    const binding = loadNative();
    native.loaded = true;
    native.version = binding.version;
    native.interfaceVersion = binding.interfaceVersion;
    native.threads = binding.threads();
    backends = binding.backends().map((b) => ({ ...b }) as InfoBackend);
  } catch (error) {
    native.error = error instanceof Error ? error.message : String(error);
  }
  return {
    package: { name: pkg.name ?? 'nysact', version: pkg.version ?? 'unknown', root },
    node: {
      version: process.version,
      napi: process.versions.napi ?? null,
      modules: process.versions.modules,
      platform: process.platform,
      arch: process.arch,
    },
    native,
    backends,
    cpu: cpuFacts(),
    memory: { totalBytes: os.totalmem(), freeBytes: os.freemem() },
    gpus: gpusOf(backends),
  };
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/** The human-readable report. */
export function formatInfo(r: InfoReport): string {
  const lines: string[] = [];
  const row = (label: string, value: string) => lines.push(`  ${label.padEnd(10)} ${value}`);
  lines.push(`${r.package.name} ${r.package.version}`);
  row('package', r.package.root);
  row('node', `${r.node.version}, N-API ${r.node.napi ?? 'unknown'}, ${r.node.platform}-${r.node.arch}`);
  if (r.native.loaded) {
    row('native', `${r.native.version}, interface ${r.native.interfaceVersion}, ${r.native.origin}: ${r.native.path}`);
  } else {
    row('native', 'NOT LOADED');
    lines.push(...(r.native.error ?? '').split('\n').map((l) => `    ${l}`));
  }
  lines.push('backends');
  if (r.backends.length === 0) lines.push('  (none: the native addon did not load)');
  for (const b of r.backends) {
    const extra = Object.entries(b)
      .filter(([k, v]) => !['name', 'available', 'reason', 'device', 'devices'].includes(k) && v !== '')
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    const threads = b.name === 'cpu' && r.native.threads !== null ? ` (${r.native.threads} threads)` : '';
    const status = b.available ? `available${threads}` : `unavailable: ${b.reason}`;
    const device = typeof b.device === 'string' && b.device !== '' ? [`device: ${b.device}`] : [];
    row(b.name, [status, ...device, ...extra].join('; '));
  }
  const c = r.cpu;
  lines.push('cpu');
  row('model', c.model);
  const limit = c.cgroupCpuLimit !== null ? `, cgroup limit ${c.cgroupCpuLimit} CPUs` : '';
  row('threads', `${c.logicalCpus} logical CPUs, ${c.availableParallelism} available to this process${limit}`);
  if (c.features) {
    const present = Object.keys(c.features).filter((f) => c.features?.[f]);
    const absent = Object.keys(c.features).filter((f) => !c.features?.[f]);
    row('features', present.join(' ') || '(none of those checked)');
    if (absent.length > 0) row('absent', absent.join(' '));
  } else {
    row('features', 'unknown (no /proc/cpuinfo flags)');
  }
  if (c.x86_64_v3 !== null) {
    row('target', `x86-64-v3 (AVX2/FMA, what the CPU backend is compiled for): ${c.x86_64_v3 ? 'supported' : 'NOT supported'}`);
  }
  lines.push('memory');
  row('total', `${gib(r.memory.totalBytes)} (${gib(r.memory.freeBytes)} free)`);
  lines.push('gpu');
  if (r.gpus.length === 0) {
    lines.push('  none reported by the backends');
  } else {
    for (const g of r.gpus) {
      row(g.backend, `${g.name}${g.memoryBytes !== null ? `, ${gib(g.memoryBytes)}` : ''}`);
    }
  }
  return lines.join('\n');
}

/** `nysact info`. */
export async function main(argv: string[]): Promise<number> {
  const values = parseCommandLine('info', argv, { json: { type: 'boolean' } });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return ExitCode.OK;
  }
  const report = collectInfo();
  process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatInfo(report)}\n`);
  return report.native.loaded ? ExitCode.OK : ExitCode.FAILURE;
}
