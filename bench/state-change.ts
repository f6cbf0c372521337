/**
 * What one VM's change of state costs the daemon's main thread before the
 * socket write, at 1, 1,000 and 10,000 VMs: the state hub's change and its
 * announcement, and the `TestSignal` body of the new map (encoded as the
 * D-Bus frontend does for every change, by its `CurrentStateBodies`), in
 * one process, no bus. The VMs are
 * spread over ten backends (one at 1 VM), named as the scale part of
 * `run.js` names them; one VM goes paused and running again, over and over.
 *
 *   npm run build && node dist/bench/state-change.js [--changes N] [--rounds N]
 *
 * Per size: the median of the rounds of the time per change, for the hub
 * alone and with the encoding. Compare builds by running each checkout's
 * own `dist/bench/state-change.js` one after the other.
 */
import 'reflect-metadata';
import { StateHub } from '../src/core/state-hub.js';
import { CurrentStateBodies, StateBodyEncoder } from '../src/dbus/state-bodies.js';
import { INTERFACE_NAME } from '../src/dbus/interface-definition.js';
import { INVALIDATED_WITH_STATES } from '../src/dbus/dbus-frontend.js';
import { fmt, median, parseCommandLine } from './lib.js';

const USAGE = `
usage: node dist/bench/state-change.js [--changes N] [--rounds N]
  --changes N  changes per round at 10,000 VMs (ten times as many below that; default 200)
  --rounds N   rounds per size, the median shown (default 7)
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    changes: { type: 'string', default: '200' },
    rounds: { type: 'string', default: '7' },
  },
});
const CHANGES = Number(opts.changes);
const ROUNDS = Number(opts.rounds);
if (!(CHANGES > 0) || !(ROUNDS > 0)) throw new Error('--changes and --rounds take positive numbers');

function hubOf(vms: number): StateHub {
  const hub = new StateHub();
  const backends = Math.min(10, vms);
  const per = vms / backends;
  for (let b = 0; b < backends; b++) {
    hub.publish(
      `host${b}`,
      Array.from({ length: per }, (_, i) => {
        const n = b * per + i;
        return { name: `vm-${String(n).padStart(4, '0')}`, uuid: `uuid-${n}`, type: 'test', state: 'running' };
      }),
    );
  }
  return hub;
}

/** µs per change over `changes` changes of one VM, with the listener `onMap` makes as the hub's. */
function round(vms: number, changes: number, onMap: (hub: StateHub) => () => void): number {
  const hub = hubOf(vms);
  hub.onDidChangeMap(onMap(hub));
  const host = 'host0';
  const vm = { name: 'vm-0000', uuid: 'uuid-0', type: 'test' };
  const t0 = performance.now();
  for (let i = 0; i < changes; i++) hub.update(host, { ...vm, state: i % 2 === 0 ? 'paused' : 'running' });
  const us = ((performance.now() - t0) * 1000) / changes;
  hub.dispose();
  return us;
}

const encoder = new StateBodyEncoder(INTERFACE_NAME, INVALIDATED_WITH_STATES);
let bytes = 0;
const none = () => () => undefined;
// As the D-Bus frontend encodes each map it is told of.
let last: { hub: StateHub; bodies: CurrentStateBodies } | undefined;
const encode = (hub: StateHub) => {
  const bodies = new CurrentStateBodies(encoder, hub);
  last = { hub, bodies };
  return () => {
    bytes += bodies.get().testSignal.length;
  };
};
/** The last map's bodies are those of the map encoded whole. */
function check(): void {
  if (last === undefined || !last.bodies.get().testSignal.equals(encoder.encode(last.hub.map()).testSignal))
    throw new Error('the bodies encoded change by change differ from the map encoded whole');
}

console.log(`one VM's change of state, µs per change (median of ${ROUNDS} rounds)`);
console.log(`${'VMs'.padStart(6)}  ${'the hub'.padStart(9)}  ${'+ encoding'.padStart(11)}`);
for (const vms of [1, 1000, 10000]) {
  const changes = vms >= 10000 ? CHANGES : CHANGES * 10;
  // A first round of each, unmeasured: the JIT's compilations.
  round(vms, changes, none);
  round(vms, changes, encode);
  const hubOnly: number[] = [];
  const withEncoding: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    hubOnly.push(round(vms, changes, none));
    withEncoding.push(round(vms, changes, encode));
    check();
  }
  console.log(
    `${String(vms).padStart(6)}  ${fmt(median(hubOnly)).padStart(9)}  ${fmt(median(withEncoding)).padStart(11)}`,
  );
}
if (bytes === 0) throw new Error('nothing was encoded');
