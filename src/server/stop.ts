/**
 * Stop sequences on streamed text. Text arrives in pieces (one per token); `push` returns the part that can
 * be released now — never text that might turn out to be the start of a stop sequence — and reports when a
 * stop sequence appeared, cutting the text just before it (OpenAI leaves the stop sequence out).
 */
export interface StopStep {
  /** Text safe to send now. */
  readonly text: string;
  /** A stop sequence was found: generation should stop, and nothing after `text` is sent. */
  readonly stopped: boolean;
}

export class StopMatcher {
  /** Text received but not yet released. */
  private pending = '';
  private done = false;

  constructor(private readonly stops: readonly string[]) {}

  get stopped(): boolean {
    return this.done;
  }

  push(piece: string): StopStep {
    if (this.done) return { text: '', stopped: true };
    this.pending += piece;
    if (this.stops.length === 0) {
      const text = this.pending;
      this.pending = '';
      return { text, stopped: false };
    }
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.done = true;
      const text = this.pending.slice(0, cut);
      this.pending = '';
      return { text, stopped: true };
    }
    const keep = this.heldBack();
    const text = this.pending.slice(0, this.pending.length - keep);
    this.pending = this.pending.slice(this.pending.length - keep);
    return { text, stopped: false };
  }

  /** The rest at the end of generation (a held-back tail that never became a stop sequence). */
  flush(): string {
    const text = this.done ? '' : this.pending;
    this.pending = '';
    return text;
  }

  /** Length of the longest suffix of the pending text that is a proper prefix of some stop sequence. */
  private heldBack(): number {
    let longest = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, this.pending.length); n > longest; n--) {
        if (this.pending.endsWith(stop.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }
}
