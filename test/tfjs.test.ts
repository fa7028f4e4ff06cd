// nysact/tfjs on @tensorflow/tfjs's pure-JS CPU backend (always present: a devDependency).
import * as tf from '@tensorflow/tfjs';
import t from 'tap';

import { runSuite } from './tfjs-suite';

t.before(async () => {
  await tf.setBackend('cpu');
});
runSuite(t, tf, '@tensorflow/tfjs (pure JS)');
