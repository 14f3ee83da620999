// CLI argument helpers: strict parsing and number/int/list/choice conversion, each failure a UsageError naming the flag.
import { describe, expect, test } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { flagName, optional, parseStrict, toChoice, toInt, toIntList, toNumber } from '../../src/cli/args.js';

function usageError(fn: () => unknown): UsageError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return error as UsageError;
  }
  throw new Error('expected a UsageError');
}

describe('parseStrict', () => {
  const specs = {
    steps: { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
    format: { type: 'string', default: 'text' },
    layer: { type: 'string', multiple: true },
  } as const;

  test('parses flags, defaults and repeated flags', () => {
    const { values, positionals } = parseStrict(['--steps', '10', '-v', '--layer=a', '--layer', 'b'], specs);
    expect(values).toEqual({ steps: '10', verbose: true, format: 'text', layer: ['a', 'b'] });
    expect(positionals).toEqual([]);
    const format: string = values.format; // a flag with a default is always present
    expect(format).toBe('text');
  });

  test('accepts positionals only when allowed', () => {
    expect(parseStrict(['a', '--', '--b'], {}, { allowPositionals: true }).positionals).toEqual(['a', '--b']);
    expect(usageError(() => parseStrict(['a'], {})).message).toMatch(/'a'/);
  });

  test('unknown flags and missing values are UsageErrors naming the flag', () => {
    expect(usageError(() => parseStrict(['--stpes', '3'], specs)).message).toMatch(/--stpes/);
    expect(usageError(() => parseStrict(['--steps'], specs)).message).toMatch(/--steps/);
    expect(usageError(() => parseStrict(['--verbose=yes'], specs)).message).toMatch(/--verbose/);
  });
});

describe('toInt', () => {
  test('parses integers within range', () => {
    expect(toInt('steps', '12')).toBe(12);
    expect(toInt('steps', ' -3 ')).toBe(-3);
    expect(toInt('steps', '+4', { min: 1, max: 4 })).toBe(4);
  });

  test.each(['1.5', 'abc', '', '1e3', '0x10', '12abc', '99999999999999999999'])('rejects %j', (raw) => {
    const { message } = usageError(() => toInt('steps', raw));
    expect(message).toContain('--steps');
    expect(message).toContain(`'${raw}'`);
    expect(message).toMatch(/integer/);
  });

  test('rejects values out of range, saying the range', () => {
    expect(usageError(() => toInt('steps', '0', { min: 1 })).message).toMatch(/--steps: '0' \(expected an integer >= 1\)/);
    expect(usageError(() => toInt('--rank', '65', { min: 1, max: 64 })).message).toMatch(/--rank.*'65'.*>= 1 and <= 64/);
  });
});

describe('toNumber', () => {
  test('parses finite decimals', () => {
    expect(toNumber('lr', '3e-4')).toBe(3e-4);
    expect(toNumber('lr', '.5')).toBe(0.5);
    expect(toNumber('temperature', '-2')).toBe(-2);
    expect(toNumber('temperature', '0', { min: 0 })).toBe(0);
  });

  test.each(['NaN', 'Infinity', '-Infinity', '', 'abc', '0x10', '1.2.3', '1e999'])('rejects %j', (raw) => {
    const { message } = usageError(() => toNumber('lr', raw));
    expect(message).toContain('--lr');
    expect(message).toContain(`'${raw}'`);
  });

  test('exclusive bounds', () => {
    expect(usageError(() => toNumber('lr', '0', { min: 0, minExclusive: true })).message).toMatch(/--lr.*'0'.*> 0/);
    expect(usageError(() => toNumber('p', '1', { max: 1, maxExclusive: true })).message).toMatch(/--p.*'1'.*< 1/);
    expect(toNumber('p', '0.999', { min: 0, max: 1, maxExclusive: true })).toBe(0.999);
  });
});

describe('toIntList', () => {
  test('parses comma-separated integers', () => {
    expect(toIntList('layers', '1,2,3')).toEqual([1, 2, 3]);
    expect(toIntList('layers', ' 4 , 5 ')).toEqual([4, 5]);
    expect(toIntList('layers', '7')).toEqual([7]);
  });

  test.each(['', '1,,2', '1,2,', ',1', '1,a', '1.5,2', '1;2'])('rejects %j', (raw) => {
    const { message } = usageError(() => toIntList('layers', raw));
    expect(message).toContain('--layers');
    expect(message).toContain(`'${raw}'`);
  });

  test('checks item range, length and uniqueness', () => {
    expect(usageError(() => toIntList('layers', '0,12', { min: 0, max: 11 })).message).toMatch(/--layers.*item 12 is out of range/);
    expect(usageError(() => toIntList('layers', '1,2,3', { maxLength: 2 })).message).toMatch(/at most 2 items/);
    expect(usageError(() => toIntList('layers', '1', { minLength: 2 })).message).toMatch(/at least 2 items/);
    expect(usageError(() => toIntList('layers', '1,2,1', { unique: true })).message).toMatch(/1 appears twice/);
    expect(toIntList('layers', '', { minLength: 0 })).toEqual([]);
  });
});

describe('toChoice, optional, flagName', () => {
  test('toChoice accepts listed values and names the flag otherwise', () => {
    const format: 'text' | 'json' = toChoice('format', 'json', ['text', 'json'] as const);
    expect(format).toBe('json');
    expect(usageError(() => toChoice('format', 'xml', ['text', 'json'])).message).toBe("Invalid value for --format: 'xml' (expected one of text, json)");
  });

  test('optional applies the conversion only when the flag was given', () => {
    expect(optional(undefined, (raw) => toInt('steps', raw), 10)).toBe(10);
    expect(optional('3', (raw) => toInt('steps', raw), 10)).toBe(3);
  });

  test('flagName adds dashes once', () => {
    expect(flagName('steps')).toBe('--steps');
    expect(flagName('-s')).toBe('-s');
  });
});
