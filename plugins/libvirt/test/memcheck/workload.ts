// What runs under valgrind: `node --expose-gc workload.js CONFIG.json`.
// Many open/call/close cycles through every path of the binding (success,
// libvirt errors, events, the close callback registration, many calls in
// flight on one connection's threads), each close() checked to resolve 0;
// on a QEMU VM, libvirt's event loop on Node's (the remote socket's
// handles, keepalive timers, events read by a call thread and handed to
// the loop, a close while events are dispatched); then connections left
// to the garbage collector and to a worker's teardown. The main thread's
// time slice is asked for once, and refused off the main thread. Prints one line
// `memcheck-workload: {json}`.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { create } from 'xmlbuilder2';
import { VM_METADATA_NAMESPACE as METADATA_NAMESPACE } from 'vmdevd/testing/test-vms';
import { Connection, constants as C, requestLoopSlice, type DomainEvent } from '../../src/binding.js';
import { TEST_DOMAIN_UUID, TEST_URI, UNKNOWN_UUID, rejection } from '../support.js';

export interface WorkloadConfig {
  /** Cycles on test:///default. */
  readonly testCycles: number;
  /** Detach + re-attach cycles on a running QEMU VM, when given. */
  readonly qemu?: {
    readonly uri: string;
    readonly uuid: string;
    readonly deviceXml: string;
    readonly alias: string;
    readonly cycles: number;
    /** Connections to `uri` left to the garbage collector (closed on their call threads). */
    readonly gcConnections: number;
  };
  /** Connections opened and never closed, left to the garbage collector. */
  readonly gcConnections: number;
  /** Connections left open in a worker thread that is then terminated. */
  readonly workerConnections: number;
}

export interface WorkloadResult {
  testCycles: number;
  qemuCycles: number;
  /** close() results other than 0, as `cycle:count`. */
  nonZeroCloses: string[];
  eventsReceived: number;
  durationMs: number;
}

async function expectLibvirtError(promise: Promise<unknown>, code: number): Promise<void> {
  assert.equal((await rejection(promise)).code, code);
}

function testDomainXml(): string {
  const domain = create().ele('domain', { type: 'test' });
  domain.ele('name').txt(`vmdevd-memcheck-${randomBytes(4).toString('hex')}`);
  domain.ele('metadata').ele(METADATA_NAMESPACE, 'vmdevd:vm', { type: 'memcheck' });
  domain.ele('memory', { unit: 'MiB' }).txt('64');
  domain.ele('os').ele('type').txt('hvm');
  return domain.end({ headless: true });
}

/** Resolves with the first event that matches, after `start()` ran. */
function nextEvent(
  events: DomainEvent[],
  listeners: Array<() => void>,
  match: (event: DomainEvent) => boolean,
): Promise<DomainEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no event within 60 s')), 60_000);
    const check = (): void => {
      const found = events.find(match);
      if (found === undefined) return;
      clearTimeout(timer);
      listeners.splice(listeners.indexOf(check), 1);
      resolve(found);
    };
    listeners.push(check);
    check();
  });
}

async function testCycle(result: WorkloadResult, cycle: number): Promise<void> {
  const events: DomainEvent[] = [];
  const connection = await Connection.open(TEST_URI, { onEvent: (event) => events.push(event), onClose: () => {} });
  assert.ok((await connection.listDomains()).some((domain) => domain.uuid === TEST_DOMAIN_UUID));
  await connection.getDomain(TEST_DOMAIN_UUID);
  await connection.getXml(TEST_DOMAIN_UUID);
  await connection.getXml(TEST_DOMAIN_UUID, { inactive: true });
  assert.equal(await connection.getMetadata(TEST_DOMAIN_UUID, METADATA_NAMESPACE), undefined);
  await expectLibvirtError(connection.getDomain(UNKNOWN_UUID), C.VIR_ERR_NO_DOMAIN);
  await expectLibvirtError(connection.getXml('not-a-uuid'), C.VIR_ERR_INVALID_ARG);
  await expectLibvirtError(
    connection.detachDevice(
      TEST_DOMAIN_UUID,
      "<disk type='file' device='disk'><target dev='vda'/></disk>",
      C.VIR_DOMAIN_AFFECT_LIVE,
    ),
    C.VIR_ERR_NO_SUPPORT,
  );
  await expectLibvirtError(connection.detachDeviceAlias(TEST_DOMAIN_UUID, 'ua-disk', 0), C.VIR_ERR_NO_SUPPORT);
  await connection.suspend(TEST_DOMAIN_UUID);
  await connection.resume(TEST_DOMAIN_UUID);
  // More calls in flight than libuv's pool has threads: each on a thread of the connection.
  const xmls = await Promise.all(Array.from({ length: 12 }, () => connection.getXml(TEST_DOMAIN_UUID)));
  assert.equal(new Set(xmls).size, 1);
  const defined = await connection.defineXml(testDomainXml());
  assert.match((await connection.getMetadata(defined.uuid, METADATA_NAMESPACE)) ?? '', /memcheck/);
  const listed = await connection.listDomains({ metadataNamespace: METADATA_NAMESPACE });
  assert.match(listed.find((domain) => domain.uuid === defined.uuid)?.metadata ?? '', /memcheck/);
  await connection.create(defined.uuid);
  await connection.destroy(defined.uuid);
  await connection.undefine(defined.uuid);
  // Wait for the last event, so that deliveries overlap nothing of the next cycle.
  await new Promise<void>((resolve) => {
    const poll = (): void => {
      if (
        events.some(
          (event) =>
            event.kind === 'lifecycle' && event.uuid === defined.uuid && event.event === C.VIR_DOMAIN_EVENT_UNDEFINED,
        )
      )
        resolve();
      else setTimeout(poll, 1);
    };
    poll();
  });
  result.eventsReceived += events.length;
  const remaining = await connection.close();
  if (remaining !== 0) result.nonZeroCloses.push(`test ${cycle}:${remaining}`);
}

async function qemuCycle(
  config: NonNullable<WorkloadConfig['qemu']>,
  result: WorkloadResult,
  cycle: number,
): Promise<void> {
  const events: DomainEvent[] = [];
  const listeners: Array<() => void> = [];
  const connection = await Connection.open(config.uri, {
    onEvent: (event) => {
      events.push(event);
      for (const listener of [...listeners]) listener();
    },
    onClose: () => {},
  });
  // Periodic timers on the loop, and the keepalive messages they send.
  assert.equal(await connection.setKeepAlive(1, 5), true);
  const removed = nextEvent(
    events,
    listeners,
    (event) => event.kind === 'device-removed' && event.uuid === config.uuid && event.alias === config.alias,
  );
  await connection.detachDevice(config.uuid, config.deviceXml, C.VIR_DOMAIN_AFFECT_LIVE);
  await removed;
  await expectLibvirtError(
    connection.detachDevice(config.uuid, config.deviceXml, C.VIR_DOMAIN_AFFECT_LIVE),
    C.VIR_ERR_DEVICE_MISSING,
  );
  await connection.attachDevice(config.uuid, config.deviceXml, C.VIR_DOMAIN_AFFECT_LIVE);
  assert.match(await connection.getXml(config.uuid), new RegExp(`<alias name='${config.alias}'/>`));
  // The listing with every state at once and each domain's metadata, over the daemon's RPC.
  assert.ok(
    (await connection.listDomains({ metadataNamespace: METADATA_NAMESPACE })).some((d) => d.uuid === config.uuid),
  );
  // Lifecycle events, which the thread making the call often reads and
  // hands to the loop; every other cycle closes without waiting for them,
  // so the close meets events being dispatched.
  const resumed = nextEvent(
    events,
    listeners,
    (event) => event.kind === 'lifecycle' && event.uuid === config.uuid && event.event === C.VIR_DOMAIN_EVENT_RESUMED,
  );
  await connection.suspend(config.uuid);
  await connection.resume(config.uuid);
  if (cycle % 2 === 0) await resumed;
  else resumed.catch(() => undefined);
  result.eventsReceived += events.length;
  const remaining = await connection.close();
  if (remaining !== 0) result.nonZeroCloses.push(`qemu ${cycle}:${remaining}`);
}

async function openAndDrop(uri: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const connection = await Connection.open(uri, { onEvent: () => {}, onClose: () => {} });
    await connection.listDomains();
  }
}

async function leaveToGarbageCollector(uri: string, count: number): Promise<void> {
  // Opened in a function of its own: a suspended async frame would keep
  // the last connection reachable through the collections below.
  await openAndDrop(uri, count);
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, 'run with --expose-gc');
  for (let i = 0; i < 5; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function leaveInWorker(count: number): Promise<void> {
  if (count === 0) return;
  const worker = new Worker(new URL(import.meta.url), { workerData: { workerConnections: count } });
  await new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  await worker.terminate();
}

async function main(config: WorkloadConfig): Promise<WorkloadResult> {
  const started = Date.now();
  const result: WorkloadResult = { testCycles: 0, qemuCycles: 0, nonZeroCloses: [], eventsReceived: 0, durationMs: 0 };
  // The time slice: granted (or 0 where the kernel keeps none), and refused.
  const slice = requestLoopSlice(300);
  assert.ok(slice.afterUs === 0 || slice.afterUs <= 300, JSON.stringify(slice));
  assert.throws(() => requestLoopSlice(50), RangeError);
  for (let cycle = 0; cycle < config.testCycles; cycle++) {
    await testCycle(result, cycle);
    result.testCycles++;
  }
  if (config.qemu !== undefined) {
    for (let cycle = 0; cycle < config.qemu.cycles; cycle++) {
      await qemuCycle(config.qemu, result, cycle);
      result.qemuCycles++;
    }
  }
  await leaveToGarbageCollector(TEST_URI, config.gcConnections);
  if (config.qemu !== undefined) await leaveToGarbageCollector(config.qemu.uri, config.qemu.gcConnections);
  await leaveInWorker(config.workerConnections);
  result.durationMs = Date.now() - started;
  return result;
}

if (!isMainThread) {
  const { workerConnections } = workerData as { workerConnections: number };
  assert.throws(() => requestLoopSlice(300), /runs on the thread of libvirt's event loop/);
  const kept: Connection[] = [];
  for (let i = 0; i < workerConnections; i++) {
    const connection = await Connection.open(TEST_URI, { onEvent: () => {} });
    await connection.suspend(TEST_DOMAIN_UUID);
    await connection.resume(TEST_DOMAIN_UUID);
    kept.push(connection);
  }
  (globalThis as { kept?: unknown }).kept = kept;
  parentPort?.postMessage('ready');
} else if (process.argv[1] !== undefined && new URL(import.meta.url).pathname === process.argv[1]) {
  const configFile = process.argv[2];
  assert.ok(configFile, 'usage: workload.js CONFIG.json');
  const config = JSON.parse(readFileSync(configFile, 'utf8')) as WorkloadConfig;
  const result = await main(config);
  console.log(`memcheck-workload: ${JSON.stringify(result)}`);
}
