/**
 * Hugging Face tokenizer.json, run by `@huggingface/tokenizers` (a pure-JS port of the Rust crate):
 * this file only adapts it to the Tokenizer interface, finds BOS/EOS, and turns failures into
 * TokenizerError.
 *
 * BOS/EOS are added by this adapter, never by the tokenizer's post-processor: encode asks the library
 * for `add_special_tokens: false`, so `addBos`/`addEos` mean the same thing for every tokenizer kind.
 */
import { Tokenizer as HfLibraryTokenizer } from '@huggingface/tokenizers';
import { TokenizerError } from '../errors.js';
import type { FileSource } from '../formats/file-source.js';
import type { EncodeOptions, Tokenizer } from './tokenizer.js';

export interface HfTokenizerOptions {
  /** Contents of tokenizer_config.json (bos_token, eos_token, clean_up_tokenization_spaces, ...). */
  readonly config?: Readonly<Record<string, unknown>>;
  /** Overrides the BOS token (its text, e.g. `<s>`) found in the config or the post-processor. */
  readonly bosToken?: string;
  /** Overrides the EOS token (its text, e.g. `</s>`). */
  readonly eosToken?: string;
  /** Names the tokenizer.json in error messages. */
  readonly source?: string;
}

type JsonObject = Record<string, unknown>;

export class HfTokenizer implements Tokenizer {
  readonly kind = 'huggingface' as const;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;

  private readonly hf: HfLibraryTokenizer;
  private readonly source: string;
  /**
   * The library defaults `clean_up_tokenization_spaces` to true, which rewrites " ." to "." and
   * breaks decode(encode(s)) === s; we honour the config when it asks and default to false.
   */
  private readonly cleanUpSpaces: boolean;

  private constructor(hf: HfLibraryTokenizer, json: JsonObject, config: JsonObject, options: HfTokenizerOptions) {
    this.hf = hf;
    this.source = options.source ?? '<tokenizer.json>';
    this.cleanUpSpaces = config['clean_up_tokenization_spaces'] === true;
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    const template = templateSpecialTokens(json['post_processor']);
    this.bosId = this.resolveSpecial('BOS', options.bosToken ?? specialTokenText(config['bos_token']) ?? template.bos);
    this.eosId = this.resolveSpecial('EOS', options.eosToken ?? specialTokenText(config['eos_token']) ?? template.eos);
  }

  /** Builds a tokenizer from parsed tokenizer.json contents. Throws TokenizerError when the library rejects it. */
  static fromJson(json: unknown, options: HfTokenizerOptions = {}): HfTokenizer {
    const source = options.source ?? '<tokenizer.json>';
    if (!isObject(json) || !isObject(json['model'])) {
      throw new TokenizerError('tokenizer.json must be an object with a "model" object', {
        path: source,
        hint: 'Use the tokenizer.json a Hugging Face `tokenizers` Tokenizer saves, not vocab.json or tokenizer_config.json',
      });
    }
    // The library requires every top-level component key to be present (null when unused), as the
    // Rust crate always writes them; older or hand-written files may omit some.
    const complete: JsonObject = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...json,
      added_tokens: Array.isArray(json['added_tokens']) ? json['added_tokens'] : [],
    };
    const config = libraryConfig(options.config ?? {});
    let hf: HfLibraryTokenizer;
    try {
      hf = new HfLibraryTokenizer(complete, config);
    } catch (cause) {
      throw new TokenizerError(`@huggingface/tokenizers cannot build this tokenizer: ${messageOf(cause)}`, {
        path: source,
        hint: 'The file may use a component this JS port does not support',
        cause,
      });
    }
    return new HfTokenizer(hf, complete, config, { ...options, source });
  }

  /**
   * Reads `name` (default tokenizer.json) from a FileSource (a directory on disk, a URL, dropped files) and,
   * when present beside it, tokenizer_config.json (the usual home of bos_token / eos_token). Throws
   * TokenizerError when a file is missing or is not valid JSON. On disk, `loadTokenizer(path)` calls this.
   */
  static async fromSource(files: FileSource, name = 'tokenizer.json', options: Omit<HfTokenizerOptions, 'source' | 'config'> = {}): Promise<HfTokenizer> {
    const json = await readJson(files, name, true);
    const configName = name.includes('/') ? `${name.slice(0, name.lastIndexOf('/'))}/tokenizer_config.json` : 'tokenizer_config.json';
    const config = await readJson(files, configName, false);
    if (config !== undefined && !isObject(config)) {
      throw new TokenizerError('tokenizer_config.json must hold a JSON object', { path: files.path(configName) });
    }
    return HfTokenizer.fromJson(json, { ...options, source: files.path(name), ...(config === undefined ? {} : { config }) });
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: (number | undefined)[] = this.hf.encode(text, { add_special_tokens: false }).ids;
    // The library maps a token it cannot find to unk_token_id, which is undefined when there is no <unk>.
    // (A BPE model without unk_token drops unknown characters silently instead, as the Rust crate does.)
    if (ids.some((id) => id === undefined)) {
      throw new TokenizerError(`cannot encode ${JSON.stringify(text.slice(0, 40))}: a token is not in the vocabulary and there is no unk_token`, {
        path: this.source,
      });
    }
    const out = ids as number[];
    if (options.addBos === true) out.unshift(this.requireSpecial(this.bosId, 'BOS'));
    if (options.addEos === true) out.push(this.requireSpecial(this.eosId, 'EOS'));
    return out;
  }

  decode(ids: readonly number[]): string {
    for (const id of ids) this.checkId(id);
    const text = ids.filter((id) => id !== this.bosId && id !== this.eosId);
    // The library throws on an empty array rather than returning "".
    if (text.length === 0) return '';
    return this.hf.decode(text, { skip_special_tokens: false, clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  tokenText(id: number): string {
    this.checkId(id);
    return this.hf.id_to_token(id) ?? '';
  }

  private resolveSpecial(name: string, token: string | undefined): number | undefined {
    if (token === undefined) return undefined;
    const id = this.hf.token_to_id(token);
    if (id === undefined) {
      throw new TokenizerError(`${name} token ${JSON.stringify(token)} is not in the vocabulary`, {
        path: this.source,
        hint: `Fix ${name.toLowerCase()}_token in tokenizer_config.json or pass the right token text`,
      });
    }
    return id;
  }

  private requireSpecial(id: number | undefined, name: string): number {
    if (id === undefined) {
      throw new TokenizerError(`this tokenizer has no ${name} token`, {
        path: this.source,
        hint: `Add ${name.toLowerCase()}_token to tokenizer_config.json beside tokenizer.json`,
      });
    }
    return id;
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.hf.id_to_token(id) === undefined) {
      throw new TokenizerError(`token id ${id} is not in the vocabulary (size ${this.vocabSize})`, { path: this.source });
    }
  }
}

/** Reads and parses a JSON file; a missing optional file gives undefined. */
async function readJson(files: FileSource, name: string, required: boolean): Promise<unknown> {
  const path = files.path(name);
  if (!required && !(await files.exists(name))) return undefined;
  let text: string;
  try {
    text = new TextDecoder('utf-8').decode(await files.read(name));
  } catch (cause) {
    throw new TokenizerError('cannot read tokenizer file', { path, cause });
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    throw new TokenizerError(`invalid JSON: ${messageOf(cause)}`, { path, cause });
  }
}

/**
 * tokenizer_config.json may store special tokens as `{"__type": "AddedToken", "content": "<s>", ...}`;
 * the library expects plain strings (it uses `eos_token` for Unigram models), so flatten them.
 */
function libraryConfig(config: Readonly<JsonObject>): JsonObject {
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(config)) {
    if (key.endsWith('_token')) out[key] = specialTokenText(value) ?? null;
    else if (key === 'additional_special_tokens' && Array.isArray(value)) {
      out[key] = value.map(specialTokenText).filter((t): t is string => t !== undefined);
    } else out[key] = value;
  }
  return out;
}

function specialTokenText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (isObject(value) && typeof value['content'] === 'string') return value['content'];
  return undefined;
}

/**
 * BOS/EOS as the tokenizer.json's own TemplateProcessing post-processor adds them (e.g. Llama's
 * `<s> $A`): the special token before the first sequence, and the one after the last. Looks inside
 * Sequence post-processors (Llama 3 nests TemplateProcessing in one).
 */
function templateSpecialTokens(postProcessor: unknown): { bos?: string; eos?: string } {
  if (!isObject(postProcessor)) return {};
  if (postProcessor['type'] === 'Sequence' && Array.isArray(postProcessor['processors'])) {
    for (const inner of postProcessor['processors']) {
      const found = templateSpecialTokens(inner);
      if (found.bos !== undefined || found.eos !== undefined) return found;
    }
    return {};
  }
  if (postProcessor['type'] !== 'TemplateProcessing' || !Array.isArray(postProcessor['single'])) return {};
  const items: unknown[] = postProcessor['single'];
  const special = (item: unknown): string | undefined => {
    const token = isObject(item) ? item['SpecialToken'] : undefined;
    return isObject(token) && typeof token['id'] === 'string' ? token['id'] : undefined;
  };
  const isSequence = (item: unknown): boolean => isObject(item) && 'Sequence' in item;
  const first = items.findIndex(isSequence);
  const last = items.findLastIndex(isSequence);
  if (first < 0) return {};
  const bos = first > 0 ? special(items[first - 1]) : undefined;
  const eos = last + 1 < items.length ? special(items[last + 1]) : undefined;
  return { ...(bos === undefined ? {} : { bos }), ...(eos === undefined ? {} : { eos }) };
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
