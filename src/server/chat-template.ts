/**
 * Turning chat messages into prompt ids.
 *
 *  - When the model's (or tokenizer's) directory has a tokenizer_config.json with a `chat_template` (a Jinja
 *    template, as Hugging Face ships them), it is rendered by `@huggingface/jinja` with `messages`,
 *    `add_generation_prompt: true`, `bos_token` and `eos_token`. The template writes any BOS text itself, so
 *    the rendered text is encoded without adding BOS.
 *  - Otherwise the plain format: each message on its own line as `role: content`, then `assistant:` — e.g.
 *    `system: be brief\nuser: hi\nassistant:` — encoded with BOS where the model uses one (llama family, a
 *    tokenizer with a BOS token), exactly as a text completion prompt is.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { ConfigError } from '../errors.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { ServerError } from './errors.js';

export interface TemplateMessage {
  readonly role: string;
  readonly content: string;
}

export interface ChatTemplate {
  /** `jinja`: the model's chat_template; `plain`: the built-in `role: content` lines. */
  readonly kind: 'jinja' | 'plain';
  /** The prompt text for these messages, ending where the assistant's reply starts. */
  render(messages: readonly TemplateMessage[]): string;
  /** Whether to prepend BOS when encoding the rendered text. */
  readonly addBos: boolean;
}

/** The plain format: `role: content` lines, then `assistant:`. */
export function plainChatTemplate(addBos: boolean): ChatTemplate {
  return {
    kind: 'plain',
    addBos,
    render: (messages) => `${messages.map((m) => `${m.role}: ${m.content}\n`).join('')}assistant:`,
  };
}

/** A special token in tokenizer_config.json: a string or `{ content: string, ... }`. */
function tokenText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string')
    return (value as { content: string }).content;
  return '';
}

/** A Jinja chat template (tokenizer_config.json's `chat_template`, a string or a list of named templates). */
export function jinjaChatTemplate(config: Readonly<Record<string, unknown>>, source: string): ChatTemplate | undefined {
  let text: unknown = config['chat_template'];
  if (Array.isArray(text)) {
    const named = text.find(
      (t): t is { name: string; template: string } => t !== null && typeof t === 'object' && (t as { name?: unknown }).name === 'default',
    );
    text = named?.template;
  }
  if (text === undefined || text === null) return undefined;
  if (typeof text !== 'string') {
    throw new ConfigError('chat_template must be a string or a list of {name, template} with a "default" entry', {
      path: `${source}: chat_template`,
      hint: 'Fix tokenizer_config.json, or remove chat_template to use the plain format',
    });
  }
  let template: Template;
  try {
    template = new Template(text);
  } catch (cause) {
    throw new ConfigError(`chat_template is not a valid Jinja template: ${cause instanceof Error ? cause.message : String(cause)}`, {
      path: `${source}: chat_template`,
      hint: 'Fix tokenizer_config.json, or remove chat_template to use the plain format',
      cause,
    });
  }
  const bos = tokenText(config['bos_token']);
  const eos = tokenText(config['eos_token']);
  return {
    kind: 'jinja',
    addBos: false,
    render: (messages) => {
      try {
        return template.render({
          messages: messages.map((m) => ({ role: m.role, content: m.content })),
          add_generation_prompt: true,
          bos_token: bos,
          eos_token: eos,
        });
      } catch (cause) {
        throw new ServerError(`the model's chat template rejected these messages: ${cause instanceof Error ? cause.message : String(cause)}`, {
          status: 400,
          param: 'messages',
          code: 'chat_template_error',
          hint: 'Check the roles and their order the model expects (e.g. alternating user/assistant)',
          cause,
        });
      }
    },
  };
}

/**
 * The chat template for a model: the first tokenizer_config.json with a `chat_template` among `dirs`
 * (the tokenizer's directory, then the model's), else the plain format.
 */
export async function loadChatTemplate(dirs: readonly string[], tokenizer: Tokenizer | undefined, modelUsesBos: boolean): Promise<ChatTemplate> {
  for (const dir of dirs) {
    const path = join(dir, 'tokenizer_config.json');
    let raw: string;
    try {
      raw = await readFile(path, 'utf8');
    } catch {
      continue;
    }
    let config: unknown;
    try {
      config = JSON.parse(raw);
    } catch (cause) {
      throw new ConfigError('tokenizer_config.json is not valid JSON', { path, hint: 'Fix or remove the file', cause });
    }
    if (config === null || typeof config !== 'object' || Array.isArray(config)) continue;
    const template = jinjaChatTemplate(config as Record<string, unknown>, path);
    if (template !== undefined) return template;
  }
  return plainChatTemplate(modelUsesBos && tokenizer?.bosId !== undefined);
}
