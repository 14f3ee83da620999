// Every test file runs on the backend named by ROUTED_PEFT_BACKEND (default: wasm, the fastest one installable here).
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';

const wanted = process.env.ROUTED_PEFT_BACKEND ?? 'wasm';
const backend = wanted === 'auto' ? 'wasm' : wanted;
if (tf.getBackend() !== backend) {
  const ok = await tf.setBackend(backend);
  if (!ok) throw new Error(`test setup: backend '${backend}' failed to initialise`);
  await tf.ready();
}
