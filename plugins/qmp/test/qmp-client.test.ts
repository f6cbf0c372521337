/**
 * The QMP client against a scripted server: the protocol corner cases
 * real QEMU cannot be made to produce on demand. What QEMU can show is
 * tested on QEMU (qmp-client-qemu.test.ts).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  QmpClient,
  QmpClosedError,
  QmpCommandError,
  QmpConnectError,
  QmpProtocolError,
  QmpTimeoutError,
  type QmpEvent,
} from '../src/qmp-client.js';
import { GREETING, startFakeQmpServer, type FakeQmpServer } from './fake-qmp-server.js';

describe('QMP client, protocol corner cases', () => {
  let server: FakeQmpServer;
  before(async () => {
    server = await startFakeQmpServer();
  });
  after(async () => {
    await server?.close();
  });

  it('delivers events that come before the greeting, in order, and then connects', async () => {
    const events: QmpEvent[] = [];
    const connecting = QmpClient.connect(server.path, { onEvent: (e) => events.push(e) });
    const peer = await server.nextConnection();
    peer.send({ event: 'STOP', timestamp: { seconds: 1, microseconds: 0 } });
    peer.send({ event: 'RESUME', data: { x: 1 }, timestamp: { seconds: 2, microseconds: 0 } });
    await peer.handshake();
    const client = await connecting;
    try {
      assert.deepEqual(
        events.map((e) => [e.event, e.data, e.seq]),
        [
          ['STOP', {}, 1],
          ['RESUME', { x: 1 }, 2],
        ],
      );
      assert.deepEqual(client.greeting, { version: '7.2.0', package: 'fake' });
    } finally {
      client.close();
    }
  });

  it('matches replies by id when they come out of order, with events between', async () => {
    const events: string[] = [];
    const connecting = QmpClient.connect(server.path, { onEvent: (e) => events.push(e.event) });
    const peer = await server.nextConnection();
    await peer.handshake();
    const client = await connecting;
    try {
      const a = client.request('query-a');
      const b = client.request('query-b', { arg: 1 });
      const c = client.execute('query-c');
      const [ca, cb, cc] = await Promise.all([peer.command(1), peer.command(2), peer.command(3)]);
      assert.deepEqual(cb.arguments, { arg: 1 });
      assert.equal(new Set([ca.id, cb.id, cc.id]).size, 3, 'every command has its own id');
      peer.send({ return: 'C', id: cc.id });
      peer.send({ event: 'DEVICE_DELETED', data: { device: 'd' } });
      peer.send({ return: 'B', id: cb.id });
      peer.send({ error: { class: 'GenericError', desc: 'no A today' }, id: ca.id });
      assert.equal(await c, 'C');
      const rb = await b;
      assert.equal(rb.value, 'B');
      await assert.rejects(a, (err: unknown) => {
        assert.ok(err instanceof QmpCommandError);
        assert.equal(err.command, 'query-a');
        assert.equal(err.errorClass, 'GenericError');
        assert.equal(err.desc, 'no A today');
        return true;
      });
      assert.deepEqual(events, ['DEVICE_DELETED']);
    } finally {
      client.close();
    }
  });

  it('delivers a reply before the events that follow it on the line stream (onReply)', async () => {
    const order: string[] = [];
    const seqs: number[] = [];
    const connecting = QmpClient.connect(server.path, {
      onEvent: (e) => {
        order.push(e.event);
        seqs.push(e.seq);
      },
    });
    const peer = await server.nextConnection();
    await peer.handshake();
    const client = await connecting;
    try {
      const status = client.request('query-status', undefined, {
        onReply: (r) => order.push(`reply ${(r.value as { status: string }).status}`),
      });
      const c = await peer.command(1);
      // Reply and event in one write: the event must not overtake the reply.
      peer.send(
        `${JSON.stringify({ return: { status: 'running' }, id: c.id })}\r\n${JSON.stringify({ event: 'STOP' })}\r\n`,
      );
      const reply = await status;
      assert.deepEqual(order, ['reply running', 'STOP']);
      assert.equal(reply.seq + 1, seqs[0], 'replies and events share one count');
    } finally {
      client.close();
    }
  });

  it('refuses a line longer than the limit as it arrives, failing what waits and closing', async () => {
    let closed: QmpClosedError | undefined;
    const connecting = QmpClient.connect(server.path, { maxLineBytes: 1024, onClose: (r) => (closed = r) });
    const peer = await server.nextConnection();
    await peer.handshake();
    const client = await connecting;
    const waiting = client.execute('query-qmp-schema');
    const other = client.execute('query-status');
    await peer.command(2);
    // 600 bytes at a time, never a newline: refused once more than 1 KiB has come.
    peer.send(`{"return": "${'x'.repeat(600)}`);
    peer.send('x'.repeat(600));
    for (const p of [waiting, other]) {
      await assert.rejects(p, (err: unknown) => {
        assert.ok(err instanceof QmpClosedError);
        assert.match(err.message, /QEMU sent a line longer than 1 KiB/);
        return true;
      });
    }
    assert.ok(closed instanceof QmpProtocolError, 'onClose got the protocol error');
    assert.match(closed.message, /longer than 1 KiB on .*fake\.qmp, more than vmdevd accepts/);
    assert.equal(client.closed, true);
    await assert.rejects(client.execute('query-status'), QmpClosedError);
  });

  it('accepts a line just under the limit split over many writes', async () => {
    const connecting = QmpClient.connect(server.path, { maxLineBytes: 64 * 1024 });
    const peer = await server.nextConnection();
    await peer.handshake();
    const client = await connecting;
    try {
      const big = client.execute('query-big');
      const c = await peer.command(1);
      const line = JSON.stringify({ return: 'y'.repeat(60 * 1024), id: c.id });
      for (let i = 0; i < line.length; i += 1000) peer.send(line.slice(i, i + 1000));
      peer.send('\r\n');
      assert.equal(((await big) as string).length, 60 * 1024);
    } finally {
      client.close();
    }
  });

  it('fails every waiting command at once when the socket dies mid-command', async () => {
    let closes = 0;
    const connecting = QmpClient.connect(server.path, { onClose: () => closes++ });
    const peer = await server.nextConnection();
    await peer.handshake();
    const client = await connecting;
    const commands = ['device_del', 'query-status', 'qom-list'].map((c) => client.execute(c));
    await peer.command(3);
    // Half a reply, then the socket goes.
    peer.send('{"return": {}, "id": ');
    peer.destroy();
    const results = await Promise.allSettled(commands);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof QmpClosedError);
      assert.match(String(r.reason), /QEMU closed the QMP socket/);
    }
    assert.equal(closes, 1);
  });

  it('times a command out without closing, and drops its late reply', async () => {
    const connecting = QmpClient.connect(server.path, { commandTimeoutMs: 60_000 });
    const peer = await server.nextConnection();
    await peer.handshake();
    const client = await connecting;
    try {
      const slow = client.execute('query-slow', undefined, { timeoutMs: 50 });
      await assert.rejects(slow, (err: unknown) => {
        assert.ok(err instanceof QmpTimeoutError);
        assert.equal(err.message, 'query-slow: no reply from QEMU within 0.05 s');
        return true;
      });
      const next = client.execute('query-next');
      const late = await peer.command(1);
      const c = await peer.command(2);
      peer.send({ return: 'late', id: late.id });
      peer.send({ return: 'next', id: c.id });
      assert.equal(await next, 'next');
      assert.equal(client.closed, false);
    } finally {
      client.close();
    }
  });

  it('reports a monitor that sends no greeting, naming the likely cause', async () => {
    const connecting = QmpClient.connect(server.path, { connectTimeoutMs: 100 });
    const peer = await server.nextConnection();
    await assert.rejects(connecting, (err: unknown) => {
      assert.ok(err instanceof QmpConnectError);
      assert.equal(err.code, 'NO_GREETING');
      assert.match(err.message, /no QMP greeting on .* within 0\.1 s: another client holds this monitor/);
      return true;
    });
    peer.destroy();
  });

  it('refuses a line that is not JSON, and a greeting whose capabilities are refused', async () => {
    const connecting = QmpClient.connect(server.path);
    const peer = await server.nextConnection();
    peer.send('Welcome to something else\r\n');
    await assert.rejects(connecting, (err: unknown) => {
      assert.ok(err instanceof QmpConnectError);
      assert.equal(err.code, 'PROTOCOL');
      assert.match(err.message, /not JSON on .*: Welcome to something else/);
      return true;
    });
    const again = QmpClient.connect(server.path);
    const peer2 = await server.nextConnection();
    peer2.send(GREETING);
    const caps = await peer2.command(0);
    peer2.send({ error: { class: 'CommandNotFound', desc: 'nope' }, id: caps.id });
    await assert.rejects(again, /QEMU refused qmp_capabilities on .*: qmp_capabilities: nope/);
    peer2.destroy();
  });

  it('reports a QEMU that closes during the handshake', async () => {
    const connecting = QmpClient.connect(server.path);
    const peer = await server.nextConnection();
    peer.destroy();
    await assert.rejects(connecting, (err: unknown) => {
      assert.ok(err instanceof QmpConnectError);
      assert.equal(err.code, 'CLOSED');
      return true;
    });
  });
});
