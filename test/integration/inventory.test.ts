/**
 * GetDevices and AttachDevices against the real daemon on a private
 * dbus-daemon, with backends from the test-backend plugin: the listing and
 * how the core checks it, the attach outcomes and their signals, and every
 * bad input refused before anything starts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { CallError, Signal, SignalLog } from '../harness/bus-client.js';
import { startStack, type Stack } from '../harness/stack.js';

const E = 'org.example.dbustest.Error.';
const INVALID_ARGS = 'org.freedesktop.DBus.Error.InvalidArgs';

async function rejects(promise: Promise<unknown>, name: string, message?: RegExp): Promise<CallError> {
  try {
    await promise;
  } catch (err) {
    const e = err as CallError;
    assert.equal(e.type, name, `expected ${name}, got ${e.type}: ${e.text}`);
    if (message) assert.match(e.text, message);
    assert.doesNotMatch(e.text, /\n\s+at /, 'no stack trace may reach a caller');
    return e;
  }
  assert.fail(`expected the call to fail with ${name}`);
}

const VMS = [
  { name: 'vm1', uuid: '11111111-1111-4111-8111-111111111111', type: 'ivi', state: 'running' },
  { name: 'vm2', uuid: '22222222-2222-4222-8222-222222222222', type: 'cluster', state: 'running' },
  { name: 'vm3', type: 'cluster', state: 'shutoff' },
  { name: 'full', state: 'running' },
  { name: 'hang-list', state: 'running' },
  { name: 'broken-list', state: 'running' },
  { name: 'odd', state: 'running' },
];

/** What the backend lists for VM "odd": one good device among ones the grammar refuses. */
const ODD_DEVICES = [
  { label: 'good', tokens: ['type=disk', 'target=vdb', 'source=/images/good.img', 'bus=virtio'] },
  { label: 'bad label', tokens: ['type=disk', 'target=vdc'] },
  { label: 'relative', tokens: ['type=disk', 'target=vdd', 'source=images/relative.img'] },
  { label: 'good', tokens: ['type=disk', 'target=vde'] },
  { label: 'unknown', tokens: ['type=tape', 'target=st0'] },
];

const OUTCOMES = {
  detach: ['DeviceDetached', 'DeviceDetachFailed'],
  attach: ['DeviceAttached', 'DeviceAttachFailed'],
};

function isOutcome(s: Signal, label: string, kind?: 'detach' | 'attach'): boolean {
  const members = kind === undefined ? [...OUTCOMES.detach, ...OUTCOMES.attach] : OUTCOMES[kind];
  return members.includes(s.member) && s.body[1] === label;
}

describe('GetDevices and AttachDevices', () => {
  let stack: Stack;
  let signals: SignalLog;
  const getDevices = async (selector: string) =>
    (await stack.client.call({ member: 'GetDevices', signature: 's', body: [selector] }))[0] as Record<
      string,
      string[]
    >;
  const attachDevices = async (selector: string, devices: Record<string, string[]>) =>
    (await stack.client.call({ member: 'AttachDevices', signature: 'sa{sas}', body: [selector, devices] }))[0];
  const outcome = (label: string, kind?: 'detach' | 'attach') =>
    signals.waitFor((s) => isOutcome(s, label, kind), 10_000, `outcome of ${label}`);
  const journalOps = (since: number, op: string) =>
    stack
      .journal()
      .slice(since)
      .filter((j) => j['op'] === op);

  before(async () => {
    stack = await startStack({
      backends: [{ vms: VMS, refuseAttachTo: ['full'], devices: { odd: ODD_DEVICES } }],
    });
    signals = await stack.client.subscribeAll();
  });
  after(async () => {
    await stack?.stop();
  });

  describe('GetDevices', () => {
    it('lists the devices of the VM the selector names, by name, UUID or type', async () => {
      const expected = {
        'virtio-disk1': ['type=disk', 'target=vdb', 'source=/var/lib/images/vm1-data.img', 'bus=virtio', 'format=raw'],
        net0: ['type=interface', 'mac=52:54:00:00:00:01', 'network=default', 'model=virtio'],
      };
      assert.deepEqual(await getDevices('vm1'), expected);
      assert.deepEqual(await getDevices('11111111-1111-4111-8111-111111111111'), expected);
      assert.deepEqual(await getDevices('ivi'), expected);
    });

    it('lists a shut-off VM too', async () => {
      assert.deepEqual(Object.keys(await getDevices('vm3')), ['virtio-disk1', 'net0']);
    });

    it('answers VmNotFound when nothing matches, and AmbiguousSelector as TestMethod does', async () => {
      await rejects(getDevices('no-such-vm'), `${E}VmNotFound`, /no VM matches "no-such-vm"/);
      await rejects(getDevices('cluster'), `${E}AmbiguousSelector`, /matches 2 VMs: vm2, vm3/);
      await rejects(getDevices(''), INVALID_ARGS, /selector is empty/);
      await rejects(
        stack.client.call({ member: 'GetDevices', signature: 'ss', body: ['vm1', 'x'] }),
        INVALID_ARGS,
        /GetDevices takes \(s\), not \(ss\)/,
      );
    });

    it('passes on what the backend fails with, and ends a backend that does not answer with Timeout', async () => {
      await rejects(getDevices('broken-list'), `${E}Failed`, /cannot read broken-list/);
      const t0 = performance.now();
      await rejects(
        getDevices('hang-list'),
        `${E}Timeout`,
        /listing the devices of VM "hang-list" did not finish within 2 s/,
      );
      assert.ok(performance.now() - t0 >= 2000, 'not before detachTimeoutSeconds');
    });

    it('passes on only what TestMethod would take back, and logs the rest', async () => {
      assert.deepEqual(await getDevices('odd'), {
        good: ['type=disk', 'target=vdb', 'source=/images/good.img', 'bus=virtio'],
        // A description the grammar refuses: listed by what names it, so it cannot be attached half described.
        relative: ['type=disk', 'target=vdd'],
      });
      for (const [label, reason] of [
        ['bad label', 'an invalid label'],
        ['good', 'a label listed twice'],
        ['unknown', 'unknown type'],
      ]) {
        await stack.daemon.waitForOutput(
          new RegExp(`leaving out a device the backend listed wrongly vm=odd label="?${label}"? reason=.*${reason}`),
        );
      }
      await stack.daemon.waitForOutput(
        /listing a device by the tokens that name it only vm=odd label=relative reason=.*malformed source/,
      );
    });

    it('is logged, one line per call', async () => {
      await getDevices('vm2');
      await stack.daemon.waitForOutput(
        new RegExp(
          `request: GetDevices caller=${stack.client.uniqueName.replace('.', '\\.')} selector=vm2 result="2 devices of vm2"`,
        ),
      );
    });
  });

  describe('the round trip', () => {
    it('takes the map GetDevices gave back in TestMethod, then in AttachDevices, which builds the full XML', async () => {
      const devices = await getDevices('vm2');
      const since = stack.journal().length;
      assert.equal(await stack.client.testMethod('vm2', devices), true);
      for (const label of Object.keys(devices)) assert.equal((await outcome(label, 'detach')).member, 'DeviceDetached');
      assert.equal(await attachDevices('vm2', devices), true);
      for (const label of Object.keys(devices)) assert.equal((await outcome(label, 'attach')).member, 'DeviceAttached');
      assert.deepEqual(
        journalOps(since, 'detach').map((j) => j['xml']),
        [
          '<disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="/var/lib/images/vm2-data.img"/><target dev="vdb" bus="virtio"/></disk>',
          '<interface type="network"><mac address="52:54:00:00:00:01"/><source network="default"/><model type="virtio"/></interface>',
        ],
      );
      assert.deepEqual(
        journalOps(since, 'attach').map((j) => [j['vm'], j['label'], j['xml']]),
        journalOps(since, 'detach').map((j) => [j['vm'], j['label'], j['xml']]),
        'the same devices go back',
      );
    });
  });

  describe('AttachDevices', () => {
    it('attaches every device, each confirmed by DeviceAttached with the VM key and label', async () => {
      assert.equal(
        await attachDevices('ivi', {
          a1: ['type=disk', 'target=vdc', 'source=/images/a1.img', 'bus=virtio'],
          a2: ['type=usb', 'vendor=0x1234', 'product=0xabcd'],
        }),
        true,
      );
      for (const label of ['a1', 'a2']) assert.deepEqual((await outcome(label)).body, ['vm1', label]);
    });

    it('returns false when no VM matches, and starts nothing', async () => {
      const since = stack.journal().length;
      assert.equal(await attachDevices('no-such-vm', { a: ['type=pci', 'address=01:00.0'] }), false);
      assert.equal(journalOps(since, 'attach').length, 0);
    });

    it('rejects a selector that matches several VMs', async () => {
      await rejects(attachDevices('cluster', { a: ['type=pci', 'address=01:00.0'] }), `${E}AmbiguousSelector`);
    });

    it('reports a refusal and every failure kind with DeviceAttachFailed', async () => {
      assert.equal(await attachDevices('full', { refused: ['type=pci', 'address=02:00.0'] }), true);
      const refused = await outcome('refused');
      assert.equal(refused.member, 'DeviceAttachFailed');
      assert.deepEqual(refused.body, ['full', 'refused', `${E}Failed`, 'VM "full" has no free slot for refused']);
      const kinds = ['DeviceNotFound', 'NotSupported', 'BackendUnavailable', 'Failed'];
      const devices = Object.fromEntries(kinds.map((k, i) => [`fail-${k}`, ['type=pci', `address=03:0${i}.0`]]));
      assert.equal(await attachDevices('vm1', devices), true);
      for (const kind of kinds) {
        const s = await outcome(`fail-${kind}`);
        assert.equal(s.member, 'DeviceAttachFailed');
        assert.equal(s.body[2], `${E}${kind}`);
      }
    });

    it('ends an attach the backend never confirms with Timeout, once', async () => {
      const t0 = performance.now();
      assert.equal(await attachDevices('vm1', { hangA: ['type=pci', 'address=04:00.0'] }), true);
      const s = await outcome('hangA');
      assert.equal(s.member, 'DeviceAttachFailed');
      assert.equal(s.body[2], `${E}Timeout`);
      assert.equal(s.body[3], 'the device was not confirmed attached within 2 s');
      assert.ok(s.at - t0 >= 2000, 'not before detachTimeoutSeconds');
      // A later call's reply: every signal sent before it has arrived.
      await getDevices('vm1');
      assert.equal(signals.signals.filter((x) => isOutcome(x, 'hangA')).length, 1);
    });

    it('is logged, one line per request', async () => {
      await attachDevices('vm1', { logged: ['type=pci', 'address=05:00.0'] });
      await stack.daemon.waitForOutput(
        new RegExp(
          `request: AttachDevices caller=${stack.client.uniqueName.replace('.', '\\.')} selector=vm1 devices=logged result="accepted for vm1"`,
        ),
      );
    });
  });

  describe('bad inputs start nothing', () => {
    const disk = (...extra: string[]) => ['type=disk', 'target=vdb', ...extra];
    const nic = (...extra: string[]) => ['type=interface', 'mac=52:54:00:00:00:09', ...extra];
    const both: Array<[string, string[], RegExp]> = [
      ['a relative source', disk('source=images/d.img', 'bus=virtio'), /malformed source "images\/d\.img"/],
      ['a source with ..', disk('source=/images/../etc/shadow', 'bus=virtio'), /malformed source/],
      ['a source with a control character', disk('source=/images/d\u001b.img', 'bus=virtio'), /malformed source/],
      ['a source that is too long', disk(`source=/${'d'.repeat(240)}`, 'bus=virtio'), /malformed source/],
      ['an unknown bus', disk('source=/images/d.img', 'bus=ide'), /malformed bus "ide"/],
      ['an unknown format', disk('source=/images/d.img', 'bus=virtio', 'format=vmdk'), /malformed format "vmdk"/],
      ['a bad readonly', disk('source=/images/d.img', 'bus=virtio', 'readonly=1'), /malformed readonly "1"/],
      ['a bad network name', nic('network=a/b'), /malformed network "a\/b"/],
      ['a bad bridge name', nic(`bridge=${'b'.repeat(16)}`), /malformed bridge/],
      ['user other than yes', nic('user=no'), /malformed user "no"/],
      ['an unknown model', nic('user=yes', 'model=pcnet'), /malformed model "pcnet"/],
      ['two kinds of network', nic('network=default', 'user=yes'), /give only one of network, bridge or user/],
    ];
    const attachOnly: Array<[string, string[], RegExp]> = [
      ['a disk without source', disk('bus=virtio'), /an attach of type disk requires source and bus; missing source/],
      ['a disk without bus', disk('source=/images/d.img'), /missing bus/],
      ['an interface without network', nic('model=virtio'), /requires one of network, bridge or user/],
      ['an alias', ['type=alias', 'name=ua-disk1'], /type alias cannot be attached/],
    ];
    const call = (member: string, devices: Record<string, string[]>) =>
      stack.client.call({ member, signature: 'sa{sas}', body: ['vm1', devices] });

    for (const [what, tokens, message] of both) {
      it(`refuses ${what} with InvalidArgs, in TestMethod and AttachDevices`, async () => {
        const since = stack.journal().length;
        for (const member of ['TestMethod', 'AttachDevices']) {
          // Next to a good device: the whole request is refused.
          const devices = { ok: ['type=pci', 'address=06:00.0'], bad: tokens };
          const e = await rejects(call(member, devices), INVALID_ARGS, message);
          assert.match(e.text, /^device "bad": /);
        }
        await getDevices('vm1');
        assert.deepEqual(journalOps(since, 'detach').concat(journalOps(since, 'attach')), [], 'nothing was started');
      });
    }

    for (const [what, tokens, message] of attachOnly) {
      it(`refuses to attach ${what}, and starts nothing`, async () => {
        const since = stack.journal().length;
        await rejects(
          call('AttachDevices', { ok: ['type=pci', 'address=06:00.0'], bad: tokens }),
          INVALID_ARGS,
          message,
        );
        await getDevices('vm1');
        assert.deepEqual(journalOps(since, 'attach'), [], 'nothing was started');
      });
    }
  });
});
