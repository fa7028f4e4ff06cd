/**
 * The only module that loads the native addon (STYLE.md point 8). Loading is lazy: importing the
 * package never touches the binary, the first optimizer (or {@link nativeInfo}) does.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ErrorCodes, NysActError } from './errors.js';
import type { NativeBinding } from './native.js';

/** The native interface version this JavaScript code is written against (`lib/native.ts`). */
export const NATIVE_INTERFACE_VERSION = 3;

let cached: NativeBinding | undefined;

/** The directory holding this package's `package.json` (works from `lib/` and `dist/cjs/`). */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const candidate = path.join(dir, 'package.json');
    try {
      const pkg = JSON.parse(fs.readFileSync(candidate, 'utf8')) as { name?: unknown };
      if (pkg.name === 'nysact') return dir;
    } catch {
      // not here; keep walking up
    }
    const parent = path.dirname(dir);
    if (parent === dir) return path.resolve(__dirname, '..', '..');
    dir = parent;
  }
}

function describeCause(error: unknown): string {
  if (error instanceof Error) return error.message.trim().split('\n').join('\n    ');
  return String(error);
}

function loadError(root: string, tried: string[], cause: unknown, reason: string): NysActError {
  const napi = process.versions.napi ?? 'unknown';
  const lines = [
    `Could not load the nysact native addon: ${reason}`,
    `  platform: ${process.platform}-${process.arch}, node ${process.version}, N-API ${napi}`,
    `  package root: ${root}`,
    '  tried:',
    ...tried.map((t) => `    ${t}`),
    `  underlying error:\n    ${describeCause(cause)}`,
    '  how to fix:',
    '    build it from source in the package directory with `npm run build:native`',
    '    (needs cmake, a C++17 compiler, libeigen3-dev and librandom123-dev;',
    '     on Debian/Ubuntu: apt-get install cmake g++ libeigen3-dev librandom123-dev)',
  ];
  return new NysActError(ErrorCodes.LOAD, lines.join('\n'), { cause });
}

/**
 * Runs `load` with OMP_WAIT_POLICY=passive in the environment unless the user set it or
 * GOMP_SPINCOUNT, then restores the environment. libgomp reads it once, when loading the addon
 * loads libgomp. Its default lets idle OpenMP workers spin for a while after every parallel region:
 * in a training loop those spinning threads take cores from the framework's own threads (tfjs-node's
 * TensorFlow pool) running the next forward and backward pass. Measured with `nysact train` on
 * tfjs-node (2 cores): NysAct's time per step fell from 1.15x to 1.08x SGD-momentum's, while
 * `nysact bench` (the kernels alone) is unchanged. Without effect if libgomp was already loaded.
 */
function withPassiveOpenMp<T>(load: () => T): T {
  if (process.env.OMP_WAIT_POLICY !== undefined || process.env.GOMP_SPINCOUNT !== undefined) return load();
  process.env.OMP_WAIT_POLICY = 'passive';
  try {
    return load();
  } finally {
    delete process.env.OMP_WAIT_POLICY;
  }
}

/**
 * Loads (once) and returns the native binding via `node-gyp-build`, which looks for
 * `build/Release/*.node`, `build/Debug/*.node` and `prebuilds/<platform>-<arch>/*.node`.
 *
 * @throws {NysActError} `ERR_NYSACT_LOAD` with a multi-line explanation when no compatible binary
 *   loads or its interface version is not {@link NATIVE_INTERFACE_VERSION}.
 */
export function loadNative(): NativeBinding {
  if (cached !== undefined) return cached;
  const root = packageRoot();
  const override = process.env.NYSACT_PREBUILD;
  const tried = [
    ...(override ? [`NYSACT_PREBUILD=${override} (node-gyp-build looks there instead)`] : []),
    path.join(root, 'build', 'Release', '*.node'),
    path.join(root, 'build', 'Debug', '*.node'),
    path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, '*.node'),
  ];
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nodeGypBuild = require('node-gyp-build') as { (dir: string): unknown; resolve(dir: string): string };
  let file: string;
  try {
    file = nodeGypBuild.resolve(root);
  } catch (error) {
    throw loadError(root, tried, error, 'no native build was found');
  }
  let binding: NativeBinding;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    binding = withPassiveOpenMp(() => require(file) as NativeBinding);
  } catch (error) {
    throw loadError(root, [...tried, `loaded ${file}`], error, `${file} failed to load`);
  }
  const version = (binding as { interfaceVersion?: unknown }).interfaceVersion;
  if (version !== NATIVE_INTERFACE_VERSION) {
    throw loadError(
      root,
      [...tried, `loaded ${file}`],
      new Error(`interfaceVersion is ${String(version)}, expected ${NATIVE_INTERFACE_VERSION}`),
      `${file} implements a different native interface (stale build?)`,
    );
  }
  cached = binding;
  return binding;
}
