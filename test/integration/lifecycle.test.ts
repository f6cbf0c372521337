/**
 * Start and stop: config and flag errors, the first TestSignal, clean
 * shutdown on SIGTERM and SIGINT with an outcome for every pending detach,
 * a bus name that is taken, and a bus that goes away.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import dbus from 'dbus-next';
import { BUS_NAME, TestClient, type CallError } from '../harness/bus-client.js';
import { startPrivateBus, type PrivateBus } from '../harness/dbus-daemon.js';
import { deadline } from '../harness/deadline.js';
import { run } from '../harness/process.js';
import { DEFAULT_VMS, startStack, TEST_BACKEND } from '../harness/stack.js';
import { makeTempDir } from '../harness/temp-dir.js';
import { startVmdevd, VMDEVD_BIN } from '../harness/vmdevd-process.js';

const EX_CONFIG = 78;
const EX_UNAVAILABLE = 69;

describe('config and flags', () => {
  const dir = makeTempDir();
  after(() => dir.remove());

  async function runWithConfig(config: unknown): Promise<{ code: number; stderr: string }> {
    const file = dir.file(`config-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, typeof config === 'string' ? config : JSON.stringify(config));
    const r = await run(process.execPath, [VMDEVD_BIN, '--address', 'unix:path=/nonexistent', '--config', file]);
    return { code: r.code, stderr: r.stderr };
  }

  const cases: Array<[string, unknown, RegExp]> = [
    ['an id with a space', { backends: [{ id: 'a b', plugin: 'x' }] }, /backends\[0\]\.id: must match pattern/],
    ['a timeout given as a string', { detachTimeoutSeconds: '30' }, /detachTimeoutSeconds: must be number/],
    ['a negative timeout', { detachTimeoutSeconds: -1 }, /detachTimeoutSeconds: must be > 0/],
    ['an unknown field', { bogus: 1 }, /bogus: is not a known field/],
    ['an unknown log level', { logLevel: 'loud' }, /logLevel: must be one of "error", "warn", "info", "debug"/],
    ['a bad bus name', { busName: 'no-dots' }, /busName: must match pattern/],
    ['a backend without plugin', { backends: [{ id: 'a' }] }, /backends\[0\]\.plugin: is required/],
    [
      'two backends with one id',
      {
        backends: [
          { id: 'a', plugin: TEST_BACKEND },
          { id: 'a', plugin: TEST_BACKEND },
        ],
      },
      /backends\[1\]\.id: "a" is used by another backend/,
    ],
    [
      'a plugin option of the wrong type',
      { backends: [{ id: 'a', plugin: TEST_BACKEND, generate: 'many' }] },
      /backends\[0\]\.generate: must be integer/,
    ],
    ['text that is not JSON', '{"backends": [', /not valid JSON/],
  ];
  for (const [what, config, message] of cases) {
    it(`fails at start on ${what}, naming the field`, async () => {
      const r = await runWithConfig(config);
      assert.equal(r.code, EX_CONFIG, r.stderr);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    });
  }

  it('fails on a config file that cannot be read', async () => {
    const r = await run(process.execPath, [VMDEVD_BIN, '--config', dir.file('missing.json')]);
    assert.equal(r.code, EX_CONFIG);
    assert.match(r.stderr, /cannot read config file .*missing\.json/);
  });

  it('refuses more than one bus flag, and unknown flags', async () => {
    const both = await run(process.execPath, [VMDEVD_BIN, '--system', '--session']);
    assert.equal(both.code, EX_CONFIG);
    assert.match(both.stderr, /give only one of --system, --session and --address/);
    const unknown = await run(process.execPath, [VMDEVD_BIN, '--frobnicate']);
    assert.equal(unknown.code, EX_CONFIG);
    assert.match(unknown.stderr, /Unknown option '--frobnicate'/);
  });

  it('prints its usage', async () => {
    const r = await run(process.execPath, [VMDEVD_BIN, '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /Usage: vmdevd \[--system \| --session \| --address ADDR\] \[--config FILE\]/);
  });
});

describe('running', () => {
  let bus: PrivateBus;
  before(async () => {
    bus = await startPrivateBus();
  });
  after(async () => {
    await bus?.stop();
  });

  it('emits the first complete map once, after it owns its name', async () => {
    const client = await TestClient.connect(bus.address);
    const log = await client.subscribe(`type='signal',sender='${BUS_NAME}'`);
    await client.subscribe(`type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${BUS_NAME}'`);
    const daemon = await startVmdevd({
      address: bus.address,
      config: {
        backends: [
          { id: 'fast', plugin: TEST_BACKEND, vms: DEFAULT_VMS },
          { id: 'slow', plugin: TEST_BACKEND, vms: [{ name: 'late', state: 'running' }], startDelayMs: 400 },
        ],
      },
    });
    try {
      const first = await log.waitFor((s) => s.member === 'TestSignal');
      assert.deepEqual(first.body[0], { late: 'running', vm1: 'running', vm2: 'paused', vm3: 'shutoff' });
      const owner = log.signals.findIndex((s) => s.member === 'NameOwnerChanged' && s.body[2] !== '');
      assert.ok(owner >= 0 && owner < log.signals.indexOf(first), 'the name was owned before the first TestSignal');
      // A later call's reply: every signal the daemon sent before it has arrived.
      await client.getProperty('TestProperty');
      assert.equal(log.named('TestSignal').length, 1, 'emitted once');
    } finally {
      client.close();
      await daemon.stop();
    }
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`shuts down cleanly on ${signal}: pending detaches and attaches fail, then the name is released`, async () => {
      const daemon = await startVmdevd({
        address: bus.address,
        config: { detachTimeoutSeconds: 60, backends: [{ id: 't', plugin: TEST_BACKEND, vms: DEFAULT_VMS }] },
      });
      const client = await TestClient.connect(bus.address);
      try {
        const log = await client.subscribe(`type='signal'`);
        assert.equal(
          await client.testMethod('vm1', { hang1: ['type=disk', 'target=vdb'], hang2: ['type=disk', 'target=vdc'] }),
          true,
        );
        const [attached] = await client.call({
          member: 'AttachDevices',
          signature: 'sa{sas}',
          body: ['vm1', { hang3: ['type=pci', 'address=01:00.0'] }],
        });
        assert.equal(attached, true);
        daemon.child.kill(signal);
        assert.equal(await daemon.exited(), 0);
        const released = await log.waitFor(
          (s) => s.member === 'NameOwnerChanged' && s.body[0] === BUS_NAME && s.body[2] === '',
        );
        const failed = log.named('DeviceDetachFailed');
        assert.deepEqual(failed.map((s) => s.body.slice(0, 3)).sort(), [
          ['vm1', 'hang1', 'org.example.dbustest.Error.Failed'],
          ['vm1', 'hang2', 'org.example.dbustest.Error.Failed'],
        ]);
        assert.match(failed[0]!.body[3] as string, /shut down before the detach was confirmed/);
        const attachFailed = log.named('DeviceAttachFailed');
        assert.deepEqual(
          attachFailed.map((s) => s.body),
          [['vm1', 'hang3', 'org.example.dbustest.Error.Failed', 'vmdevd shut down before the attach was confirmed']],
        );
        assert.ok(
          [...failed, ...attachFailed].every((f) => log.signals.indexOf(f) < log.signals.indexOf(released)),
          'outcomes before the name went away',
        );
        assert.match(
          daemon.output(),
          new RegExp(`shutting down reason="received ${signal}"[\\s\\S]*released the bus name[\\s\\S]*stopped`),
        );
        assert.equal(await client.nameOwner(), undefined);
      } finally {
        client.close();
        await daemon.stop();
      }
    });
  }

  it('answers calls that arrive while it shuts down with clean errors, never a stack trace', async () => {
    // Between the end of dispatching and leaving the bus, calls used to reach
    // dbus-next's own dispatch, which sent com.github.dbus_next.ServiceError
    // with a stack trace. Found by the bus fuzzer.
    const daemon = await startVmdevd({
      address: bus.address,
      config: { backends: [{ id: 't', plugin: TEST_BACKEND, vms: DEFAULT_VMS }] },
    });
    const client = await TestClient.connect(bus.address);
    const errors: Array<{ type: string; text: string }> = [];
    let stopped = false;
    let answered = 0;
    let callsFlow!: () => void;
    const flowing = new Promise<void>((resolve) => (callsFlow = resolve));
    const calls = [0, 1, 2, 3, 4, 5, 6, 7].map(async (w) => {
      for (let i = 0; !stopped || i < 5; i++) {
        const member = i % 2 === 0 ? 'TestMethod' : 'Set';
        try {
          if (member === 'TestMethod') await client.testMethod('vm1', { [`s${w}-${i}`]: ['type=disk', 'target=vdb'] });
          else await client.setProperty('TestProperty', 'a{ss}', { vm1: 'running' });
        } catch (err) {
          const e = err as CallError;
          errors.push({ type: e.type, text: e.text });
          if (e.type === 'org.freedesktop.DBus.Error.ServiceUnknown') break;
        } finally {
          if (++answered === 40) callsFlow();
        }
      }
    });
    try {
      // Stop it once calls are flowing, not after some time.
      await deadline(flowing, 60_000, 'answers to the first 40 calls');
      daemon.child.kill('SIGTERM');
      assert.equal(await daemon.exited(), 0);
      stopped = true;
      await Promise.all(calls);
      assert.deepEqual(
        errors.filter(
          (e) => !e.type.startsWith('org.freedesktop.DBus.Error.') && !e.type.startsWith('org.example.dbustest.Error.'),
        ),
        [],
      );
      assert.deepEqual(
        errors.filter((e) => /\n\s*at /.test(e.text)),
        [],
      );
    } finally {
      stopped = true;
      client.close();
      await daemon.stop();
    }
  });

  it('exits when the bus name is taken', async () => {
    const squatter = await TestClient.connect(bus.address);
    try {
      assert.equal(
        await squatter.bus.requestName(BUS_NAME, dbus.NameFlag.DO_NOT_QUEUE),
        dbus.RequestNameReply.PRIMARY_OWNER,
      );
      const daemon = await startVmdevd({
        address: bus.address,
        config: { backends: [{ id: 't', plugin: TEST_BACKEND }] },
        waitReady: false,
      });
      assert.equal(await daemon.exited(), EX_UNAVAILABLE);
      assert.match(daemon.output(), /the bus name org\.example\.dbustest is owned by another process/);
      await daemon.stop();
    } finally {
      squatter.close();
    }
  });

  it('uses DBUS_SESSION_BUS_ADDRESS with --session, and the default config without --config', async () => {
    const daemon = await startVmdevd({ args: ['--session'], env: { DBUS_SESSION_BUS_ADDRESS: bus.address } });
    const client = await TestClient.connect(bus.address);
    try {
      const backends = await client.getProperty<Record<string, string>>('Backends');
      assert.deepEqual(Object.keys(backends), ['default']);
      assert.match(daemon.output(), /bus=session/);
    } finally {
      client.close();
      await daemon.stop();
    }
  });
});

it('exits with 69 when its bus goes away, and logs each outcome no client will see', async () => {
  // The choice: no reconnect. A system bus that went away restarts with the
  // system; systemd restarts vmdevd (Restart=on-failure), which takes its name
  // again and republishes, as a fresh start does. What was pending is named in
  // the log, since no client can be told any more.
  const stack = await startStack({ config: { detachTimeoutSeconds: 600 } });
  try {
    assert.equal(await stack.client.testMethod('vm1', { 'wait-lost': ['type=disk', 'target=vdb'] }), true);
    // The detach reached the backend: it is pending in vmdevd.
    await stack.daemon.waitForOutput(/TestMethod caller=.* devices=wait-lost result="accepted for vm1"/);
    stack.client.close();
    await stack.bus.process.stop();
    assert.equal(await stack.daemon.exited(), EX_UNAVAILABLE);
    const out = stack.daemon.output();
    assert.match(out, /lost the bus connection/);
    assert.match(
      out,
      /outcome not sent: the bus connection is gone, no client will see it vm=vm1 device=wait-lost outcome=Failed/,
    );
  } finally {
    await stack.stop();
  }
});
