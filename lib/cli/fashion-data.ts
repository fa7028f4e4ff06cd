/**
 * Fashion-MNIST for `nysact train`: the gzip'd IDX files from a directory (the Debian package
 * `dataset-fashion-mnist` installs them in /usr/share/datasets/fashion-mnist), or the small
 * subset shipped in `data/fashion-mnist-subset` when no full copy is found.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

import { packageRoot } from '../loader.js';

export const DEFAULT_DATA_DIR = '/usr/share/datasets/fashion-mnist';

export const FILES = {
  trainImages: 'train-images-idx3-ubyte.gz',
  trainLabels: 'train-labels-idx1-ubyte.gz',
  testImages: 't10k-images-idx3-ubyte.gz',
  testLabels: 't10k-labels-idx1-ubyte.gz',
} as const;

export const CLASS_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

/** Images standardised with the training set's pixel mean and std; labels 0..9. */
export interface FashionData {
  /** Where the files came from. */
  source: string;
  /** True for the embedded subset. */
  embedded: boolean;
  trainX: Float32Array; // n × 784
  trainY: Uint8Array;
  testX: Float32Array;
  testY: Uint8Array;
  nTrain: number;
  nTest: number;
}

function readIdx(file: string, expectedMagic: number): { dims: number[]; data: Uint8Array } {
  const buf = zlib.gunzipSync(fs.readFileSync(file));
  const magic = buf.readUInt32BE(0);
  if (magic !== expectedMagic) throw new Error(`${file}: not an IDX file of the expected kind (magic 0x${magic.toString(16)})`);
  const ndim = magic & 0xff;
  const dims: number[] = [];
  for (let d = 0; d < ndim; d++) dims.push(buf.readUInt32BE(4 + 4 * d));
  const offset = 4 + 4 * ndim;
  const count = dims.reduce((a, b) => a * b, 1);
  if (buf.length < offset + count) throw new Error(`${file}: truncated (${buf.length - offset} of ${count} bytes)`);
  return { dims, data: buf.subarray(offset, offset + count) };
}

/** The files missing from `dir` (empty when all four are there). */
export function missingFiles(dir: string): string[] {
  return Object.values(FILES).filter((f) => !fs.existsSync(path.join(dir, f)));
}

export function embeddedDataDir(): string {
  return path.join(packageRoot(), 'data', 'fashion-mnist-subset');
}

/**
 * Loads the four files of `dir`. Pixels go to [0, 1] and are then standardised with one mean and
 * one std computed over the whole training file.
 */
export function loadFashionMnist(dir: string, embedded = false): FashionData {
  const trainImg = readIdx(path.join(dir, FILES.trainImages), 0x803);
  const trainLab = readIdx(path.join(dir, FILES.trainLabels), 0x801);
  const testImg = readIdx(path.join(dir, FILES.testImages), 0x803);
  const testLab = readIdx(path.join(dir, FILES.testLabels), 0x801);
  for (const [img, lab, which] of [
    [trainImg, trainLab, 'training'],
    [testImg, testLab, 'test'],
  ] as const) {
    if (img.dims[1] !== 28 || img.dims[2] !== 28) throw new Error(`${dir}: expected 28x28 ${which} images, found ${img.dims.slice(1).join('x')}`);
    if (lab.dims[0] !== img.dims[0]) throw new Error(`${dir}: ${img.dims[0]} ${which} images but ${lab.dims[0]} labels`);
  }
  let sum = 0;
  let sumSq = 0;
  for (const v of trainImg.data) {
    sum += v;
    sumSq += v * v;
  }
  const n = trainImg.data.length;
  const mean = sum / n / 255;
  const std = Math.sqrt(Math.max(sumSq / n / (255 * 255) - mean * mean, 1e-12));
  const toFloat = (bytes: Uint8Array): Float32Array => {
    const out = new Float32Array(bytes.length);
    const scale = 1 / (255 * std);
    const shift = mean / std;
    for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] * scale - shift;
    return out;
  };
  return {
    source: dir,
    embedded,
    trainX: toFloat(trainImg.data),
    trainY: Uint8Array.from(trainLab.data),
    testX: toFloat(testImg.data),
    testY: Uint8Array.from(testLab.data),
    nTrain: trainImg.dims[0],
    nTest: testImg.dims[0],
  };
}

/**
 * The dataset to train on: `dir` when given (an error if files are missing there), else the
 * Debian location, else the embedded subset (with a note for the user).
 */
export function findFashionMnist(dir: string | undefined): { data: FashionData; note: string | null } {
  if (dir !== undefined) {
    const missing = missingFiles(dir);
    if (missing.length > 0) throw new Error(`--data ${dir}: missing ${missing.join(', ')}`);
    return { data: loadFashionMnist(dir), note: null };
  }
  if (missingFiles(DEFAULT_DATA_DIR).length === 0) return { data: loadFashionMnist(DEFAULT_DATA_DIR), note: null };
  const embedded = embeddedDataDir();
  return {
    data: loadFashionMnist(embedded, true),
    note:
      `Fashion-MNIST not found in ${DEFAULT_DATA_DIR} (Debian package dataset-fashion-mnist) and no --data DIR given; ` +
      `training on the embedded subset (${path.relative(process.cwd(), embedded) || embedded}: 2000 training / 500 test images)`,
  };
}
