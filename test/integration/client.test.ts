/** The typed client module against the real daemon. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VmdevClient, VmdevClientError, type DeviceOutcome } from '../../src/client/index.js';
import { deadline } from '../harness/deadline.js';
import { DEFAULT_VMS, startStack, type Stack } from '../harness/stack.js';

const E = 'org.example.dbustest.Error.';

describe('vmdevd/client', () => {
  let stack: Stack;
  let client: VmdevClient;
  before(async () => {
    stack = await startStack();
    client = await VmdevClient.connect({ bus: stack.bus.address });
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it('reads states, backends and VM details', async () => {
    assert.deepEqual(await client.states(), { vm1: 'running', vm2: 'paused', vm3: 'shutoff' });
    assert.deepEqual(await client.backends(), { test: 'connected' });
    assert.deepEqual(
      (await client.vms()).map((v) => [v.key, v.backend, v.type]),
      [
        ['vm1', 'test', 'ivi'],
        ['vm2', 'test', 'cluster'],
        ['vm3', 'test', 'cluster'],
      ],
    );
  });

  it('detach resolves with every outcome: success and failure', async () => {
    const seen: DeviceOutcome[] = [];
    const r = await client.detach(
      'vm1',
      { ok: ['type=disk', 'target=vdb'], 'fail-DeviceNotFound': ['type=disk', 'target=vdc'] },
      { onOutcome: (o) => seen.push(o) },
    );
    assert.equal(r.accepted, true);
    assert.deepEqual(r.pending, []);
    assert.deepEqual(
      [...r.outcomes].sort((a, b) => a.device.localeCompare(b.device)),
      [
        {
          action: 'detach',
          vm: 'vm1',
          device: 'fail-DeviceNotFound',
          ok: false,
          error: 'org.example.dbustest.Error.DeviceNotFound',
          message: 'the test backend failed fail-DeviceNotFound with DeviceNotFound',
        },
        { action: 'detach', vm: 'vm1', device: 'ok', ok: true },
      ],
    );
    assert.equal(seen.length, 2);
  });

  it('detach resolves with the daemon Timeout outcome', async () => {
    const r = await client.detach('vm1', { hang: ['type=disk', 'target=vdd'] });
    assert.equal(r.outcomes[0]!.ok, false);
    assert.equal((r.outcomes[0] as { error: string }).error, 'org.example.dbustest.Error.Timeout');
  });

  it('detach never misses an outcome that comes with the reply', async () => {
    // Many fast devices: their outcomes arrive right behind the reply.
    const devices = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`fast${i}`, ['type=alias', `name=ua-${i}`]]),
    );
    // The deadline only ends the test should an outcome be missed: they all come at once.
    const r = await client.detach('vm2', devices, { timeoutMs: 60_000 });
    assert.equal(r.outcomes.length, 100);
    assert.deepEqual(r.pending, []);
  });

  it('detach of an unknown VM is not accepted; errors carry their D-Bus name', async () => {
    assert.deepEqual(await client.detach('ghost', { d: ['type=disk', 'target=vdb'] }), {
      accepted: false,
      outcomes: [],
      pending: [],
    });
    await assert.rejects(
      client.detach('cluster', { d: ['type=disk', 'target=vdb'] }),
      (e: unknown) => e instanceof VmdevClientError && e.errorName === 'org.example.dbustest.Error.AmbiguousSelector',
    );
  });

  it('setStates applies, and onStates follows', async () => {
    let running!: () => void;
    const shown = new Promise<void>((resolve) => (running = resolve));
    const sub = await client.onStates((s) => {
      if (s['vm3'] === 'running') running();
    });
    await client.setStates({ vm3: 'running' });
    await deadline(shown, 30_000, 'TestSignal with vm3=running');
    await sub.dispose();
    await assert.rejects(
      client.setStates({ nope: 'running' }),
      (e: unknown) => e instanceof VmdevClientError && e.errorName === 'org.freedesktop.DBus.Error.InvalidArgs',
    );
  });
});

describe('vmdevd/client: devices, attach and move', () => {
  let stack: Stack;
  let client: VmdevClient;
  const usbDisk = ['type=disk', 'target=sdb', 'source=/var/lib/images/usb.img', 'bus=usb', 'format=raw'];
  before(async () => {
    stack = await startStack({
      backends: [
        {
          vms: [...DEFAULT_VMS, { name: 'full', state: 'running' }, { name: 'full2', state: 'running' }],
          refuseAttachTo: ['full', 'full2'],
          devices: {
            vm1: [
              { label: 'usb-disk1', tokens: usbDisk },
              { label: 'fail-RemovalFailed', tokens: ['type=disk', 'target=sdc'] },
            ],
            full2: [{ label: 'usb-disk1', tokens: usbDisk }],
          },
        },
      ],
    });
    client = await VmdevClient.connect({ bus: stack.bus.address });
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });
  const attachesTo = (since: number) =>
    stack
      .journal()
      .slice(since)
      .filter((j) => j['op'] === 'attach' || j['op'] === 'detach')
      .map((j) => `${String(j['op'])} ${String(j['vm'])} ${String(j['label'])}`);

  it('devices lists label to tokens; an unknown VM rejects with VmNotFound', async () => {
    assert.deepEqual(await client.devices('vm1'), {
      'usb-disk1': usbDisk,
      'fail-RemovalFailed': ['type=disk', 'target=sdc'],
    });
    await assert.rejects(
      client.devices('ghost'),
      (e: unknown) => e instanceof VmdevClientError && e.errorName === `${E}VmNotFound`,
    );
  });

  it('attach resolves with every outcome, marked as attaches', async () => {
    const r = await client.attach('vm2', { d: usbDisk, 'fail-NotSupported': ['type=pci', 'address=01:00.0'] });
    assert.equal(r.accepted, true);
    assert.deepEqual(
      [...r.outcomes].sort((a, b) => a.device.localeCompare(b.device)),
      [
        { action: 'attach', vm: 'vm2', device: 'd', ok: true },
        {
          action: 'attach',
          vm: 'vm2',
          device: 'fail-NotSupported',
          ok: false,
          error: `${E}NotSupported`,
          message: 'the test backend failed fail-NotSupported with NotSupported',
        },
      ],
    );
    assert.equal((await client.attach('ghost', { d: usbDisk })).accepted, false);
  });

  it('move detaches from one VM and attaches the same tokens to the other', async () => {
    const since = stack.journal().length;
    const seen: DeviceOutcome[] = [];
    const r = await client.move('vm1', 'vm2', ['usb-disk1'], { onOutcome: (o) => seen.push(o) });
    assert.deepEqual(r.devices, [
      {
        label: 'usb-disk1',
        status: 'moved',
        detach: { action: 'detach', vm: 'vm1', device: 'usb-disk1', ok: true },
        attach: { action: 'attach', vm: 'vm2', device: 'usb-disk1', ok: true },
        putBack: undefined,
      },
    ]);
    assert.deepEqual(attachesTo(since), ['detach vm1 usb-disk1', 'attach vm2 usb-disk1']);
    const attached = stack
      .journal()
      .slice(since)
      .find((j) => j['op'] === 'attach')!;
    assert.equal(
      attached['xml'],
      '<disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="/var/lib/images/usb.img"/><target dev="sdb" bus="usb"/></disk>',
    );
    assert.deepEqual(
      seen.map((o) => `${o.action} ${o.vm}`),
      ['detach vm1', 'attach vm2'],
    );
  });

  it('move puts a device the target refuses back, and says so', async () => {
    const since = stack.journal().length;
    const r = await client.move('vm1', 'full', ['usb-disk1']);
    assert.equal(r.devices[0]!.status, 'put-back');
    assert.deepEqual(r.devices[0]!.attach, {
      action: 'attach',
      vm: 'full',
      device: 'usb-disk1',
      ok: false,
      error: `${E}Failed`,
      message: 'VM "full" has no free slot for usb-disk1',
    });
    assert.deepEqual(r.devices[0]!.putBack, { action: 'attach', vm: 'vm1', device: 'usb-disk1', ok: true });
    assert.deepEqual(attachesTo(since), ['detach vm1 usb-disk1', 'attach full usb-disk1', 'attach vm1 usb-disk1']);
  });

  it('move says when neither VM takes the device, and tries nothing more after a failed detach', async () => {
    const stranded = await client.move('full2', 'full', ['usb-disk1']);
    assert.equal(stranded.devices[0]!.status, 'stranded');
    assert.equal(stranded.devices[0]!.putBack?.ok, false);
    const since = stack.journal().length;
    const r = await client.move('vm1', 'vm2', ['fail-RemovalFailed']);
    assert.equal(r.devices[0]!.status, 'not-detached');
    assert.equal(r.devices[0]!.attach, undefined);
    assert.deepEqual(attachesTo(since), ['detach vm1 fail-RemovalFailed']);
  });

  it('move starts nothing for a label the VM does not have, or a VM that does not exist', async () => {
    const since = stack.journal().length;
    await assert.rejects(client.move('vm1', 'vm2', ['usb-disk1', 'nope']), (e: unknown) => {
      assert.ok(e instanceof VmdevClientError);
      assert.equal(e.errorName, `${E}DeviceNotFound`);
      assert.equal(e.message, 'VM "vm1" has no device labelled "nope" (it has usb-disk1, fail-RemovalFailed)');
      return true;
    });
    for (const [from, to] of [
      ['ghost', 'vm2'],
      ['vm1', 'ghost'],
    ] as const) {
      await assert.rejects(
        client.move(from, to, ['usb-disk1']),
        (e: unknown) => e instanceof VmdevClientError && e.errorName === `${E}VmNotFound`,
      );
    }
    assert.deepEqual(attachesTo(since), [], 'nothing was detached or attached');
  });
});

describe('vmdevd/client with a detach that stays pending', () => {
  // The daemon ends no device for an hour, and the test backend confirms a
  // "wait" device only when told: nothing but the client's own timeoutMs
  // can end the wait below.
  let stack: Stack;
  let client: VmdevClient;
  before(async () => {
    stack = await startStack({ config: { detachTimeoutSeconds: 3600 } });
    client = await VmdevClient.connect({ bus: stack.bus.address });
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it('detach stops waiting at timeoutMs and lists what is pending', async () => {
    const r = await client.detach('vm1', { 'wait-1': ['type=disk', 'target=vde'] }, { timeoutMs: 200 });
    assert.equal(r.accepted, true);
    assert.deepEqual(r.pending, ['wait-1']);
    assert.deepEqual(r.outcomes, []);
  });
});
