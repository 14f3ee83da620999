/**
 * Training in the page: the pasted JSONL is parsed by the library's dataset parser, tokenized and batched
 * with its batch builder, and the routed model's experts and routers take `steps` Trainer steps (AdamW,
 * warmup + cosine, clipping), with a progress bar. Training reads synchronously: wasm only.
 */
import { type AdaptedModel, type HfTokenizer, Trainer, makeBatches, parseJsonlDataset, tokenizeExamples } from '../src/browser.js';

const byId = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

export async function trainInPage(model: AdaptedModel, tokenizer: HfTokenizer): Promise<void> {
  const data = byId<HTMLTextAreaElement>('train-data').value;
  const steps = Math.max(1, Math.min(500, Number(byId<HTMLInputElement>('train-steps').value) || 20));
  const progress = byId<HTMLProgressElement>('train-progress');
  const status = byId<HTMLSpanElement>('train-status');
  const dataset = parseJsonlDataset(data, 'pasted JSONL');
  const tokenized = tokenizeExamples(dataset.examples, tokenizer, { maxLength: 64 });
  const trainer = new Trainer(model, {
    optimizer: { lr: 3e-3, routerLr: 3e-3 },
    schedule: { warmupSteps: Math.min(5, steps), totalSteps: steps },
    maxGradNorm: 1,
  });
  progress.max = steps;
  progress.value = 0;
  const start = performance.now();
  try {
    let epoch = 0;
    let step = 0;
    while (step < steps) {
      for (const batch of makeBatches(tokenized, { batchSize: 16, seed: epoch })) {
        if (step >= steps) break;
        const report = trainer.step(batch);
        step++;
        progress.value = step;
        status.textContent = `step ${step}/${steps}, loss ${report.taskLoss.toFixed(3)}, ${((performance.now() - start) / step).toFixed(0)} ms/step`;
        // Let the page paint the progress between steps.
        await new Promise((resolve) => requestAnimationFrame(() => resolve(undefined)));
      }
      epoch++;
    }
  } finally {
    trainer.dispose();
  }
}
