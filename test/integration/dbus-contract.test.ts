/**
 * The D-Bus contract, member by member, against the real daemon on a private
 * dbus-daemon, with backends from the test-backend plugin.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import dbus from 'dbus-next';
import { create } from 'xmlbuilder2';
import {
  INTERFACE,
  OBJECT_PATH,
  TestClient,
  type CallError,
  type Signal,
  type SignalLog,
} from '../harness/bus-client.js';
import { deadline } from '../harness/deadline.js';
import { startStack, type Stack } from '../harness/stack.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

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

function outcomes(log: SignalLog, label: string): Signal[] {
  return log.signals.filter(
    (s) => (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[1] === label,
  );
}

/** Canonical text of an element: no whitespace-only text, attributes sorted. */
function canonical(xml: string, ifaceName: string): string {
  const obj = create(xml).end({ format: 'object' }) as Record<string, unknown>;
  const node = obj['node'] as Record<string, unknown>;
  const ifaces = ([] as unknown[]).concat(node['interface'] ?? []) as Array<Record<string, unknown>>;
  const ours = ifaces.find((i) => i['@name'] === ifaceName);
  assert.ok(ours, `no interface ${ifaceName} in\n${xml}`);
  return JSON.stringify(ours, (_k, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(
        Object.entries(v as Record<string, unknown>)
          .filter(([k]) => k !== '#')
          .sort(([a], [b]) => a.localeCompare(b)),
      );
    }
    return v;
  });
}

describe('D-Bus contract', () => {
  let stack: Stack;
  let signals: SignalLog;

  before(async () => {
    stack = await startStack({ backends: [{ holdMs: 2500 }] });
    signals = await stack.client.subscribeAll();
  });
  after(async () => {
    await stack?.stop();
  });

  describe('Introspect', () => {
    it('answers with the interface file, argument names and annotations included', async () => {
      const [live] = (await stack.client.call({
        interface: 'org.freedesktop.DBus.Introspectable',
        member: 'Introspect',
      })) as [string];
      const file = readFileSync(`${REPO_ROOT}/dbus/org.example.dbustest.xml`, 'utf8');
      assert.equal(canonical(live, INTERFACE), canonical(file, INTERFACE));
      assert.match(live, /<arg name="selector" type="s" direction="in">/);
      assert.match(live, /<arg name="message" type="s">/);
    });

    it('keeps the standard interfaces', async () => {
      const [live] = (await stack.client.call({
        interface: 'org.freedesktop.DBus.Introspectable',
        member: 'Introspect',
      })) as [string];
      for (const name of [
        'org.freedesktop.DBus.Properties',
        'org.freedesktop.DBus.Introspectable',
        'org.freedesktop.DBus.Peer',
      ]) {
        assert.match(live, new RegExp(`<interface name="${name.replace(/\./g, '\\.')}">`));
      }
      await stack.client.call({ interface: 'org.freedesktop.DBus.Peer', member: 'Ping' });
    });

    it('introspects the parent path with the child node', async () => {
      const [root] = (await stack.client.call({
        path: '/org/example',
        interface: 'org.freedesktop.DBus.Introspectable',
        member: 'Introspect',
      })) as [string];
      assert.match(root, /<node name="dbustest"\/>/);
    });
  });

  describe('properties', () => {
    it('TestProperty maps every VM to its state', async () => {
      assert.deepEqual(await stack.client.getProperty('TestProperty'), {
        vm1: 'running',
        vm2: 'paused',
        vm3: 'shutoff',
      });
    });

    it('Backends says each backend is connected', async () => {
      assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected' });
    });

    it('GetAll returns both properties', async () => {
      const [all] = (await stack.client.call({
        interface: 'org.freedesktop.DBus.Properties',
        member: 'GetAll',
        signature: 's',
        body: [INTERFACE],
      })) as [Record<string, { value: unknown }>];
      assert.deepEqual(Object.keys(all).sort(), ['Backends', 'TestProperty', 'Vms']);
      assert.equal((all['TestProperty']!.value as Record<string, string>)['vm1'], 'running');
    });

    it('Vms gives each VM its name, state, backend, UUID and type', async () => {
      assert.deepEqual((await stack.client.getProperty<Record<string, Record<string, string>>>('Vms'))['vm2'], {
        name: 'vm2',
        state: 'paused',
        backend: 'test',
        uuid: '22222222-2222-4222-8222-222222222222',
        type: 'cluster',
      });
    });

    it('Get of an unknown property is InvalidArgs', async () => {
      await rejects(stack.client.getProperty('Nope'), INVALID_ARGS, /no property "Nope"/);
    });

    it('Set of Backends is refused with exactly one error reply', async () => {
      const monitor = await TestClient.connect(stack.bus.address);
      try {
        const seen: Array<{ type: number; replySerial: unknown }> = [];
        let sawTwoCalls!: () => void;
        const twoCalls = new Promise<void>((resolve) => (sawTwoCalls = resolve));
        await monitor.call({
          destination: 'org.freedesktop.DBus',
          path: '/org/freedesktop/DBus',
          interface: 'org.freedesktop.DBus.Monitoring',
          member: 'BecomeMonitor',
          signature: 'asu',
          body: [[`type='error'`, `type='method_return'`], 0],
        });
        monitor.bus.on('message', (m) => {
          if (m.destination !== stack.client.uniqueName) return;
          seen.push({ type: m.type, replySerial: m.replySerial });
          if (new Set(seen.map((s) => s.replySerial)).size === 2) sawTwoCalls();
        });
        await rejects(stack.client.setProperty('Backends', 'a{ss}', {}), 'org.freedesktop.DBus.Error.PropertyReadOnly');
        await stack.client.getProperty('Backends');
        // The monitor gets the daemon's messages in the order it sent them:
        // once it has the reply to Get, it has every reply to Set.
        await deadline(twoCalls, 30_000, 'replies to Set and Get at the monitor');
        const serials = seen.map((s) => s.replySerial);
        assert.equal(new Set(serials).size, serials.length, `a call got two replies: ${JSON.stringify(seen)}`);
      } finally {
        monitor.close();
      }
    });
  });

  describe('TestMethod', () => {
    it('detaches every device and reports each one by label and VM key', async () => {
      const before = stack.journal().length;
      const accepted = await stack.client.testMethod('vm1', {
        d1: ['type=disk', 'target=vdb'],
        d2: ['type=usb', 'vendor=0x1234', 'product=0xABCD'],
      });
      assert.equal(accepted, true);
      const d1 = await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'd1');
      const d2 = await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'd2');
      assert.deepEqual(d1.body, ['vm1', 'd1']);
      assert.deepEqual(d2.body, ['vm1', 'd2']);
      const started = stack
        .journal()
        .slice(before)
        .filter((j) => j['op'] === 'detach');
      assert.deepEqual(
        started.map((j) => j['xml']),
        [
          '<disk type="file" device="disk"><target dev="vdb"/></disk>',
          '<hostdev mode="subsystem" type="usb"><source><vendor id="0x1234"/><product id="0xabcd"/></source></hostdev>',
        ],
      );
    });

    it('finds a VM by UUID (any case) and by a unique type, and reports the VM key', async () => {
      assert.equal(
        await stack.client.testMethod('11111111-1111-4111-8111-111111111111', { byUuid: ['type=disk', 'target=vdc'] }),
        true,
      );
      assert.equal(
        await stack.client.testMethod('11111111-1111-4111-8111-111111111111'.toUpperCase(), {
          byUuidUpper: ['type=disk', 'target=vdd'],
        }),
        true,
      );
      assert.equal(await stack.client.testMethod('ivi', { byType: ['type=disk', 'target=vde'] }), true);
      for (const label of ['byUuid', 'byUuidUpper', 'byType']) {
        const s = await signals.waitFor((x) => x.member === 'DeviceDetached' && x.body[1] === label);
        assert.equal(s.body[0], 'vm1');
      }
    });

    it('returns false when no VM matches, and starts nothing', async () => {
      const before = stack.journal().length;
      assert.equal(await stack.client.testMethod('no-such-vm', { d1: ['type=disk', 'target=vdb'] }), false);
      assert.deepEqual(await stack.journalUntilBarrier(before), []);
    });

    it('rejects a selector that matches several VMs, naming them', async () => {
      const before = stack.journal().length;
      await rejects(
        stack.client.testMethod('cluster', { d1: ['type=disk', 'target=vdb'] }),
        `${E}AmbiguousSelector`,
        /vm2, vm3/,
      );
      assert.deepEqual(await stack.journalUntilBarrier(before), []);
    });

    it('rejects an empty selector', async () => {
      await rejects(
        stack.client.testMethod('', { d1: ['type=disk', 'target=vdb'] }),
        INVALID_ARGS,
        /selector is empty/,
      );
    });

    it('reports each failure kind of the backend with its error name', async () => {
      const kinds = ['DeviceNotFound', 'NotSupported', 'RemovalFailed', 'BackendUnavailable', 'Failed'];
      const devices = Object.fromEntries(kinds.map((k, i) => [`fail-${k}`, ['type=disk', `target=vd${'bcdef'[i]}`]]));
      assert.equal(await stack.client.testMethod('vm1', devices), true);
      for (const kind of kinds) {
        const s = await signals.waitFor((x) => x.member === 'DeviceDetachFailed' && x.body[1] === `fail-${kind}`);
        assert.equal(s.body[0], 'vm1');
        assert.equal(s.body[2], `${E}${kind}`);
        assert.match(s.body[3] as string, new RegExp(`failed fail-${kind} with ${kind}`));
      }
    });

    it('turns a backend that throws into Failed without a stack trace', async () => {
      assert.equal(await stack.client.testMethod('vm1', { throwing: ['type=disk', 'target=vdz'] }), true);
      const s = await signals.waitFor((x) => x.member === 'DeviceDetachFailed' && x.body[1] === 'throwing');
      assert.equal(s.body[2], `${E}Failed`);
      assert.match(s.body[3] as string, /told to throw/);
      assert.doesNotMatch(s.body[3] as string, /\n\s+at /);
    });

    it('replies before a slow device is confirmed, and confirms it', async () => {
      // A connection of its own, whose messages are recorded in the order
      // they arrive: the reply and the outcome come from the daemon on one
      // connection, so their order is the order it sent them in.
      const own = await TestClient.connect(stack.bus.address);
      try {
        const log = await own.subscribeAll();
        const arrived: string[] = [];
        own.bus.on('message', (m: dbus.Message) =>
          arrived.push(m.type === dbus.MessageType.SIGNAL ? `${m.member} ${String(m.body[1])}` : 'reply'),
        );
        const t0 = performance.now();
        assert.equal(await own.testMethod('vm1', { slow1: ['type=disk', 'target=vdh'] }), true);
        const s = await log.waitFor((x) => x.member === 'DeviceDetached' && x.body[1] === 'slow1');
        assert.deepEqual(
          arrived.filter((a) => a === 'reply' || a.endsWith(' slow1')),
          ['reply', 'DeviceDetached slow1'],
          'the reply did not wait for the detach',
        );
        // The test backend takes at least slowMs (1 s) to confirm it.
        assert.ok(s.at - t0 >= 900, 'the outcome came after the slow detach');
      } finally {
        own.close();
      }
    });

    it('ends a device the backend never confirms with Timeout, once', async () => {
      const t0 = performance.now();
      assert.equal(await stack.client.testMethod('vm1', { hang1: ['type=disk', 'target=vdi'] }), true);
      const s = await signals.waitFor((x) => x.member === 'DeviceDetachFailed' && x.body[1] === 'hang1', 30_000);
      assert.equal(s.body[2], `${E}Timeout`);
      assert.match(s.body[3] as string, /within 2 s/);
      assert.ok(s.at - t0 >= 2000, 'not before detachTimeoutSeconds');
      // A later call's reply: every signal the daemon sent before it has arrived.
      await stack.client.getProperty('Backends');
      assert.equal(outcomes(signals, 'hang1').length, 1);
    });

    it('lets the backend confirm a removal it verifies at the timeout', async () => {
      assert.equal(await stack.client.testMethod('vm1', { verify1: ['type=disk', 'target=vdj'] }), true);
      const s = await signals.waitFor(
        (x) => (x.member === 'DeviceDetached' || x.member === 'DeviceDetachFailed') && x.body[1] === 'verify1',
        30_000,
      );
      assert.equal(s.member, 'DeviceDetached');
      assert.ok(
        stack.journal().some((j) => j['op'] === 'verified' && j['label'] === 'verify1' && j['reason'] === 'timeout'),
      );
    });

    it('counts the timeout from when the backend issued the detach', async () => {
      // The backend holds this device for holdMs (2.5 s, longer than the 2 s
      // timeout) before issuing it; it is then confirmed at once.
      assert.equal(await stack.client.testMethod('vm1', { queue1: ['type=disk', 'target=vdk'] }), true);
      const s = await signals.waitFor(
        (x) => (x.member === 'DeviceDetached' || x.member === 'DeviceDetachFailed') && x.body[1] === 'queue1',
        30_000,
      );
      assert.equal(s.member, 'DeviceDetached', JSON.stringify(s.body));
    });

    it('joins a request for a device already pending on the same VM', async () => {
      const before = stack.journal().length;
      assert.equal(await stack.client.testMethod('vm1', { slowA: ['type=interface', 'mac=52:54:00:00:00:01'] }), true);
      assert.equal(await stack.client.testMethod('vm1', { slowB: ['type=interface', 'mac=52:54:00:00:00:01'] }), true);
      await signals.waitFor((x) => x.member === 'DeviceDetached' && x.body[1] === 'slowA');
      await signals.waitFor((x) => x.member === 'DeviceDetached' && x.body[1] === 'slowB');
      const issued = stack
        .journal()
        .slice(before)
        .filter((j) => j['op'] === 'detach');
      assert.equal(issued.length, 1, `one detach was issued: ${JSON.stringify(issued)}`);
      assert.equal(outcomes(signals, 'slowA').length, 1);
      assert.equal(outcomes(signals, 'slowB').length, 1);
    });

    it('answers a wrong signature with InvalidArgs and an unknown method with UnknownMethod', async () => {
      await rejects(
        stack.client.call({ member: 'TestMethod', signature: 's', body: ['vm1'] }),
        INVALID_ARGS,
        /takes \(sa\{sas\}\), not \(s\)/,
      );
      await rejects(
        stack.client.call({ member: 'TestMethod', signature: 'sa{ss}', body: ['vm1', { a: 'b' }] }),
        INVALID_ARGS,
      );
      await rejects(stack.client.call({ member: 'Nope' }), 'org.freedesktop.DBus.Error.UnknownMethod');
    });

    it('accepts a call without an interface field', async () => {
      const [ok] = await stack.client.call({
        interface: undefined,
        member: 'TestMethod',
        signature: 'sa{sas}',
        body: ['vm1', { noiface: ['type=disk', 'target=vdl'] }],
      });
      assert.equal(ok, true);
      await signals.waitFor((x) => x.member === 'DeviceDetached' && x.body[1] === 'noiface');
    });

    it('logs one line per request with caller, selector, labels and result', async () => {
      await stack.client.testMethod('vm1', { logged: ['type=disk', 'target=vdm'] });
      await stack.daemon.waitForOutput(
        new RegExp(
          `request: TestMethod caller=${stack.client.uniqueName.replace('.', '\\.')} selector=vm1 devices=logged result="accepted for vm1"`,
        ),
      );
    });
  });

  describe('bad devices', () => {
    const long = 'x'.repeat(300);
    const cases: Array<[string, Record<string, string[]>, RegExp]> = [
      ['an empty map', {}, /no devices given/],
      ['an unknown type', { d: ['type=floppy'] }, /unknown type "floppy"/],
      ['a missing type', { d: ['target=vdb'] }, /"type=…" is required/],
      [
        'an unknown token',
        { d: ['type=disk', 'target=vdb', 'cache=none'] },
        /unknown token "cache" for type disk \(known: target, source, bus, format, readonly, persistent\)/,
      ],
      ['a repeated token', { d: ['type=disk', 'target=vdb', 'target=vdc'] }, /"target" is given more than once/],
      ['a token without =', { d: ['type=disk', 'vdb'] }, /not of the form name=value/],
      ['a missing required token', { d: ['type=scsi', 'adapter=scsi_host0', 'bus=0', 'target=0'] }, /missing unit/],
      ['a half USB pair', { d: ['type=usb', 'vendor=0x1234'] }, /missing product/],
      ['a malformed PCI address', { d: ['type=pci', 'address=0000:01:00'] }, /malformed address/],
      ['a PCI slot out of range', { d: ['type=pci', 'address=01:20.0'] }, /malformed address/],
      ['a malformed MAC', { d: ['type=interface', 'mac=52:54:00:12:34'] }, /malformed mac/],
      ['a malformed UUID', { d: ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3'] }, /malformed uuid/],
      ['a malformed USB id', { d: ['type=usb', 'vendor=1234', 'product=0x5678'] }, /malformed vendor/],
      ['a bad persistent', { d: ['type=disk', 'target=vdb', 'persistent=maybe'] }, /malformed persistent/],
      ['a bad label', { 'bad label': ['type=disk', 'target=vdb'] }, /a label is 1 to 64 characters/],
      ['a too long label', { ['l'.repeat(65)]: ['type=disk', 'target=vdb'] }, /a label is 1 to 64 characters/],
      ['an over-long value', { d: ['type=alias', `name=${long}`] }, /at most 256 are allowed/],
      [
        'too many devices',
        Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`d${i}`, ['type=disk', 'target=vdb']])),
        /257 devices given, at most 256/,
      ],
      [
        'the same device twice',
        { a: ['type=disk', 'target=vdb'], b: ['type=disk', 'target=vdb'] },
        /names the same device as "a"/,
      ],
    ];
    for (const [what, devices, message] of cases) {
      it(`rejects ${what} with InvalidArgs and starts nothing`, async () => {
        const before = stack.journal().length;
        const e = await rejects(stack.client.testMethod('vm1', devices), INVALID_ARGS, message);
        assert.ok(e.text.length < 400, 'one sentence');
        assert.deepEqual(await stack.journalUntilBarrier(before), [], 'no detach was started');
      });
    }

    it('answers a call longer than 4 MiB with LimitsExceeded before it reaches the handler', async () => {
      const before = stack.journal().length;
      const huge = 'x'.repeat(5 * 1024 * 1024);
      await rejects(
        stack.client.testMethod(huge, { d: ['type=disk', 'target=vdb'] }),
        'org.freedesktop.DBus.Error.LimitsExceeded',
        /bytes long; vmdevd reads calls of at most 4194304 bytes/,
      );
      await stack.daemon.waitForOutput(/dropped a message that is too long caller=:1\.\d+ member=TestMethod bytes=\d+/);
      // The barrier is a request on the same connection: it goes on, and its
      // log line follows any the handler would have written for the big call.
      assert.deepEqual(await stack.journalUntilBarrier(before), []);
      await stack.daemon.waitForOutput(/request: TestMethod [^\n]*devices=barrier-\d+ result="accepted for vm1"/);
      assert.doesNotMatch(stack.daemon.output(), /request: TestMethod [^\n]*selector="?xxxxxxxx/, 'the handler saw it');
    });

    it('rejects a whole request when one of several devices is bad', async () => {
      const before = stack.journal().length;
      await rejects(
        stack.client.testMethod('vm1', { good: ['type=disk', 'target=vdb'], bad: ['type=disk'] }),
        INVALID_ARGS,
        /device "bad"/,
      );
      assert.deepEqual(await stack.journalUntilBarrier(before), []);
    });

    it('accepts exactly 256 devices', async () => {
      const devices = Object.fromEntries(
        Array.from({ length: 256 }, (_, i) => [`many${i}`, ['type=alias', `name=ua-${i}`]]),
      );
      assert.equal(await stack.client.testMethod('vm2', devices), true);
      await signals.waitForCount((s) => s.member === 'DeviceDetached' && String(s.body[1]).startsWith('many'), 256);
    });
  });

  describe('writing TestProperty', () => {
    it('applies every state and TestSignal follows the transitions', async () => {
      await stack.client.setProperty('TestProperty', 'a{ss}', { vm1: 'paused', vm3: 'running' });
      await signals.waitFor(
        (s) =>
          s.member === 'TestSignal' &&
          (s.body[0] as Record<string, string>)['vm1'] === 'paused' &&
          (s.body[0] as Record<string, string>)['vm3'] === 'running',
      );
      const changed = await signals.waitFor(
        (s) =>
          s.member === 'PropertiesChanged' &&
          s.interface === 'org.freedesktop.DBus.Properties' &&
          (s.body[1] as Record<string, { value: Record<string, string> }>)['TestProperty']?.value['vm1'] === 'paused',
      );
      assert.equal(changed.body[0], INTERFACE);
      assert.deepEqual(changed.body[2], ['Vms'], 'Vms is invalidated in the same signal');
      assert.equal((await stack.client.getProperty<Record<string, string>>('TestProperty'))['vm1'], 'paused');
      await stack.client.setProperty('TestProperty', 'a{ss}', { vm1: 'running', vm3: 'shutoff' });
      await signals.waitFor(
        (s) =>
          s.member === 'TestSignal' &&
          (s.body[0] as Record<string, string>)['vm1'] === 'running' &&
          (s.body[0] as Record<string, string>)['vm3'] === 'shutoff',
      );
    });

    it('rejects an unknown VM or state and applies nothing', async () => {
      const before = stack.journal().length;
      await rejects(
        stack.client.setProperty('TestProperty', 'a{ss}', { vm1: 'paused', ghost: 'running' }),
        INVALID_ARGS,
        /no VM is named "ghost"/,
      );
      await rejects(
        stack.client.setProperty('TestProperty', 'a{ss}', { vm1: 'paused', vm2: 'asleep' }),
        INVALID_ARGS,
        /unknown state "asleep"/,
      );
      await rejects(stack.client.setProperty('TestProperty', 'a{sv}', {}), INVALID_ARGS, /has type a\{ss\}/);
      assert.deepEqual(await stack.journalUntilBarrier(before), [], 'nothing was applied');
      assert.equal((await stack.client.getProperty<Record<string, string>>('TestProperty'))['vm1'], 'running');
    });
  });

  it('the signals come from the well-known name owner and the object path', async () => {
    const owner = await stack.client.nameOwner();
    const s = signals.signals.find((x) => x.member === 'DeviceDetached')!;
    assert.equal(s.sender, owner);
    assert.equal(s.path, OBJECT_PATH);
  });
});
