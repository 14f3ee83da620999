/**
 * Zod schemas of every request body the server accepts. They follow OpenAI's field names and types; fields
 * OpenAI defines that this server cannot honour are accepted only at their neutral value (e.g.
 * `presence_penalty: 0`) and rejected otherwise, so a request is never silently served differently from
 * what it asked. Unknown fields are rejected (a typo like `max_token` is a 400 naming it).
 *
 * The extension object `routed_peft` (in completions and chat requests) asks for what OpenAI has no field
 * for: `trace` (the routing trace of routed models), `task_id` (for task routers) and `return_token_ids`.
 */
import { z } from 'zod';

/** Hard caps independent of the server's flags. */
export const SCHEMA_LIMITS = {
  /** Most choices per prompt (`n`). */
  maxChoices: 8,
  /** Most prompts in one completions request. */
  maxPrompts: 16,
  /** Most generations one request may start (prompts × n): a request holds one admission slot. */
  maxGenerations: 16,
  /** Most stop sequences (OpenAI allows 4). */
  maxStops: 4,
  /** Longest stop sequence, in characters. */
  maxStopLength: 64,
  /** Most chat messages. */
  maxMessages: 256,
  /** Most alternatives per position for completions `logprobs` (OpenAI allows 5) and chat `top_logprobs` (20). */
  maxCompletionLogprobs: 5,
  maxChatTopLogprobs: 20,
} as const;

const neutral = <T extends z.ZodType>(schema: T, ok: (value: z.output<T>) => boolean, message: string) =>
  schema
    .nullable()
    .optional()
    .refine((v) => v === undefined || v === null || ok(v as z.output<T>), { message });

const TokenIds = z.array(z.number().int().min(0)).min(1);

export const RoutedPeftExtension = z
  .object({
    /** Return the routing trace of each choice (routed models only: one entry per layer, routed point and token). */
    trace: z.boolean().optional(),
    /** Task id for task routers (routed models that route by task). */
    task_id: z.number().int().min(0).optional(),
    /** Return each choice's generated token ids and the prompt's ids. */
    return_token_ids: z.boolean().optional(),
  })
  .strict();
export type RoutedPeftExtension = z.infer<typeof RoutedPeftExtension>;

/** Fields shared by /v1/completions and /v1/chat/completions. */
const sampling = {
  model: z.string().min(1),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  /** vLLM's extension: sample among the k most likely tokens (0 or -1: all). */
  top_k: z.number().int().min(-1).nullable().optional(),
  seed: z
    .number()
    .int()
    .min(-(2 ** 53))
    .max(2 ** 53)
    .nullable()
    .optional(),
  stop: z
    .union([z.string().min(1).max(SCHEMA_LIMITS.maxStopLength), z.array(z.string().min(1).max(SCHEMA_LIMITS.maxStopLength)).max(SCHEMA_LIMITS.maxStops)])
    .nullable()
    .optional(),
  n: z.number().int().min(1).max(SCHEMA_LIMITS.maxChoices).nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().nullable().optional() }).strict().nullable().optional(),
  /** vLLM's extension: keep generating past the end-of-sequence token (for benchmarks). */
  ignore_eos: z.boolean().nullable().optional(),
  user: z.string().max(256).optional(),
  presence_penalty: neutral(z.number(), (v) => v === 0, 'presence_penalty is not supported; only 0 is accepted'),
  frequency_penalty: neutral(z.number(), (v) => v === 0, 'frequency_penalty is not supported; only 0 is accepted'),
  logit_bias: neutral(z.record(z.string(), z.number()), (v) => Object.keys(v).length === 0, 'logit_bias is not supported; send {} or leave it out'),
  routed_peft: RoutedPeftExtension.optional(),
};

export const CompletionRequest = z
  .object({
    ...sampling,
    prompt: z.union([z.string(), z.array(z.string()).min(1).max(SCHEMA_LIMITS.maxPrompts), TokenIds, z.array(TokenIds).min(1).max(SCHEMA_LIMITS.maxPrompts)]),
    max_tokens: z.number().int().min(0).nullable().optional(),
    echo: z.boolean().nullable().optional(),
    logprobs: z.number().int().min(0).max(SCHEMA_LIMITS.maxCompletionLogprobs).nullable().optional(),
    best_of: neutral(z.number().int(), (v) => v === 1, 'best_of is not supported; use n'),
    suffix: neutral(z.string(), (v) => v === '', 'suffix (insertion) is not supported'),
  })
  .strict();
export type CompletionRequest = z.infer<typeof CompletionRequest>;

const TextPart = z.object({ type: z.literal('text'), text: z.string() }).strict();

export const ChatMessage = z
  .object({
    role: z.enum(['system', 'developer', 'user', 'assistant']),
    content: z.union([z.string(), z.array(TextPart).min(1)]),
    name: z.string().max(64).optional(),
  })
  .strict();
export type ChatMessage = z.infer<typeof ChatMessage>;

export const ChatCompletionRequest = z
  .object({
    ...sampling,
    messages: z.array(ChatMessage).min(1).max(SCHEMA_LIMITS.maxMessages),
    max_tokens: z.number().int().min(0).nullable().optional(),
    max_completion_tokens: z.number().int().min(0).nullable().optional(),
    logprobs: z.boolean().nullable().optional(),
    top_logprobs: z.number().int().min(0).max(SCHEMA_LIMITS.maxChatTopLogprobs).nullable().optional(),
    response_format: neutral(z.object({ type: z.string() }).loose(), (v) => v.type === 'text', 'only response_format {"type": "text"} is supported'),
    tools: neutral(z.array(z.unknown()), (v) => v.length === 0, 'tool calling is not supported'),
    tool_choice: neutral(z.unknown(), (v) => v === 'none', 'tool calling is not supported'),
    parallel_tool_calls: z.boolean().nullable().optional(),
  })
  .strict();
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

/** A target name: what `model` names and what the adapter directory's entries are called. */
export const TargetName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, 'must be 1-128 letters, digits, "_", "." or "-", starting with a letter or digit')
  .refine((name) => name !== 'base', 'is reserved for the base model');

/** vLLM's POST /v1/load_lora_adapter body; `lora_path` names an entry of the server's adapter directory. */
export const LoadAdapterRequest = z
  .object({
    lora_name: TargetName,
    lora_path: z.string().min(1).optional(),
  })
  .strict();
export type LoadAdapterRequest = z.infer<typeof LoadAdapterRequest>;

export const UnloadAdapterRequest = z
  .object({
    lora_name: z.string().min(1),
    lora_int_id: z.number().int().optional(),
  })
  .strict();
export type UnloadAdapterRequest = z.infer<typeof UnloadAdapterRequest>;
