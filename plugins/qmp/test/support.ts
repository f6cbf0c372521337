// What the qmp backend's daemon tests share: waiting for outcomes and states on the bus.
import type { Signal, SignalLog } from 'vmdevd/testing/bus-client';
import type { Stack } from 'vmdevd/testing/stack';
import { type QmpClient } from '../src/qmp-client.js';

export const E = 'org.example.dbustest.Error.';

export function isOutcome(s: Signal, vm: string, label: string): boolean {
  return (
    (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[0] === vm && s.body[1] === label
  );
}

/** The one outcome signal of a device. */
export function outcome(log: SignalLog, vm: string, label: string, timeoutMs = 30_000): Promise<Signal> {
  return log.waitFor((s) => isOutcome(s, vm, label), timeoutMs, `the outcome of ${label}`);
}

/** A TestSignal with `vm` in `state`, among those after the first `since` signals. */
export function stateSignal(log: SignalLog, vm: string, state: string, since = 0, timeoutMs = 30_000): Promise<Signal> {
  return log.waitFor(
    (s) =>
      s.member === 'TestSignal' &&
      (s.body[0] as Record<string, string>)[vm] === state &&
      log.signals.indexOf(s) >= since,
    timeoutMs,
    `TestSignal with ${vm}=${state}`,
  );
}

/** A TestSignal without `vm`, after the first `since` signals. */
export function goneSignal(log: SignalLog, vm: string, since = 0, timeoutMs = 30_000): Promise<Signal> {
  return log.waitFor(
    (s) =>
      s.member === 'TestSignal' && !(vm in (s.body[0] as Record<string, string>)) && log.signals.indexOf(s) >= since,
    timeoutMs,
    `TestSignal without ${vm}`,
  );
}

/** The Backends value a PropertiesChanged signal carries, if any. */
export function backendsIn(s: Signal): Record<string, string> | undefined {
  if (s.member !== 'PropertiesChanged') return undefined;
  return (s.body[1] as Record<string, { value: Record<string, string> }>)['Backends']?.value;
}

/**
 * Waits for every signal the daemon sent before now: the reply to a later
 * call comes after them on the same connection.
 */
export async function barrier(stack: Stack): Promise<void> {
  await stack.client.getProperty('Backends');
}

/** The outcome signals of `label` so far. */
export function outcomesOf(log: SignalLog, label: string): Signal[] {
  return log.signals.filter(
    (s) => (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[1] === label,
  );
}

/** The ids under /machine/peripheral, through the test's own monitor. */
export async function peripheralIds(monitor: QmpClient): Promise<string[]> {
  const list = (await monitor.execute('qom-list', { path: '/machine/peripheral' })) as Array<{
    name: string;
    type: string;
  }>;
  return list.filter((p) => p.type.startsWith('child<')).map((p) => p.name);
}

/** Resolves once `condition` holds (checked every 20 ms); rejects after `timeoutMs`, a guard against hangs. */
export async function until(condition: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
