// What several test files share about libvirt's test driver, errors and signals.
import assert from 'node:assert/strict';
import type { Signal } from 'vmdevd/testing/bus-client';
import { LibvirtError } from '../src/binding.js';

/** libvirt's in-process test driver: no daemon, state shared by the whole process. */
export const TEST_URI = 'test:///default';
/** The `test` domain that test:///default always has, running. */
export const TEST_DOMAIN_UUID = '6695eb01-f6a4-8304-79aa-97f2502e193f';
/** A well-formed UUID no domain has. */
export const UNKNOWN_UUID = '00000000-0000-4000-8000-000000000000';

/** The LibvirtError `promise` rejects with; fails the test when it resolves or rejects otherwise. */
export async function rejection(promise: Promise<unknown>): Promise<LibvirtError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof LibvirtError, `expected a LibvirtError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected the call to fail');
}

/** The Backends map a PropertiesChanged signal carries, if any. */
export function backendsIn(s: Signal): Record<string, string> | undefined {
  if (s.member !== 'PropertiesChanged') return undefined;
  return (s.body[1] as Record<string, { value: Record<string, string> }>)['Backends']?.value;
}
