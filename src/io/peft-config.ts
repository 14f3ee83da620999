/**
 * `adapter_config.json` of a Hugging Face PEFT LoRA adapter, as PEFT writes it (huggingface/peft
 * `tuners/lora/config.py` LoraConfig, `config.py` PeftConfig; saved by `PeftConfigMixin.save_pretrained`
 * with `json.dumps(..., indent=2, sort_keys=True)`, after `PeftModel.save_pretrained` set
 * `inference_mode = true`).
 *
 * Reading is forward compatible: PEFT adds config fields in nearly every release and readers that crash
 * on them are a classic complaint (PEFT itself drops unknown keyword arguments with a warning since
 * `PeftConfigMixin.from_peft_type`). Fields this reader does not know are ignored and reported in
 * `warnings`, one line per field, so a CLI can print them. A handful of newer fields change what the
 * adapter computes when they are set (DoRA-like variants, layer replication, …); those are refused with a
 * CheckpointError instead of being silently ignored.
 *
 * Defaults are PEFT's: r 8, lora_alpha 8, lora_dropout 0, bias "none", init_lora_weights true.
 */
import { z } from 'zod';
import { formatPath, previewValue } from '../config/parse.js';
import { CheckpointError } from '../errors.js';
import { MAX_ADAPTER_DIM } from '../adapters/limits.js';

/** Most keys a rank_pattern / alpha_pattern may hold (each is a regular expression matched per module). */
const MAX_PEFT_PATTERN_KEYS = 4096;

/** File names inside an adapter directory (peft `utils/constants.py`: CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME). */
export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';

const nonNegativeInt = z.number().int().min(0);

/** The fields this library reads. Everything else in the file is an ignored (warned-about) field. */
export const PeftLoraConfig = z.object({
  peft_type: z.literal('LORA'),
  r: z.number().int().positive().max(MAX_ADAPTER_DIM).default(8),
  lora_alpha: z.number().positive().default(8),
  lora_dropout: z.number().min(0).lt(1).default(0),
  /** Names matched against the last components of module paths, or one regex string (full match); null: PEFT's per-architecture default. */
  target_modules: z
    .union([z.array(z.string().min(1)), z.string().min(1)])
    .nullable()
    .default(null),
  fan_in_fan_out: z.boolean().default(false),
  bias: z.string().default('none'),
  use_rslora: z.boolean().default(false),
  use_dora: z.boolean().default(false),
  /** Module path or regex (matched as PEFT's `get_pattern_key`: `^(.*\.)?(key)$`) → rank. */
  rank_pattern: z
    .record(z.string(), z.number().int().positive().max(MAX_ADAPTER_DIM))
    .refine((p) => Object.keys(p).length <= MAX_PEFT_PATTERN_KEYS, `at most ${MAX_PEFT_PATTERN_KEYS} keys`)
    .nullish()
    .transform((v) => v ?? {}),
  alpha_pattern: z
    .record(z.string(), z.number().positive())
    .refine((p) => Object.keys(p).length <= MAX_PEFT_PATTERN_KEYS, `at most ${MAX_PEFT_PATTERN_KEYS} keys`)
    .nullish()
    .transform((v) => v ?? {}),
  layers_to_transform: z
    .union([nonNegativeInt, z.array(nonNegativeInt)])
    .nullable()
    .default(null),
  layers_pattern: z
    .union([z.string(), z.array(z.string())])
    .nullable()
    .default(null),
  modules_to_save: z.array(z.string()).nullable().default(null),
  base_model_name_or_path: z.string().nullable().default(null),
  revision: z.string().nullable().default(null),
  task_type: z.string().nullable().default(null),
  inference_mode: z.boolean().default(false),
  init_lora_weights: z.union([z.boolean(), z.string()]).default(true),
  /** PeftConfigMixin field (custom model classes); written by every PEFT version, irrelevant here. */
  auto_mapping: z.unknown().optional(),
});
export type PeftLoraConfig = z.infer<typeof PeftLoraConfig>;

const KNOWN_FIELDS: ReadonlySet<string> = new Set(Object.keys(PeftLoraConfig.shape));

function isSet(value: unknown): boolean {
  if (value === undefined || value === null || value === false) return false;
  if (Array.isArray(value)) return value.length > 0;
  if (typeof value === 'object') return Object.keys(value).length > 0;
  return true;
}

/**
 * Fields outside the schema that change the adapter's computation when set. Left at their defaults they
 * are ignored like any other unknown field; set, they are refused (ignoring them would give wrong outputs).
 */
const REFUSED_WHEN_SET: Readonly<Record<string, string>> = {
  layer_replication: 'layer_replication rebuilds the layer stack, so layer indices in the adapter do not match the base model',
  lora_bias: 'lora_bias adds a bias to lora_B, which routed-peft LoRA modules do not have',
  use_qalora: 'QALoRA pools the input before lora_A, which routed-peft does not implement',
  target_parameters: 'target_parameters attaches LoRA to raw parameters (e.g. MoE experts), not to linear modules',
  alora_invocation_tokens: 'activated LoRA (aLoRA) applies the adapter only after invocation tokens, which routed-peft does not implement',
  trainable_token_indices: 'trainable_token_indices trains embedding rows, which routed-peft cannot load',
};

/** init_lora_weights values whose adapters were trained against modified (residual or quantised) base weights. */
const BASE_MODIFYING_INITS = /^(pissa|olora|corda|loftq)/i;

export interface ParsedPeftConfig {
  readonly config: PeftLoraConfig;
  readonly warnings: string[];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  return previewValue(value);
}

/**
 * Validates the parsed JSON of an adapter_config.json. `file` names the file in errors and warnings.
 * Throws CheckpointError for a non-LoRA adapter, DoRA, a bias other than "none", modules_to_save, an
 * invalid known field, or a refused newer field.
 */
export function parsePeftLoraConfig(json: unknown, file: string): ParsedPeftConfig {
  if (!isRecord(json)) {
    throw new CheckpointError(`${PEFT_CONFIG_FILE} is ${describe(json)}, expected a JSON object`, { path: file });
  }
  const peftType = json['peft_type'];
  if (peftType === undefined) {
    throw new CheckpointError(`${PEFT_CONFIG_FILE} has no "peft_type"`, {
      path: file,
      hint: 'A PEFT adapter config names its method in peft_type; only LoRA adapters ("LORA") are supported',
    });
  }
  if (peftType !== 'LORA') {
    throw new CheckpointError(`${PEFT_CONFIG_FILE} describes a ${describe(peftType)} adapter, not LoRA`, {
      path: file,
      hint: 'Only LoRA adapters (peft_type "LORA") are supported',
    });
  }

  const known: Record<string, unknown> = {};
  const warnings: string[] = [];
  for (const [key, value] of Object.entries(json)) {
    if (KNOWN_FIELDS.has(key)) {
      known[key] = value;
      continue;
    }
    const refusal = REFUSED_WHEN_SET[key];
    if (refusal !== undefined && isSet(value)) {
      throw new CheckpointError(`${PEFT_CONFIG_FILE} sets ${key} = ${describe(value)}: ${refusal}`, {
        path: file,
        hint: `Only plain LoRA adapters can be loaded; save the adapter without ${key}`,
      });
    }
    warnings.push(`${file}: ignored field "${key}" (${describe(value)}): not used by routed-peft`);
  }

  const result = PeftLoraConfig.safeParse(known);
  if (!result.success) {
    const issues = result.error.issues.map((issue) => {
      const where = formatPath(issue.path);
      let value: unknown = known;
      for (const part of issue.path) value = isRecord(value) || Array.isArray(value) ? (value as Record<PropertyKey, unknown>)[part] : undefined;
      return `${where === '' ? '(root)' : where}: ${issue.message} (got ${describe(value)})`;
    });
    throw new CheckpointError(`invalid ${PEFT_CONFIG_FILE}:\n  ${issues.join('\n  ')}`, {
      path: file,
      hint: 'Fix the listed fields (PEFT LoraConfig field names and types)',
    });
  }
  const config = result.data;

  if (config.use_dora) {
    throw new CheckpointError(`${PEFT_CONFIG_FILE} sets use_dora = true: DoRA adapters are not supported`, {
      path: file,
      hint: 'DoRA adds a magnitude vector and normalises the weight; only plain LoRA adapters can be loaded',
    });
  }
  if (config.bias !== 'none') {
    throw new CheckpointError(`${PEFT_CONFIG_FILE} sets bias = ${describe(config.bias)}: trained base biases are not supported`, {
      path: file,
      hint: 'routed-peft never changes the frozen base; only adapters trained with bias "none" can be loaded',
    });
  }
  if (config.modules_to_save !== null && config.modules_to_save.length > 0) {
    throw new CheckpointError(`${PEFT_CONFIG_FILE} lists modules_to_save ${describe(config.modules_to_save)}: full copies of base modules cannot be loaded`, {
      path: file,
      hint: 'routed-peft keeps the base frozen and cannot save or load full modules; train without modules_to_save',
    });
  }
  if (typeof config.init_lora_weights === 'string' && BASE_MODIFYING_INITS.test(config.init_lora_weights)) {
    warnings.push(
      `${file}: init_lora_weights "${config.init_lora_weights}" changes the base weights during initialisation; ` +
        'unless the adapter was converted when saved, it is only correct on the residual base model saved with it',
    );
  }
  return { config, warnings };
}
