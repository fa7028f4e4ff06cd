/** Facts about the machine for `nysact info` and `nysact bench` (Linux /proc and /sys, os module). */
import * as fs from 'node:fs';
import * as os from 'node:os';

/** CPU features worth knowing for a float32 GEMM-bound and memory-bound workload. */
export const REPORTED_CPU_FEATURES = [
  'sse4_2',
  'avx',
  'avx2',
  'fma',
  'f16c',
  'avx512f',
  'avx512bw',
  'avx512vl',
  'avx512_vnni',
  'avx512_bf16',
  'amx_tile',
] as const;

/**
 * The flags of x86-64-v3, the target the CPU backend is compiled for (CMakeLists.txt
 * NYSACT_X86_64_V3): AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT (`abm`), MOVBE, XSAVE.
 */
export const X86_64_V3_FLAGS = ['avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'] as const;

/** What `nysact info` reports about the CPU. */
export interface CpuFacts {
  /** `model name` from /proc/cpuinfo, else os.cpus()[0].model. */
  model: string;
  /** Logical CPUs the OS reports. */
  logicalCpus: number;
  /** CPUs this process may use (affinity-aware on Node >= 18.14). */
  availableParallelism: number;
  /** CPUs worth of time the cgroup grants (cpu.max), or null when unlimited or unknown. */
  cgroupCpuLimit: number | null;
  /** Every {@link REPORTED_CPU_FEATURES} entry: present or not (null off x86 / without /proc). */
  features: Record<string, boolean> | null;
  /** Whether the CPU runs x86-64-v3 code (null when unknown). */
  x86_64_v3: boolean | null;
}

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** The CPU flags from /proc/cpuinfo (first processor), or null where there is none. */
export function cpuFlags(cpuinfo = readText('/proc/cpuinfo')): Set<string> | null {
  if (cpuinfo === null) return null;
  const line = cpuinfo.split('\n').find((l) => /^flags\s*:/.test(l));
  if (line === undefined) return null;
  return new Set(line.slice(line.indexOf(':') + 1).trim().split(/\s+/));
}

function cgroupCpuLimit(): number | null {
  const max = readText('/sys/fs/cgroup/cpu.max');
  if (max === null) return null;
  const [quota, period] = max.trim().split(/\s+/);
  if (quota === 'max' || !period) return null;
  const q = Number(quota);
  const p = Number(period);
  return Number.isFinite(q) && Number.isFinite(p) && p > 0 ? q / p : null;
}

/** Describes the CPU of this machine. */
export function cpuFacts(): CpuFacts {
  const cpuinfo = readText('/proc/cpuinfo');
  const modelLine = cpuinfo?.split('\n').find((l) => /^model name\s*:/.test(l));
  const model = modelLine ? modelLine.slice(modelLine.indexOf(':') + 1).trim() : (os.cpus()[0]?.model ?? 'unknown');
  const flags = cpuFlags(cpuinfo);
  const osWithParallelism = os as typeof os & { availableParallelism?: () => number };
  const logicalCpus = os.cpus().length;
  return {
    model,
    logicalCpus,
    availableParallelism: osWithParallelism.availableParallelism?.() ?? logicalCpus,
    cgroupCpuLimit: cgroupCpuLimit(),
    features: flags ? Object.fromEntries(REPORTED_CPU_FEATURES.map((f) => [f, flags.has(f)])) : null,
    x86_64_v3: flags && process.arch === 'x64' ? X86_64_V3_FLAGS.every((f) => flags.has(f)) : null,
  };
}
