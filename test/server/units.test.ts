// Small parts of the server on their own: stop sequences over streamed pieces (never releasing text that may
// start a stop sequence), admission (slots, FIFO queue, 429 with Retry-After, leaving the queue on abort),
// the plain chat format, and zod body errors naming the field.
import { fc, test as fcTest } from '@fast-check/vitest';
import { describe, expect, test } from 'vitest';
import { Admission } from '../../src/server/admission.js';
import { plainChatTemplate } from '../../src/server/chat-template.js';
import { ServerError, parseBody } from '../../src/server/errors.js';
import { CompletionRequest } from '../../src/server/schemas.js';
import { StopMatcher } from '../../src/server/stop.js';

describe('StopMatcher', () => {
  test('holds back a possible stop prefix and cuts before the stop', () => {
    const m = new StopMatcher(['END']);
    expect(m.push('abcE')).toEqual({ text: 'abc', stopped: false });
    expect(m.push('N')).toEqual({ text: '', stopped: false });
    expect(m.push('Dxyz')).toEqual({ text: '', stopped: true });
    expect(m.flush()).toBe('');
    const n = new StopMatcher(['END']);
    n.push('aE');
    expect(n.push('x')).toEqual({ text: 'Ex', stopped: false });
    expect(n.push('E')).toEqual({ text: '', stopped: false });
    expect(n.flush()).toBe('E');
  });

  fcTest.prop([fc.array(fc.string({ maxLength: 4 }), { maxLength: 12 }), fc.array(fc.string({ minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 3 })])(
    'whatever the split, the released text is the text up to the first stop',
    (pieces, stops) => {
      const m = new StopMatcher(stops);
      let out = '';
      for (const p of pieces) {
        const step = m.push(p);
        out += step.text;
        if (step.stopped) break;
      }
      out += m.flush();
      const full = pieces.join('');
      const cuts = stops.map((s) => full.indexOf(s)).filter((i) => i >= 0);
      expect(out).toBe(cuts.length === 0 ? full : full.slice(0, Math.min(...cuts)));
    },
  );
});

describe('Admission', () => {
  test('grants slots, queues in order, refuses beyond the queue with Retry-After, and drops aborted waiters', async () => {
    const admission = new Admission({ maxConcurrency: 1, maxQueue: 2 });
    const never = new AbortController().signal;
    const first = await admission.acquire(never);
    const order: number[] = [];
    const abort = new AbortController();
    const second = admission.acquire(never).then((r) => {
      order.push(2);
      return r;
    });
    const third = admission.acquire(abort.signal).catch(() => 'aborted');
    let refused: unknown;
    try {
      await admission.acquire(never);
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(ServerError);
    expect((refused as ServerError).status).toBe(429);
    expect(Number((refused as ServerError).headers['retry-after'])).toBeGreaterThanOrEqual(1);
    abort.abort();
    expect(await third).toBe('aborted');
    expect(admission.queued).toBe(1);
    first();
    first(); // idempotent
    const release = await second;
    expect(order).toEqual([2]);
    expect(admission.running).toBe(1);
    release();
    expect(admission.running).toBe(0);
  });
});

test('the plain chat format is role: content lines, then assistant:', () => {
  expect(
    plainChatTemplate(true).render([
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'hi' },
    ]),
  ).toBe('system: be brief\nuser: hi\nassistant:');
});

test('body errors name the field, the value and the problem', () => {
  const error = (() => {
    try {
      parseBody(CompletionRequest, { model: 'a', prompt: 'x', temperature: 'hot' });
    } catch (e) {
      return e as ServerError;
    }
    return undefined;
  })();
  expect(error?.status).toBe(400);
  expect(error?.param).toBe('temperature');
  expect(error?.message).toMatch(/invalid temperature: .*expected number.*got "hot"/);
});
