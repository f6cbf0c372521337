/**
 * The qmp backend's detach against a scripted QMP server, for what real
 * QEMU cannot be made to do on demand: a guest that refuses an unplug
 * (DEVICE_UNPLUG_GUEST_ERROR needs a guest's ACPI code), and replies that
 * come late or never. Everything QEMU can show is tested on QEMU
 * (backend-*.test.ts).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import type { BackendContext, DetachOutcome, DetachRequest, DeviceSpec, VmInfo } from 'vmdevd/plugin-api';
import { QmpBackend } from '../src/qmp-backend.js';
import { startFakeQmpServer, type Answer, type FakeConnection, type FakeQmpServer } from './fake-qmp-server.js';
import { until } from './support.js';

const DEVICE = { device: 'dimm1', path: '/machine/peripheral/dimm1' };

/** A backend context that records what the backend reports. */
function context(options: Record<string, unknown>) {
  const logs: string[] = [];
  const health: string[] = [];
  const log = (level: string) => (message: string, fields?: Record<string, unknown>) =>
    logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  const ctx: BackendContext = {
    id: 'fake',
    options,
    log: { error: log('error'), warn: log('warn'), info: log('info'), debug: log('debug') },
    publish: () => {},
    update: () => {},
    remove: () => {},
    setHealth: (h) => health.push(h.connected ? 'connected' : h.reason),
  };
  return { ctx, logs, health };
}

function aliasSpec(name: string): DeviceSpec {
  return { label: name, type: 'alias', params: { name }, persistent: false, xml: undefined, identity: `alias:${name}` };
}

/** A detach request whose clock the test drives: `abort('timeout')` is the core's timeout. */
function request(vm: VmInfo, device: DeviceSpec) {
  const controller = new AbortController();
  let issued = false;
  const req: DetachRequest = {
    vm,
    device,
    timeoutMs: 30_000,
    signal: controller.signal,
    get aborted() {
      return controller.signal.aborted;
    },
    hold: () => {},
    issued: () => {
      issued = true;
    },
  };
  return { req, abort: (reason: string) => controller.abort(reason), wasIssued: () => issued };
}

describe('qmp backend against a scripted QMP server', () => {
  let server: FakeQmpServer;
  let backend: QmpBackend | undefined;
  let peer: FakeConnection;
  const vm: VmInfo = { name: 'vm', state: 'running' };

  before(async () => {
    server = await startFakeQmpServer();
  });
  after(async () => {
    await server?.close();
  });
  afterEach(async () => {
    await backend?.stop();
    backend = undefined;
  });

  /** Starts a backend on the fake, which answers the first reads and then `onDeviceDel`. */
  async function start(onDeviceDel: (issued: boolean) => Answer, extra: Record<string, unknown> = {}) {
    const { ctx, logs } = context({ vms: [{ name: 'vm', socket: server.path }], ...extra });
    backend = new QmpBackend(ctx);
    const starting = backend.start();
    peer = await server.nextConnection();
    await peer.handshake();
    let wasIssued = () => false;
    peer.serve((c) => {
      switch (c.execute) {
        case 'query-status':
          return { return: { status: 'running', running: true } };
        case 'query-uuid':
          return { return: { UUID: '00000000-0000-0000-0000-000000000000' } };
        case 'qom-list':
          return {
            return: [
              { name: 'type', type: 'string' },
              { name: 'dimm1', type: 'child<pc-dimm>' },
              { name: 'uh1', type: 'child<usb-host>' },
            ],
          };
        case 'qom-get': {
          // A usb-host opened by host address (QEMU needs the device to exist for that).
          const { path, property } = c.arguments as { path: string; property: string };
          const uh1: Record<string, number> = { hostbus: 3, hostaddr: 7, vendorid: 0, productid: 0 };
          if (path === '/machine/peripheral/uh1' && property in uh1) return { return: uh1[property] };
          return { error: { class: 'GenericError', desc: `Property '${property}' not found` } };
        }
        case 'device_del':
          return onDeviceDel(wasIssued());
        default:
          return { error: { class: 'CommandNotFound', desc: `no ${c.execute}` } };
      }
    });
    await starting;
    return {
      logs,
      detach(device = aliasSpec('dimm1')): { outcome: Promise<DetachOutcome>; abort: (reason: string) => void } {
        const r = request(vm, device);
        wasIssued = r.wasIssued;
        return { outcome: backend!.detach(r.req), abort: r.abort };
      },
    };
  }

  it('ends with RemovalFailed when the guest refuses (DEVICE_UNPLUG_GUEST_ERROR), the clock started first', async () => {
    let issuedBefore = false;
    const b = await start((issued) => {
      issuedBefore = issued;
      return { after: [{ event: 'DEVICE_UNPLUG_GUEST_ERROR', data: DEVICE }] };
    });
    const { outcome } = b.detach();
    assert.deepEqual(await outcome, {
      ok: false,
      error: 'RemovalFailed',
      message: 'the guest refused to release the device dimm1 of VM "vm"',
    });
    assert.ok(issuedBefore, 'issued() before device_del was sent');
  });

  it('takes a DEVICE_DELETED that comes before the reply of device_del', async () => {
    const b = await start(() => ({ before: [{ event: 'DEVICE_DELETED', data: DEVICE }] }));
    assert.deepEqual(await b.detach().outcome, { ok: true });
  });

  it('does not count the DEVICE_DELETED of a part of the device', async () => {
    const b = await start(() => ({ after: [{ event: 'DEVICE_DELETED', data: { path: `${DEVICE.path}/child[0]` } }] }));
    const { outcome, abort } = b.detach();
    // The part's event came with the reply; the device is still in the tree at the timeout.
    await until(() => b.logs.some((l) => l.includes('device_del accepted')), 'device_del accepted');
    abort('timeout');
    const o = await outcome;
    assert.equal(o.ok, false);
    assert.equal((o as { error: string }).error, 'Timeout');
  });

  it('waits on when device_del gets no reply in time, and ends with the event that comes later', async () => {
    let send: (() => void) | undefined;
    const b = await start(
      () => {
        send = () => peer.send({ event: 'DEVICE_DELETED', data: DEVICE });
        return { silent: true };
      },
      { commandTimeoutMs: 100 },
    );
    const { outcome } = b.detach();
    await until(() => b.logs.some((l) => l.includes('device_del got no reply')), 'device_del timed out');
    send!();
    assert.deepEqual(await outcome, { ok: true });
  });

  it('ends with RemovalFailed, in QEMU words, for a refusal it has no other name for', async () => {
    const b = await start(() => ({ error: { class: 'GenericError', desc: 'the device is busy' } }));
    assert.deepEqual(await b.detach().outcome, {
      ok: false,
      error: 'RemovalFailed',
      message: 'QEMU refused to remove the device dimm1 of VM "vm": the device is busy',
    });
  });

  it('finds a usb-host device by host bus and address (a host device this machine does not have)', async () => {
    const b = await start(() => ({}));
    const spec: DeviceSpec = {
      label: 'key',
      type: 'usb',
      params: { bus: '3', device: '7' },
      persistent: false,
      xml: undefined,
      identity: 'usb:bus=3,device=7,',
    };
    const { outcome } = b.detach(spec);
    await until(() => b.logs.some((l) => l.includes('device_del accepted') && l.includes('uh1')), 'device_del uh1');
    peer.send({ event: 'DEVICE_DELETED', data: { device: 'uh1', path: '/machine/peripheral/uh1' } });
    assert.deepEqual(await outcome, { ok: true });
  });

  it('ends a pending detach with Failed when the backend stops', async () => {
    const b = await start(() => ({}));
    const { outcome } = b.detach();
    await until(() => b.logs.some((l) => l.includes('device_del accepted')), 'device_del accepted');
    await backend!.stop();
    backend = undefined;
    assert.deepEqual(await outcome, { ok: false, error: 'Failed', message: 'the qmp backend is stopping' });
  });
});
