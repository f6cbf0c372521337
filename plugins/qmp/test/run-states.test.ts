/**
 * The mapping of QEMU's run states and state events, every one of them
 * (QEMU shows most of them on demand only with a guest or a migration:
 * those it can show without one are tested on QEMU in backend-states),
 * and the small pure parts: device paths and options.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { peripheralId } from '../src/device-resolver.js';
import { readOptions } from '../src/qmp-options.js';
import { eventEffect, runState } from '../src/run-states.js';

describe('run states', () => {
  it('maps every status of query-status as libvirt does', () => {
    const table: Record<string, string> = {
      running: 'running',
      paused: 'paused',
      prelaunch: 'paused',
      inmigrate: 'paused',
      postmigrate: 'paused',
      'finish-migrate': 'paused',
      'io-error': 'paused',
      'save-vm': 'paused',
      watchdog: 'paused',
      debug: 'paused',
      'internal-error': 'paused',
      'restore-vm': 'paused',
      colo: 'paused',
      shutdown: 'shutdown',
      'guest-panicked': 'crashed',
      suspended: 'pmsuspended',
      'a-state-of-a-later-qemu': 'nostate',
    };
    for (const [status, state] of Object.entries(table)) assert.equal(runState(status), state, status);
  });

  it('maps the state events', () => {
    assert.deepEqual(eventEffect('STOP', {}, 'running'), { state: 'paused' });
    assert.deepEqual(eventEffect('RESUME', {}, 'paused'), { state: 'running' });
    assert.deepEqual(eventEffect('SHUTDOWN', { guest: true, reason: 'guest-shutdown' }, 'running'), {
      state: 'shutdown',
    });
    assert.deepEqual(eventEffect('SUSPEND', {}, 'running'), { state: 'pmsuspended' });
    assert.deepEqual(eventEffect('WAKEUP', {}, 'pmsuspended'), { state: 'running' });
    assert.deepEqual(eventEffect('GUEST_PANICKED', { action: 'pause' }, 'running'), { state: 'crashed' });
    assert.deepEqual(eventEffect('GUEST_PANICKED', { action: 'poweroff' }, 'running'), { state: 'crashed' });
    assert.deepEqual(eventEffect('RESET', { guest: false }, 'shutdown'), { refresh: true });
  });

  it('keeps a shut-down or panicked VM so through the STOP that follows, and ignores what changes nothing', () => {
    assert.equal(eventEffect('STOP', {}, 'shutdown'), undefined);
    assert.equal(eventEffect('STOP', {}, 'crashed'), undefined);
    assert.equal(eventEffect('POWERDOWN', {}, 'running'), undefined);
    assert.equal(eventEffect('GUEST_PANICKED', { action: 'run' }, 'running'), undefined);
    assert.equal(eventEffect('DEVICE_DELETED', { device: 'x' }, 'running'), undefined);
  });
});

describe('device paths', () => {
  it('finds the peripheral a qdev value or QOM path belongs to', () => {
    assert.equal(peripheralId('scsi0'), 'scsi0');
    assert.equal(peripheralId('/machine/peripheral/usbstor0/usbstor0.0/legacy[0]'), 'usbstor0');
    assert.equal(peripheralId('/machine/peripheral/vblk0/virtio-backend'), 'vblk0');
    assert.equal(peripheralId('/machine/peripheral/net0'), 'net0');
    assert.equal(peripheralId('/machine/peripheral-anon/device[3]'), undefined);
    assert.equal(peripheralId(''), undefined);
  });
});

describe('options', () => {
  it('fills in the defaults and a socket from socketDir', () => {
    assert.deepEqual(readOptions({ socketDir: '/run/vmdevd/qmp', vms: [{ name: 'ivi', type: 'ivi' }] }), {
      vms: [{ name: 'ivi', type: 'ivi', socket: '/run/vmdevd/qmp/ivi.qmp' }],
      socketDir: '/run/vmdevd/qmp',
      commandTimeoutMs: 10_000,
      connectTimeoutMs: 5_000,
      reconnectInitialMs: 500,
      reconnectMaxMs: 30_000,
    });
  });

  it('refuses a name or a socket given twice, and a socket path too long for a unix socket', () => {
    assert.throws(
      () =>
        readOptions({
          vms: [
            { name: 'a', socket: '/run/a.qmp' },
            { name: 'a', socket: '/run/b.qmp' },
          ],
        }),
      /vms\[1\]\.name: "a" is also the name of vms\[0\]/,
    );
    assert.throws(
      () => readOptions({ socketDir: '/run/q', vms: [{ name: 'a' }, { name: 'b', socket: '/run/q/a.qmp' }] }),
      /vms\[1\]\.socket: \/run\/q\/a\.qmp is also the socket of vms\[0\]/,
    );
    assert.throws(
      () => readOptions({ socketDir: `/${'d'.repeat(100)}`, vms: [{ name: 'long-name' }] }),
      /vms\[0\]\.socket: .* is longer than 107 bytes/,
    );
  });
});
