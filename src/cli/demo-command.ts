/**
 * `routed-peft demo`: fine-tunes the shipped demo base model on four generated tasks with a shared LoRA,
 * routed LoRA experts and per-task LoRAs (oracle) at equal trainable budgets, serves mixed batches, and
 * reports accuracy, routing and retention (see src/demo/run-demo.ts). Runs offline.
 */
import { RoutedPeftError } from '../errors.js';
import { formatDemoReport } from '../demo/report.js';
import { runDemo } from '../demo/run-demo.js';
import { formatMultimodalReport, runMultimodalDemo } from '../demo/run-multimodal-demo.js';
import { parseStrict, toChoice, toInt } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';

const usage = `Usage: routed-peft demo [--multimodal] [--quick] [--seed N] [--out DIR] [--format text|json]

Fine-tune the small base model that ships with routed-peft (demo-model/) on four generated tasks — reverse
or rotate a string of letters, sort a string of digits ascending or descending; the task is never told to
the router — with three setups of equal trainable budget:
one shared LoRA, routed LoRA experts, and one LoRA per task chosen by the true task id (the oracle).
Then serve mixed batches through each and report exact-match accuracy per task, trainable parameters,
routing purity and task<->expert mutual information, base retention and time. Writes a routing heat map
(routing-heatmap.svg) and the summary (summary.json) to --out. Runs offline.

With --multimodal: the shipped vision encoder (demo-vision/) joins the language model LLaVA-style, and a
projector plus one shared LoRA or routed LoRA experts (routers reading each token's modality) are trained at
equal budget on image questions (count?, colour?, digit? about generated images) mixed with the text tasks;
reports accuracy per task, how image and text tokens split over the experts, and checks that both frozen
models are byte-identical after training. Writes multimodal-routing-heatmap.svg and multimodal-summary.json.

Options:
  --multimodal         The image + text demo described above (three runs; --quick: one)
  --quick              One run instead of three (seeds N, N+1, N+2) and 40 held-out prompts per task
                       instead of 100: under a minute instead of about two
  --seed N             Seed of the first run: data, adapters' init and batch order (default 0)
  --out DIR            Where the heat map and summary go (default ./demo-output)
  --format text|json   text: the table (progress on stderr); json: the summary as one JSON object
`;

export const demoCommand: CliCommand = {
  name: 'demo',
  summary: 'Shared vs routed vs per-task LoRA on four generated tasks with the shipped base model',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      quick: { type: 'boolean', default: false },
      multimodal: { type: 'boolean', default: false },
      seed: { type: 'string', default: '0' },
      out: { type: 'string', default: 'demo-output' },
      format: { type: 'string', default: 'text' },
    });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    const seed = toInt('seed', values.seed, { min: 0 });
    if (context.routers === undefined) {
      throw new RoutedPeftError('the demo needs the built-in routers', {
        hint: "Run it through bin/routed-peft.js, or pass { routers: builtinRouters() } (from 'routed-peft/routers') to main()",
      });
    }
    if (values.multimodal) {
      const multimodal = await runMultimodalDemo({
        routers: context.routers,
        seed,
        quick: values.quick,
        outDir: values.out,
        log: (line) => io.stderr(`${line}\n`),
      });
      io.stdout(format === 'json' ? `${JSON.stringify(multimodal)}\n` : formatMultimodalReport(multimodal));
      return 0;
    }
    const summary = await runDemo({
      routers: context.routers,
      seed,
      quick: values.quick,
      outDir: values.out,
      log: (line) => io.stderr(`${line}\n`),
    });
    io.stdout(format === 'json' ? `${JSON.stringify(summary)}\n` : formatDemoReport(summary));
    return 0;
  },
};
