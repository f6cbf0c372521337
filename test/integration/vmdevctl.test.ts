/**
 * vmdevctl against the real daemon: every command, --json output parsed,
 * and every exit code.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EXIT } from '../../src/cli/vmdevctl.js';
import { run, startProcess } from '../harness/process.js';
import { DEFAULT_VMS, startStack, type Stack } from '../harness/stack.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

const VMDEVCTL = `${REPO_ROOT}bin/vmdevctl`;

describe('vmdevctl', () => {
  let stack: Stack;
  const ctl = (...args: string[]) => run(process.execPath, [VMDEVCTL, '--address', stack.bus.address, ...args]);

  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.stop();
  });

  it('status: a table, and JSON with backend, type and UUID', async () => {
    const r = await ctl('status');
    assert.equal(r.code, EXIT.ok, r.stderr);
    assert.match(
      r.stdout,
      /^VM\s+STATE\s+BACKEND\s+TYPE\nvm1\s+running\s+test\s+ivi\nvm2\s+paused\s+test\s+cluster\nvm3\s+shutoff\s+test\s+cluster\n$/,
    );
    const j = await ctl('--json', 'status');
    assert.deepEqual((JSON.parse(j.stdout) as unknown[])[0], {
      key: 'vm1',
      name: 'vm1',
      state: 'running',
      backend: 'test',
      uuid: '11111111-1111-4111-8111-111111111111',
      type: 'ivi',
    });
  });

  it('backends: a table and JSON', async () => {
    assert.match((await ctl('backends')).stdout, /^BACKEND\s+STATUS\ntest\s+connected\n$/);
    assert.deepEqual(JSON.parse((await ctl('backends', '--json')).stdout), { test: 'connected' });
  });

  it('detach --wait: prints each outcome and exits 0 when all are detached', async () => {
    const r = await ctl(
      'detach',
      'vm1',
      'd1:type=disk,target=vdb',
      'usb:1:type=usb,vendor=0x1234,product=0x5678',
      '--wait',
    );
    assert.equal(r.code, EXIT.ok, r.stderr);
    assert.match(r.stdout, /detached\s+vm1\s+d1\n/);
    assert.match(r.stdout, /detached\s+vm1\s+usb:1\n/);
    const j = await ctl('--json', 'detach', 'ivi', 'd2:type=disk,target=vdc', '--wait');
    assert.deepEqual(JSON.parse(j.stdout), {
      accepted: true,
      outcomes: [{ vm: 'vm1', device: 'd2', result: 'detached' }],
      pending: [],
    });
  });

  it('detach without --wait: started', async () => {
    const r = await ctl('detach', 'vm1', 'nowait:type=disk,target=vdd');
    assert.equal(r.code, EXIT.ok);
    assert.equal(r.stdout, 'started: nowait\n');
  });

  it('exits 3 when no VM matches', async () => {
    const r = await ctl('detach', 'ghost', 'd1:type=disk,target=vdb', '--wait');
    assert.equal(r.code, EXIT.noSuchVm);
    assert.equal(r.stderr, 'vmdevctl: no VM matches "ghost"\n');
  });

  it('exits 4 on invalid arguments, with the error name', async () => {
    const r = await ctl('detach', 'vm1', 'd1:type=floppy', '--wait');
    assert.equal(r.code, EXIT.invalidArgs);
    assert.equal(
      r.stderr,
      'vmdevctl: org.freedesktop.DBus.Error.InvalidArgs: device "d1": unknown type "floppy" (expected one of pci, usb, scsi, mdev, disk, interface, alias)\n',
    );
  });

  it('exits 5 when a device fails', async () => {
    const r = await ctl(
      '--json',
      'detach',
      'vm1',
      'ok1:type=disk,target=vdb',
      'fail-RemovalFailed:type=disk,target=vdc',
      '--wait',
    );
    assert.equal(r.code, EXIT.deviceFailed);
    const out = JSON.parse(r.stdout) as { outcomes: Array<Record<string, string>> };
    assert.deepEqual(
      out.outcomes.find((o) => o['device'] === 'fail-RemovalFailed')!['error'],
      'org.example.dbustest.Error.RemovalFailed',
    );
  });

  it('exits 6 when a device times out', async () => {
    const r = await ctl('detach', 'vm1', 'hang1:type=disk,target=vdb', '--wait');
    assert.equal(r.code, EXIT.timeout);
    assert.match(r.stdout, /failed\s+vm1\s+hang1\s+org\.example\.dbustest\.Error\.Timeout: /);
  });

  it('exits 1 for other errors, as one line with the error name', async () => {
    const r = await ctl('detach', 'cluster', 'd:type=disk,target=vdb');
    assert.equal(r.code, EXIT.error);
    assert.equal(
      r.stderr,
      'vmdevctl: org.example.dbustest.Error.AmbiguousSelector: selector "cluster" matches 2 VMs: vm2, vm3\n',
    );
    const noBus = await run(process.execPath, [VMDEVCTL, '--address', 'unix:path=/nonexistent/bus', 'status']);
    assert.equal(noBus.code, EXIT.error);
    assert.match(noBus.stderr, /^vmdevctl: cannot connect to unix:path=\/nonexistent\/bus: .*ENOENT.*\n$/);
  });

  it('set: requests states, and TestSignal follows', async () => {
    const r = await ctl('set', 'vm1=paused', 'vm3=running');
    assert.equal(r.code, EXIT.ok, r.stderr);
    assert.equal(r.stdout, 'vm1: paused requested\nvm3: running requested\n');
    const bad = await ctl('set', 'vm1=asleep');
    assert.equal(bad.code, EXIT.invalidArgs);
    assert.match(bad.stderr, /InvalidArgs: VM "vm1": unknown state "asleep"/);
    assert.equal((await ctl('set', 'vm1=running', '--json')).stdout, '{"requested":{"vm1":"running"}}\n');
  });

  it('watch: one line per signal until interrupted', async () => {
    const watch = startProcess(process.execPath, [VMDEVCTL, '--address', stack.bus.address, '--json', 'watch']);
    try {
      // Until watch has subscribed, a change goes unseen: change the state
      // back and forth until it shows one (no guess at how long node takes to start).
      for (let tries = 0, seen = false; !seen; tries++) {
        if (tries === 100) assert.fail(`watch showed no state change in 100 tries: ${watch.output()}`);
        await stack.control('test', { cmd: 'state', vm: 'vm2', state: 'paused' });
        await stack.control('test', { cmd: 'state', vm: 'vm2', state: 'running' });
        seen = await watch.waitForOutput(/"vm2":"running"/, 300).then(
          () => true,
          () => false,
        );
      }
      await ctl('detach', 'vm1', 'w1:type=disk,target=vdb', 'fail-DeviceNotFound:type=disk,target=vdc');
      await watch.waitForOutput(/"signal":"DeviceDetachFailed"/);
      await watch.waitForOutput(/"signal":"DeviceDetached"/);
      const lines = watch
        .output()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.ok(
        lines.some((l) => l['signal'] === 'TestSignal' && (l['states'] as Record<string, string>)['vm2'] === 'running'),
      );
      assert.ok(lines.some((l) => l['signal'] === 'DeviceDetached' && l['device'] === 'w1' && l['vm'] === 'vm1'));
      assert.ok(
        lines.some(
          (l) => l['signal'] === 'DeviceDetachFailed' && l['error'] === 'org.example.dbustest.Error.DeviceNotFound',
        ),
      );
      watch.child.kill('SIGINT');
      assert.equal(await watch.exited(), 0);
    } finally {
      await watch.stop();
    }
  });

  it('usage errors exit 2, help exits 0', async () => {
    for (const args of [
      [],
      ['frob'],
      ['detach', 'vm1'],
      ['detach', 'vm1', 'nolabel'],
      ['set', 'vm1'],
      ['status', 'extra'],
      ['--system', '--session', 'status'],
      ['status', '--wait'],
      ['detach', 'vm1', 'd:type=disk,target=vdb', '--timeout', '1'],
      ['devices'],
      ['devices', 'vm1', 'vm2'],
      ['devices', 'vm1', '--wait'],
      ['attach', 'vm1'],
      ['attach', 'vm1', 'd:type=disk,target=vdb', '--timeout', '1'],
      ['move', 'vm1', 'vm2'],
      ['move', 'vm1', 'vm2', 'd', 'd'],
      ['move', 'vm1', 'vm2', 'd', '--timeout', 'soon'],
    ]) {
      const r = await ctl(...args);
      assert.equal(r.code, EXIT.usage, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^vmdevctl: .*\n/);
    }
    const help = await ctl('detach', '--help');
    assert.equal(help.code, EXIT.ok);
    assert.match(
      help.stdout,
      /Usage: vmdevctl \[BUS OPTIONS\] detach SELECTOR LABEL:type=TYPE,NAME=VALUE… \[--wait\] \[--timeout S\]/,
    );
    assert.match((await ctl('--help')).stdout, /Commands:\n {2}status\n {2}watch\n {2}detach/);
    for (const command of ['status', 'watch', 'set', 'backends', 'devices', 'attach', 'move'])
      assert.equal((await ctl(command, '--help')).code, EXIT.ok);
  });
});

describe('vmdevctl devices, attach and move', () => {
  let stack: Stack;
  const ctl = (...args: string[]) => run(process.execPath, [VMDEVCTL, '--address', stack.bus.address, ...args]);
  const usbDisk = ['type=disk', 'target=sdb', 'source=/var/lib/images/usb.img', 'bus=usb', 'format=raw'];

  before(async () => {
    stack = await startStack({
      backends: [
        {
          vms: [...DEFAULT_VMS, { name: 'full', state: 'running' }],
          refuseAttachTo: ['full'],
          devices: {
            vm1: [
              { label: 'usb-disk1', tokens: usbDisk },
              { label: 'net0', tokens: ['type=interface', 'mac=52:54:00:00:00:01', 'user=yes', 'model=e1000'] },
              { label: 'hang-disk', tokens: ['type=disk', 'target=sdc'] },
            ],
            vm2: [],
          },
        },
      ],
    });
  });
  after(async () => {
    await stack?.stop();
  });

  it('devices: a table of labels, types and tokens, and JSON that detach and attach take', async () => {
    const r = await ctl('devices', 'vm1');
    assert.equal(r.code, EXIT.ok, r.stderr);
    assert.equal(
      r.stdout,
      [
        'LABEL      TYPE       TOKENS',
        'usb-disk1  disk       target=sdb,source=/var/lib/images/usb.img,bus=usb,format=raw',
        'net0       interface  mac=52:54:00:00:00:01,user=yes,model=e1000',
        'hang-disk  disk       target=sdc',
        '',
      ].join('\n'),
    );
    assert.deepEqual(JSON.parse((await ctl('--json', 'devices', 'vm1')).stdout), {
      'usb-disk1': usbDisk,
      net0: ['type=interface', 'mac=52:54:00:00:00:01', 'user=yes', 'model=e1000'],
      'hang-disk': ['type=disk', 'target=sdc'],
    });
    assert.equal((await ctl('devices', 'vm2')).stdout, 'no devices\n');
    const none = await ctl('devices', 'ghost');
    assert.equal(none.code, EXIT.noSuchVm);
    assert.equal(none.stderr, 'vmdevctl: org.example.dbustest.Error.VmNotFound: no VM matches "ghost"\n');
  });

  it('attach --wait: prints each outcome; the exit codes are those of detach', async () => {
    const ok = await ctl('attach', 'vm2', `d1:${usbDisk.join(',')}`, '--wait');
    assert.equal(ok.code, EXIT.ok, ok.stderr);
    assert.equal(ok.stdout, 'attached  vm2  d1\n');
    const j = await ctl('--json', 'attach', 'vm2', 'fail-Failed:type=pci,address=01:00.0', '--wait');
    assert.equal(j.code, EXIT.deviceFailed);
    assert.deepEqual(JSON.parse(j.stdout), {
      accepted: true,
      outcomes: [
        {
          vm: 'vm2',
          device: 'fail-Failed',
          result: 'failed',
          error: 'org.example.dbustest.Error.Failed',
          message: 'the test backend failed fail-Failed with Failed',
        },
      ],
      pending: [],
    });
    assert.equal((await ctl('attach', 'vm2', 'hang1:type=pci,address=02:00.0', '--wait')).code, EXIT.timeout);
    assert.equal((await ctl('attach', 'ghost', 'd:type=pci,address=01:00.0', '--wait')).code, EXIT.noSuchVm);
    const bad = await ctl('attach', 'vm2', 'd:type=disk,target=sdc', '--wait');
    assert.equal(bad.code, EXIT.invalidArgs);
    assert.match(
      bad.stderr,
      /InvalidArgs: device "d": an attach of type disk requires source and bus; missing source, bus/,
    );
    const started = await ctl('attach', 'vm2', 'd2:type=pci,address=03:00.0');
    assert.equal(started.code, EXIT.ok);
    assert.equal(started.stdout, 'started: d2\n');
  });

  it('move: each outcome, then where each device ended; exit 0 when all moved', async () => {
    const r = await ctl('move', 'vm1', 'vm2', 'usb-disk1', 'net0', '--wait');
    assert.equal(r.code, EXIT.ok, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.deepEqual(lines.slice(0, 4).sort(), [
      'attached  vm2  net0',
      'attached  vm2  usb-disk1',
      'detached  vm1  net0',
      'detached  vm1  usb-disk1',
    ]);
    assert.deepEqual(lines.slice(4), ['moved     usb-disk1  vm1 -> vm2', 'moved     net0  vm1 -> vm2']);
  });

  it('move: puts back what the target refuses, says so, and exits 5', async () => {
    const r = await ctl('move', 'vm1', 'full', 'usb-disk1');
    assert.equal(r.code, EXIT.deviceFailed);
    assert.equal(
      r.stdout,
      [
        'detached  vm1  usb-disk1',
        'failed    full  usb-disk1  org.example.dbustest.Error.Failed: VM "full" has no free slot for usb-disk1',
        'attached  vm1  usb-disk1',
        'put back  usb-disk1  on vm1: full refused it',
        '',
      ].join('\n'),
    );
    const j = await ctl('--json', 'move', 'vm1', 'full', 'usb-disk1');
    assert.deepEqual(JSON.parse(j.stdout), {
      from: 'vm1',
      to: 'full',
      devices: [
        {
          label: 'usb-disk1',
          status: 'put-back',
          detach: { vm: 'vm1', device: 'usb-disk1', result: 'detached' },
          attach: {
            vm: 'full',
            device: 'usb-disk1',
            result: 'failed',
            error: 'org.example.dbustest.Error.Failed',
            message: 'VM "full" has no free slot for usb-disk1',
          },
          putBack: { vm: 'vm1', device: 'usb-disk1', result: 'attached' },
        },
      ],
    });
  });

  it('move: a detach that times out exits 6; a label or VM that does not exist starts nothing', async () => {
    const hang = await ctl('move', 'vm1', 'vm2', 'hang-disk');
    assert.equal(hang.code, EXIT.timeout);
    assert.match(hang.stdout, /not moved hang-disk {2}the detach from vm1 failed\n$/);
    const since = stack.journal().length;
    const label = await ctl('move', 'vm1', 'vm2', 'nope');
    assert.equal(label.code, EXIT.deviceFailed);
    assert.equal(
      label.stderr,
      'vmdevctl: org.example.dbustest.Error.DeviceNotFound: VM "vm1" has no device labelled "nope" (it has usb-disk1, net0, hang-disk)\n',
    );
    assert.equal((await ctl('move', 'vm1', 'ghost', 'usb-disk1')).code, EXIT.noSuchVm);
    assert.deepEqual(
      stack
        .journal()
        .slice(since)
        .filter((j) => j['op'] === 'detach' || j['op'] === 'attach'),
      [],
    );
  });
});

describe('vmdevctl with a detach that stays pending', () => {
  // The daemon ends no device for an hour, and the test backend confirms a
  // "wait" device only when told: nothing but --timeout can end the wait.
  let stack: Stack;
  const ctl = (...args: string[]) => run(process.execPath, [VMDEVCTL, '--address', stack.bus.address, ...args]);
  before(async () => {
    stack = await startStack({ config: { detachTimeoutSeconds: 3600 } });
  });
  after(async () => {
    await stack?.stop();
  });

  it('exits 6 when --timeout runs out first, naming the pending device', async () => {
    const r = await ctl('detach', 'vm1', 'wait-1:type=disk,target=vde', '--wait', '--timeout', '0.3');
    assert.equal(r.code, EXIT.timeout);
    assert.match(r.stdout, /pending\s+wait-1\s+\(no outcome within 0\.3 s\)/);
  });
});
