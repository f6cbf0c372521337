/**
 * The QMP client on a real qemu-system-x86_64 (no guest OS; KVM when
 * /dev/kvm is usable, TCG otherwise): the handshake, ids, events between
 * replies, a line of 200 KB and one over the limit, command timeouts, a
 * lost socket, the one-client-per-monitor rule and the events QEMU does not
 * keep for a client that is away.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startQemu, type QemuProcess } from 'vmdevd/testing/qemu-process';
import {
  QmpClient,
  QmpClosedError,
  QmpCommandError,
  QmpConnectError,
  QmpProtocolError,
  QmpTimeoutError,
  type QmpEvent,
} from '../src/qmp-client.js';

/** Records events; `next(name)` resolves with the first one of that name (past or future). */
function eventLog() {
  const events: QmpEvent[] = [];
  const waiters = new Set<() => void>();
  return {
    events,
    onEvent: (e: QmpEvent) => {
      events.push(e);
      for (const w of waiters) w();
    },
    next(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = 20_000): Promise<QmpEvent> {
      return new Promise((resolve, reject) => {
        const check = () => {
          const e = events.find((x) => x.event === name && match(x));
          if (e) {
            cleanup();
            resolve(e);
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`no ${name} within ${timeoutMs} ms; got ${events.map((x) => x.event).join(', ')}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
  };
}

describe('QMP client on QEMU', { timeout: 180_000 }, () => {
  let qemu: QemuProcess;
  before(async () => {
    qemu = await startQemu({
      args: ['-name', 'vmdevd-client-test'],
      devices: ['pcie-root-port,id=rp1,chassis=1', 'virtio-net-pci,id=net0,mac=52:54:00:71:00:01,bus=rp1'],
    });
  });
  after(async () => {
    await qemu?.stop();
  });

  it('reads the greeting, negotiates capabilities and runs commands', async () => {
    const client = await QmpClient.connect(qemu.socket('vmdevd'));
    try {
      assert.match(client.greeting.version, /^\d+\.\d+\.\d+$/);
      assert.deepEqual(await client.execute('query-name'), { name: 'vmdevd-client-test' });
      assert.equal(((await client.execute('query-status')) as { status: string }).status, 'running');
      await assert.rejects(client.execute('device_del', { id: 'nope' }), (err: unknown) => {
        assert.ok(err instanceof QmpCommandError);
        assert.equal(err.errorClass, 'DeviceNotFound');
        assert.match(err.desc, /nope/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  it('matches pipelined commands to their replies by id, with events in between', async () => {
    const log = eventLog();
    const client = await QmpClient.connect(qemu.socket('vmdevd'), { onEvent: log.onEvent });
    try {
      const [stop, name, status, cont] = await Promise.all([
        client.request('stop'),
        client.execute('query-name'),
        client.execute('query-status'),
        client.request('cont'),
      ]);
      assert.deepEqual(stop.value, {});
      assert.deepEqual(name, { name: 'vmdevd-client-test' });
      assert.equal((status as { status: string }).status, 'paused');
      assert.deepEqual(cont.value, {});
      const stopEvent = await log.next('STOP');
      const resume = await log.next('RESUME');
      // QEMU sends each event before the reply of the command that caused it.
      assert.ok(stopEvent.seq < stop.seq && resume.seq < cont.seq, 'events and replies, counted in stream order');
    } finally {
      client.close();
    }
  });

  it('takes query-qmp-schema, a single line of about 200 KB', async () => {
    const client = await QmpClient.connect(qemu.socket('vmdevd'));
    try {
      const schema = await client.execute('query-qmp-schema');
      assert.ok(Array.isArray(schema));
      assert.ok(JSON.stringify(schema).length > 150_000, `${JSON.stringify(schema).length} bytes`);
    } finally {
      client.close();
    }
  });

  it('refuses it with a limit of 64 KiB: a clear error, every waiting command fails, the connection closes', async () => {
    let closed: QmpClosedError | undefined;
    const client = await QmpClient.connect(qemu.socket('vmdevd'), {
      maxLineBytes: 64 * 1024,
      onClose: (r) => (closed = r),
    });
    const schema = client.execute('query-qmp-schema');
    const results = await Promise.allSettled([schema, client.execute('query-status')]);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.match(String(r.reason), /QEMU sent a line longer than 64 KiB/);
    }
    assert.ok(closed instanceof QmpProtocolError);
    assert.equal(client.closed, true);
    // The monitor is free again for the next client.
    const again = await QmpClient.connect(qemu.socket('vmdevd'));
    again.close();
  });

  it('sees DEVICE_DELETED of a pending unplug that a system_reset completes, with the replies matched', async (t) => {
    const log = eventLog();
    const client = await QmpClient.connect(qemu.socket('vmdevd'), { onEvent: log.onEvent });
    try {
      // No guest answers q35's ACPI hotplug: the unplug stays pending, and a repeat is accepted.
      assert.deepEqual(await client.execute('device_del', { id: 'net0' }), {});
      const [reset, again] = await Promise.allSettled([
        client.request('system_reset'),
        client.request('device_del', { id: 'net0' }),
      ]);
      assert.equal(reset.status, 'fulfilled');
      const child = await log.next('DEVICE_DELETED', (e) => e.data['device'] === undefined);
      const device = await log.next('DEVICE_DELETED', (e) => e.data['device'] === 'net0');
      // A child has its own event, with only a path.
      assert.deepEqual(child.data, { path: '/machine/peripheral/net0/virtio-backend' });
      assert.deepEqual(device.data, { device: 'net0', path: '/machine/peripheral/net0' });
      // The repeat either came before the device went (accepted) or after it (not found).
      if (again.status === 'rejected') assert.equal((again.reason as QmpCommandError).errorClass, 'DeviceNotFound');
      const replies = [['system_reset', reset.value.seq]];
      if (again.status === 'fulfilled') replies.push(['device_del', again.value.seq]);
      const order = [...replies, ['DEVICE_DELETED child', child.seq], ['DEVICE_DELETED net0', device.seq]]
        .sort((a, b) => (a[1] as number) - (b[1] as number))
        .map((x) => x[0]);
      t.diagnostic(`order on the wire: ${order.join(', ')}`);
      const tree = (await client.execute('qom-list', { path: '/machine/peripheral' })) as Array<{ name: string }>;
      assert.ok(!tree.some((p) => p.name === 'net0'));
    } finally {
      client.close();
    }
  });

  it('times a command out while QEMU is stopped, and goes on after it continues', async () => {
    const client = await QmpClient.connect(qemu.socket('vmdevd'));
    try {
      qemu.signal('SIGSTOP');
      try {
        await assert.rejects(client.execute('query-status', undefined, { timeoutMs: 300 }), QmpTimeoutError);
      } finally {
        qemu.signal('SIGCONT');
      }
      // The late reply of query-status must not answer this one.
      assert.deepEqual(await client.execute('query-name'), { name: 'vmdevd-client-test' });
      assert.equal(client.closed, false);
    } finally {
      client.close();
    }
  });

  it('serves one client per monitor: a second one gets no greeting until the first leaves', async () => {
    const first = await QmpClient.connect(qemu.socket('vmdevd'));
    let second: QmpClient | undefined;
    try {
      await assert.rejects(QmpClient.connect(qemu.socket('vmdevd'), { connectTimeoutMs: 500 }), (err: unknown) => {
        assert.ok(err instanceof QmpConnectError);
        assert.equal(err.code, 'NO_GREETING');
        assert.match(err.message, /another client holds this monitor/);
        return true;
      });
      const waiting = QmpClient.connect(qemu.socket('vmdevd'), { connectTimeoutMs: 20_000 });
      // The other monitor is free all along.
      const other = await QmpClient.connect(qemu.socket('test'));
      other.close();
      first.close();
      second = await waiting;
      assert.equal(((await second.execute('query-status')) as { status: string }).status, 'running');
    } finally {
      first.close();
      second?.close();
    }
  });

  it('keeps no events for a client that is away: after a reconnect only query-status tells', async () => {
    const test = await QmpClient.connect(qemu.socket('test'));
    try {
      const away = await QmpClient.connect(qemu.socket('vmdevd'));
      away.close();
      await test.execute('stop');
      const log = eventLog();
      const back = await QmpClient.connect(qemu.socket('vmdevd'), { onEvent: log.onEvent });
      try {
        // A reply is a barrier: anything QEMU had kept would have come before it.
        const status = (await back.execute('query-status')) as { status: string };
        assert.equal(status.status, 'paused');
        assert.deepEqual(
          log.events.map((e) => e.event),
          [],
        );
      } finally {
        back.close();
      }
    } finally {
      await test.execute('cont');
      test.close();
    }
  });
});

describe('QMP client and a QEMU that goes away', { timeout: 120_000 }, () => {
  let qemu: QemuProcess | undefined;
  after(async () => {
    await qemu?.stop();
  });

  it('fails every waiting command at once when QEMU is killed, and then finds the socket refusing', async () => {
    qemu = await startQemu();
    let closes = 0;
    let reason: QmpClosedError | undefined;
    const client = await QmpClient.connect(qemu.socket('vmdevd'), {
      onClose: (r) => {
        closes++;
        reason = r;
      },
    });
    qemu.signal('SIGSTOP');
    const waiting = ['query-status', 'query-name', 'qom-list'].map((c) =>
      client.execute(c, c === 'qom-list' ? { path: '/machine' } : undefined, { timeoutMs: 60_000 }),
    );
    const settled = Promise.allSettled(waiting);
    await qemu.kill('SIGKILL');
    const results = await settled;
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof QmpClosedError);
    }
    assert.equal(closes, 1);
    assert.match(String(reason?.message), /QEMU closed the QMP socket|failed/);
    // Killed by a signal, QEMU leaves its socket file behind.
    await assert.rejects(QmpClient.connect(qemu.socket('vmdevd')), (err: unknown) => {
      assert.ok(err instanceof QmpConnectError);
      assert.equal(err.code, 'ECONNREFUSED');
      assert.match(err.message, /connection refused \(no QEMU is listening there\)/);
      return true;
    });
    await assert.rejects(QmpClient.connect(qemu.dir.file('nothing.qmp')), (err: unknown) => {
      assert.ok(err instanceof QmpConnectError);
      assert.equal(err.code, 'ENOENT');
      return true;
    });
  });
});
