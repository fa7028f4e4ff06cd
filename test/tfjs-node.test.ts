// nysact/tfjs on @tensorflow/tfjs-node (the TensorFlow C library), when it is installed; in this
// repository `bash scripts/setup-tfjs-node.sh` builds it offline (`.ci/run` does).
import t from 'tap';

import { runSuite } from './tfjs-suite';

let tf: typeof import('@tensorflow/tfjs') | null = null;
let why = '';
try {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  tf = require('@tensorflow/tfjs-node') as typeof import('@tensorflow/tfjs');
} catch (error) {
  why = (error as Error).message.split('\n')[0];
}

if (tf === null) {
  t.test('nysact/tfjs on @tensorflow/tfjs-node', { skip: `@tensorflow/tfjs-node is not installed or does not load (${why}); run bash scripts/setup-tfjs-node.sh` }, () => {});
} else {
  t.equal(tf.getBackend(), 'tensorflow', 'tfjs-node registers the tensorflow backend');
  runSuite(t, tf, '@tensorflow/tfjs-node');
}
