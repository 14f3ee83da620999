/**
 * `routed-peft generate`: sample a continuation from a checkpoint. Text output streams tokens as they are
 * generated; `--format json` prints one object with the whole sequence's ids (prompt included) and its text.
 */
import { optional, parseStrict, toChoice, toInt, toIntList, toNumber } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { ADAPTER_FLAGS, ADAPTER_USAGE, MODEL_FLAGS, MODEL_USAGE, loadCliAdapters, loadCliModel, promptIds } from './model-options.js';
import { generateStepsAsync } from '../base/generate.js';
import { UsageError } from '../errors.js';
import type { RoutingTraceEntry } from '../routing/trace.js';
import type { MultimodalModel } from '../model/multimodal-model.js';
import { expertLoad } from '../train/metrics.js';
import type { VisionEncoder } from '../vision/encoder.js';
import type { PixelImage } from '../vision/pixel-image.js';
import { VISION_FLAGS, VISION_USAGE, loadCliMultimodal, loadCliVision, readCliImage, refuseMultimodalWithoutVision } from './vision-options.js';

const usage = `Usage: routed-peft generate --model PATH [--tokenizer PATH] [--prompt TEXT | --prompt-ids 1,2,3]
                          [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
                          [--adapter DIR ... [--combine MODE] [--weights LIST] | --routed DIR [--trace]]
                          [--format text|json] [--vision DIR --routed DIR [--image PNG|SPEC]]

Generate a continuation with the frozen base model, optionally with PEFT adapters or a routed model.

Options:
${MODEL_USAGE}
${ADAPTER_USAGE}
  --trace              With --routed and --format json: add "trace", one entry per routing decision
                       and token: {layer, site, route, batch, token, experts, weights, dropped}, and
                       "routing": per layer and site, expert load, load entropy and dropped-token rate
  --prompt TEXT        Prompt text (needs a tokenizer)
  --prompt-ids LIST    Prompt token ids, comma-separated (default: BOS alone, e.g. for llama2.c models)
  --max-new-tokens N   Tokens to generate (default 64)
  --temperature T      0 is greedy; default 1
  --top-k K            Sample among the K most likely tokens
  --top-p P            Sample among the smallest set of tokens whose probability reaches P
  --seed S             Random seed (default 0), so runs repeat
  --format text|json   text streams the decoded text; json prints {"ids": [...], "text": "..."}
${VISION_USAGE}
                       (with --routed DIR: the multimodal model directory train --vision wrote)
  --image PNG|SPEC     With --vision: an image before the prompt, a PNG file of the encoder's size or
                       a generated-image spec as JSON, e.g. '{"kind":"digit","digit":3,"colour":"red"}'
                       (its tokens count toward the model's context)
`;

export const generateCommand: CliCommand = {
  name: 'generate',
  summary: 'Generate text from a checkpoint (llama2.c .bin or Hugging Face directory)',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      ...MODEL_FLAGS,
      ...ADAPTER_FLAGS,
      trace: { type: 'boolean', default: false },
      prompt: { type: 'string' },
      'prompt-ids': { type: 'string' },
      'max-new-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string', default: '1' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string', default: '0' },
      format: { type: 'string', default: 'text' },
      ...VISION_FLAGS,
      image: { type: 'string' },
    });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    const maxNewTokens = toInt('max-new-tokens', values['max-new-tokens'], { min: 0 });
    const temperature = toNumber('temperature', values.temperature, { min: 0 });
    const topK = optional(values['top-k'], (raw) => toInt('top-k', raw, { min: 1 }), undefined);
    const topP = optional(values['top-p'], (raw) => toNumber('top-p', raw, { min: 0, minExclusive: true, max: 1 }), undefined);
    const seed = toInt('seed', values.seed);
    const ids = optional(values['prompt-ids'], (raw) => toIntList('prompt-ids', raw, { min: 0 }), undefined);

    if (values.trace && format !== 'json') throw new UsageError('--trace needs --format json');
    const visionPath = values.vision;
    if (visionPath === undefined) {
      if (values.image !== undefined) throw new UsageError('--image needs --vision DIR and --routed DIR (a multimodal model directory)');
      refuseMultimodalWithoutVision(values.routed);
    } else {
      if (values.routed === undefined) throw new UsageError('--vision needs --routed DIR: the multimodal model directory `train --vision` wrote');
      if ((values.adapter ?? []).length > 0 || values.combine !== undefined || values.weights !== undefined) {
        throw new UsageError('--vision runs a multimodal model directory (--routed DIR); --adapter, --combine and --weights do not apply');
      }
    }
    const loaded = await loadCliModel(values);
    let attached: Awaited<ReturnType<typeof loadCliAdapters>> | undefined;
    let encoder: VisionEncoder | undefined;
    let multimodal: MultimodalModel | undefined;
    try {
      let image: PixelImage | undefined;
      if (visionPath === undefined) attached = await loadCliAdapters(loaded, values, context, io);
      else {
        encoder = await loadCliVision(visionPath);
        multimodal = (await loadCliMultimodal(loaded, encoder, values.routed as string, context, io)).model;
        const taskIds = values['task-id'] === undefined ? undefined : [toInt('task-id', values['task-id'], { min: 0 })];
        attached = { model: undefined, taskIds };
        if (values.image !== undefined) image = await readCliImage(values.image, encoder.config.imageSize);
      }
      const imageTokens = image === undefined ? 0 : (encoder as VisionEncoder).tokensPerImage;
      const trace: RoutingTraceEntry[] | undefined = values.trace ? [] : undefined;
      const prompt = promptIds(loaded, values.prompt, ids);
      const maxSeqLen = loaded.model.config.maxSeqLen;
      // Refuse up front what would stream up to the context limit and then fail (the last new token needs no slot).
      const used = prompt.length + imageTokens;
      if (used + Math.max(maxNewTokens - 1, 0) > maxSeqLen) {
        const what = imageTokens === 0 ? `a ${prompt.length}-token prompt` : `a ${prompt.length}-token prompt after ${imageTokens} image tokens`;
        throw new UsageError(
          `--max-new-tokens ${maxNewTokens} with ${what} exceeds the model's context of ${maxSeqLen} tokens; at most ${Math.max(maxSeqLen - used + 1, 0)} new tokens fit`,
        );
      }
      const sequence = [...prompt];
      const tokenizer = loaded.tokenizer;
      let printed = format === 'text' && tokenizer !== undefined ? tokenizer.decode(prompt) : '';
      if (format === 'text') io.stdout(tokenizer === undefined ? prompt.join(' ') : printed);
      const sampling = {
        maxNewTokens,
        temperature,
        seed,
        ...(topK === undefined ? {} : { topK }),
        ...(topP === undefined ? {} : { topP }),
      };
      const routing = { taskIds: attached.taskIds, trace };
      // async reads: every backend
      const steps =
        multimodal !== undefined
          ? multimodal.generateStepsAsync([prompt], { ...sampling, routing, ...(image === undefined ? {} : { images: [image] }) })
          : attached.model === undefined
            ? generateStepsAsync(loaded.model, [prompt], sampling)
            : attached.model.generateStepsAsync([prompt], { ...sampling, routing });
      for await (const [token] of steps) {
        if (token === undefined || token < 0) break;
        sequence.push(token);
        if (format !== 'text') continue;
        if (tokenizer === undefined) {
          io.stdout(` ${token}`);
        } else {
          // Decode the whole sequence and print what is new: pieces that merge across tokens stay right.
          const text = tokenizer.decode(sequence);
          if (text.startsWith(printed)) io.stdout(text.slice(printed.length));
          printed = text;
        }
      }
      if (format === 'json') {
        const text = tokenizer === undefined ? {} : { text: tokenizer.decode(sequence) };
        const routing = trace === undefined ? {} : { trace, routing: expertLoad(trace) };
        io.stdout(`${JSON.stringify({ ids: sequence, ...text, ...routing })}\n`);
      } else {
        io.stdout('\n');
      }
      return 0;
    } finally {
      attached?.model?.dispose();
      multimodal?.dispose();
      encoder?.dispose();
      loaded.model.dispose();
    }
  },
};
