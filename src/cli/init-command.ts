/**
 * `routed-peft init`: create a fresh routed model (experts and routers initialised from the spec's seed)
 * as a routed-model directory next to nothing else: the base stays where it is.
 */
import { readJsonFile } from '../base/checkpoints/hf-model-dir.js';
import { checkSpecAgainstModel, parseAdaptedModelSpec } from '../compose/model-spec.js';
import { checkOutputDirectory } from '../formats/output.js';
import { saveRoutedModel } from '../io/routed-model-dir.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { UsageError } from '../errors.js';
import { parseStrict, toChoice } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { MODEL_FLAGS, MODEL_USAGE, loadCliModel } from './model-options.js';
import { formatParameterReport } from './parameter-report.js';

const usage = `Usage: routed-peft init --model PATH --spec SPEC.json --out DIR [--format text|json]

Create a routed model from a spec: adapters (experts) and routers initialised from the spec's seed,
saved as a routed-model directory (routed-peft.json, adapters/<name>/, routers.safetensors).

Options:
${MODEL_USAGE}
  --spec FILE          The spec (JSON): {"seed", "adapters": [...], "composition": {...}}; see examples/
  --out DIR            Directory to create (replaced atomically if it exists)
  --format text|json   Summary format (default text)
`;

export const initCommand: CliCommand = {
  name: 'init',
  summary: 'Create a routed model directory from a spec',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, { ...MODEL_FLAGS, spec: { type: 'string' }, out: { type: 'string' }, format: { type: 'string', default: 'text' } });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    if (values.spec === undefined) throw new UsageError('--spec is required');
    if (values.out === undefined) throw new UsageError('--out is required');
    const spec = await readJsonFile(values.spec, 'spec');
    // Before any work: a read-only or missing parent fails now, with the path.
    await checkOutputDirectory(values.out, { what: '--out' });
    const loaded = await loadCliModel(values);
    try {
      checkSpecAgainstModel(parseAdaptedModelSpec(spec), loaded.model.config);
      const model = AdaptedModel.create(loaded.model, spec, context.routers === undefined ? {} : { routers: context.routers });
      try {
        // The directory holds the variables (PEFT or native) and the routers: about their bytes.
        await checkOutputDirectory(values.out, { what: '--out', bytes: model.parameterReport().trainableBytes + (1 << 20) });
        await saveRoutedModel(values.out, model, { basePath: loaded.path });
        const report = model.parameterReport();
        io.stdout(
          format === 'json' ? `${JSON.stringify({ out: values.out, parameters: report })}\n` : `created ${values.out}\n${formatParameterReport(report)}`,
        );
      } finally {
        model.dispose();
      }
      return 0;
    } finally {
      loaded.model.dispose();
    }
  },
};
