/**
 * Everything the demo generates itself: the character vocabulary of the demo base model (and its
 * tokenizer.json), the pretraining text of that base (generic skills only), and the four demo tasks.
 *
 * Pretraining text teaches generic skills — echo a string after a separator, repeat a unit, continue an
 * ascending run, random words — so the base can copy and continue but knows none of the task mappings.
 * The four tasks each transform a short input, in conflicting pairs: two read letters, two read digits, and
 * within a pair the same input needs a different answer. The task id is never shown to a router; only the
 * prompt's leading marker tells a pair apart:
 *
 *   reverse  `r:kqzt=`  → `tzqk`     letters, reversed
 *   rotate   `o:kqzt=`  → `qztk`     letters, rotated left by one
 *   sort     `s:4071=`  → `0147`     digits, ascending
 *   desc     `d:4071=`  → `7410`     digits, descending
 *
 * One shared adapter has to read the marker back at every answer position to tell reverse from rotate (or
 * sort from desc); a router can instead send each kind of prompt to its own experts.
 *
 * Every generator is driven by seededRandom (mulberry32): the same seed gives the same data.
 */
import { seededRandom } from '../base/sampling.js';

export const LETTERS = 'abcdefghijklmnopqrstuvwxyz';
export const DIGITS = '0123456789';

/** Special tokens, in id order: padding (id 0, what generation pads with), BOS, EOS. */
export const DEMO_SPECIAL_TOKENS = ['<pad>', '<s>', '</s>'] as const;
export const DEMO_PAD_ID = 0;
export const DEMO_BOS_ID = 1;
export const DEMO_EOS_ID = 2;

/** One token per character, after the special tokens: 3 + 45 = 48 ids. */
export const DEMO_CHARACTERS: readonly string[] = [' ', '\n', ...LETTERS, ...DIGITS, '+', '=', ':', '|', '>', '<', '?'];

export const DEMO_VOCAB_SIZE = DEMO_SPECIAL_TOKENS.length + DEMO_CHARACTERS.length;

/**
 * A character-level tokenizer.json for @huggingface/tokenizers: a BPE model without merges (so every
 * character is its own token), no normalizer or pre-tokenizer (spaces and newlines are ordinary tokens),
 * and the Fuse decoder (tokens join with nothing in between). Special tokens are added tokens.
 */
export function demoTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  [...DEMO_SPECIAL_TOKENS, ...DEMO_CHARACTERS].forEach((token, id) => {
    vocab[token] = id;
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: DEMO_SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Fuse' },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

/** tokenizer_config.json: names the special tokens (HfTokenizer reads BOS and EOS from here). */
export function demoTokenizerConfig(): Record<string, unknown> {
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: '<s>',
    eos_token: '</s>',
    pad_token: '<pad>',
    clean_up_tokenization_spaces: false,
    model_max_length: 64,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Random helpers

export type Random = () => number;

export function randomInt(random: Random, lo: number, hi: number): number {
  return lo + Math.floor(random() * (hi - lo + 1));
}

export function randomString(random: Random, alphabet: string, minLength: number, maxLength: number): string {
  const length = randomInt(random, minLength, maxLength);
  let out = '';
  for (let i = 0; i < length; i++) out += alphabet[Math.floor(random() * alphabet.length)] as string;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Pretraining text (generic skills, none of the task mappings)

export type PretrainingKind = 'echo' | 'repeat' | 'run' | 'words';
export const PRETRAINING_KINDS: readonly PretrainingKind[] = ['echo', 'repeat', 'run', 'words'];

/** How often each kind is drawn (copying is the skill that takes longest to learn, so it is the most common). */
export const PRETRAINING_MIX: Readonly<Record<PretrainingKind, number>> = { echo: 0.4, repeat: 0.2, run: 0.2, words: 0.2 };

function drawKind(random: Random): PretrainingKind {
  let r = random();
  for (const kind of PRETRAINING_KINDS) {
    r -= PRETRAINING_MIX[kind];
    if (r < 0) return kind;
  }
  return PRETRAINING_KINDS[PRETRAINING_KINDS.length - 1] as PretrainingKind;
}

/** Separators of echo documents: every end symbol the task prompts use, so none is new to the base. */
const ECHO_SEPARATORS = ['|', '>', '<', '=', '?'] as const;

/** One pretraining document of the given kind (or of a kind drawn from PRETRAINING_MIX). */
export function pretrainingDocument(random: Random, kind?: PretrainingKind): string {
  const chosen = kind ?? drawKind(random);
  const mixed = LETTERS + DIGITS;
  switch (chosen) {
    case 'echo': {
      // `kq3z|kq3z`: copy a string after a separator.
      const text = randomString(random, random() < 0.5 ? LETTERS : mixed, 2, 8);
      const separator = ECHO_SEPARATORS[Math.floor(random() * ECHO_SEPARATORS.length)] as string;
      return `${text}${separator}${text}`;
    }
    case 'repeat': {
      // `kq kq kq kq`: continue a repeated unit.
      const unit = randomString(random, mixed, 1, 3);
      return Array.from({ length: randomInt(random, 3, 5) }, () => unit).join(' ');
    }
    case 'run': {
      // `defghi` / `3456`: continue an ascending run of letters or digits.
      const alphabet = random() < 0.6 ? LETTERS : DIGITS;
      const length = randomInt(random, 3, Math.min(10, alphabet.length));
      const start = randomInt(random, 0, alphabet.length - length);
      return alphabet.slice(start, start + length);
    }
    case 'words':
      // `kqz 12 ab`: unigram statistics and spacing.
      return Array.from({ length: randomInt(random, 2, 4) }, () => randomString(random, random() < 0.7 ? LETTERS : DIGITS, 1, 5)).join(' ');
  }
}

/** `count` pretraining documents from one seed. */
export function pretrainingDocuments(count: number, seed: number): string[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => pretrainingDocument(random));
}

// ---------------------------------------------------------------------------------------------------------
// The four demo tasks

export function reverseString(text: string): string {
  return [...text].reverse().join('');
}

export function sortAscending(text: string): string {
  return [...text].sort().join('');
}

export function sortDescending(text: string): string {
  return [...text].sort().reverse().join('');
}

/** Rotates a string left by one place: `abcd` → `bcda`. */
export function rotateLeft(text: string): string {
  return text.slice(1) + text.slice(0, 1);
}

export interface DemoTask {
  /** Index in DEMO_TASKS; the oracle's task router reads it, nothing else does. */
  readonly id: number;
  readonly name: string;
  /** The prompt's leading marker. */
  readonly marker: string;
  /** The characters the task's input is drawn from. */
  readonly alphabet: string;
  readonly description: string;
  /** The answer for an input string. */
  answer(input: string): string;
}

/** Input strings are 3 to 5 characters long; prompts are `<marker>:<input>=`. */
export const INPUT_LENGTH = { min: 3, max: 5 } as const;

export const DEMO_TASKS: readonly DemoTask[] = [
  { id: 0, name: 'reverse', marker: 'r', alphabet: LETTERS, description: 'reverse a string of letters', answer: reverseString },
  { id: 1, name: 'sort', marker: 's', alphabet: DIGITS, description: 'sort digits ascending', answer: sortAscending },
  { id: 2, name: 'desc', marker: 'd', alphabet: DIGITS, description: 'sort digits descending', answer: sortDescending },
  { id: 3, name: 'rotate', marker: 'o', alphabet: LETTERS, description: 'rotate letters left by one', answer: rotateLeft },
];

/** One prompt of a task and its expected completion. */
export function generateExample(task: DemoTask, random: Random): { readonly prompt: string; readonly completion: string } {
  const input = randomString(random, task.alphabet, INPUT_LENGTH.min, INPUT_LENGTH.max);
  return { prompt: `${task.marker}:${input}=`, completion: task.answer(input) };
}

export interface DemoExample {
  readonly task: number;
  readonly prompt: string;
  readonly completion: string;
}

/**
 * `perTask` examples of every task, interleaved (task 0, 1, 2, 3, 0, 1, …), from one seed. Draws from
 * each task in turn, so changing one task's generator never changes another task's examples' order of draws
 * within a seed… but does change their values; only the seed is the contract.
 */
export function taskExamples(perTask: number, seed: number, tasks: readonly DemoTask[] = DEMO_TASKS): DemoExample[] {
  const random = seededRandom(seed);
  const out: DemoExample[] = [];
  for (let i = 0; i < perTask; i++) {
    for (const task of tasks) out.push({ task: task.id, ...generateExample(task, random) });
  }
  return out;
}

/**
 * Like taskExamples, but never returns a prompt in `exclude` (e.g. the training prompts, so evaluation
 * measures generalisation, not memory). Gives up after 50 draws per wanted example.
 */
export function heldOutExamples(perTask: number, seed: number, exclude: ReadonlySet<string>, tasks: readonly DemoTask[] = DEMO_TASKS): DemoExample[] {
  const random = seededRandom(seed);
  const out: DemoExample[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < perTask; i++) {
    for (const task of tasks) {
      for (let attempt = 0; attempt < 50; attempt++) {
        const example = generateExample(task, random);
        if (exclude.has(example.prompt) || seen.has(example.prompt)) continue;
        seen.add(example.prompt);
        out.push({ task: task.id, ...example });
        break;
      }
    }
  }
  return out;
}
