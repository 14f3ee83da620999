// Warmup + cosine LR multipliers at the boundaries, constant LR without totalSteps, linear annealing.
import { describe, expect, test } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { annealingSchedule, lrSchedule } from '../../src/train/schedule.js';

describe('lrSchedule', () => {
  test('linear warmup reaches 1 on the last warmup step, cosine reaches minLrRatio at totalSteps', () => {
    const s = lrSchedule({ warmupSteps: 4, totalSteps: 14, minLrRatio: 0.1 });
    expect(s.lrAt(0)).toBeCloseTo(0.25, 12);
    expect(s.lrAt(1)).toBeCloseTo(0.5, 12);
    expect(s.lrAt(3)).toBeCloseTo(1, 12);
    expect(s.lrAt(4)).toBeCloseTo(1, 12);
    expect(s.lrAt(9)).toBeCloseTo(0.55, 12); // halfway through the cosine: r + (1 − r)/2
    expect(s.lrAt(14)).toBeCloseTo(0.1, 12);
    expect(s.lrAt(1000)).toBeCloseTo(0.1, 12);
    for (let step = 4; step < 14; step++) expect(s.lrAt(step + 1)).toBeLessThan(s.lrAt(step));
  });

  test('defaults: no warmup, constant 1 without totalSteps; minLrRatio default 0.1', () => {
    expect(lrSchedule().lrAt(0)).toBe(1);
    expect(lrSchedule().lrAt(10_000)).toBe(1);
    expect(lrSchedule({ totalSteps: 10 }).lrAt(10)).toBeCloseTo(0.1, 12);
    expect(lrSchedule({ totalSteps: 10 }).lrAt(0)).toBeCloseTo(1, 12);
  });

  test('rejects warmup longer than the run and bad fields', () => {
    expect(() => lrSchedule({ warmupSteps: 20, totalSteps: 10 })).toThrow(ConfigError);
    expect(() => lrSchedule({ minLrRatio: 2 })).toThrow(/schedule.minLrRatio/);
  });
});

describe('annealingSchedule', () => {
  test('linear from → to over steps, then held', () => {
    const a = annealingSchedule({ temperature: { from: 2, to: 0.5 }, noise: { from: 1, to: 0 }, steps: 10 }, undefined);
    expect(a.stateAt(0)).toEqual({ temperature: 2, noise: 1 });
    expect(a.stateAt(5).temperature).toBeCloseTo(1.25, 12);
    expect(a.stateAt(5).noise).toBeCloseTo(0.5, 12);
    expect(a.stateAt(10)).toEqual({ temperature: 0.5, noise: 0 });
    expect(a.stateAt(50)).toEqual({ temperature: 0.5, noise: 0 });
  });

  test('sets only configured fields; length defaults to the LR schedule and is required', () => {
    expect(annealingSchedule({ noise: { from: 1, to: 0 } }, 4).stateAt(2)).toEqual({ noise: 0.5 });
    expect(() => annealingSchedule({ noise: { from: 1, to: 0 } }, undefined)).toThrow(/routerAnnealing.steps/);
  });
});
