// The binding against a real libvirtd and QEMU VMs on qemu:///system:
// detach by XML and by alias with DEVICE_REMOVED events, the PCI NIC that
// no guest releases, errors, keepalive and the close callback.
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { LibvirtProxy } from 'vmdevd/testing/libvirt-proxy';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { createTestVm, VM_METADATA_NAMESPACE, type TestVm } from 'vmdevd/testing/test-vms';
import { Connection, LibvirtError, constants as C } from '../src/binding.js';
import { isAmbiguousError, isConnectionError, toBackendError } from '../src/libvirt-errors.js';
import { EventRecorder } from './event-recorder.js';
import { UNKNOWN_UUID, rejection } from './support.js';

let libvirtd: Libvirtd;

before(async () => {
  libvirtd = await startLibvirtd();
});

after(async () => {
  await libvirtd?.stop();
});

/** One connection and one running VM, both released even when the test fails. */
async function withVm(
  body: (connection: Connection, vm: TestVm, recorder: EventRecorder) => Promise<void>,
  options: { type?: string } = {},
): Promise<void> {
  const recorder = new EventRecorder();
  const connection = await Connection.open(libvirtd.uri, { onEvent: recorder.onEvent, onClose: recorder.onClose });
  try {
    const vm = await createTestVm(connection, options);
    try {
      await body(connection, vm, recorder);
    } finally {
      await vm.remove();
    }
  } finally {
    assert.equal(await connection.close(), 0, 'close() must find no other reference to the connection');
  }
}

function removedEvent(recorder: EventRecorder, vm: TestVm, alias: string): Promise<unknown> {
  return recorder.waitFor(
    `DEVICE_REMOVED ${alias}`,
    (event) => event.kind === 'device-removed' && event.uuid === vm.uuid && event.alias === alias,
  );
}

function targets(xml: string): string[] {
  return [...xml.matchAll(/<target dev='([^']+)'/g)].map((match) => match[1] ?? '');
}

/** REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID in libvirt's remote_protocol.x. */
const PROC_LOOKUP_BY_UUID = 24;
/** REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY. */
const PROC_EVENT_REGISTER = 316;

test('a connection without an onEvent listener subscribes to no domain events', { timeout: 60_000 }, async () => {
  const proxy = await LibvirtProxy.start();
  try {
    const registrations = () =>
      proxy.seen.filter((p) => p.direction === 'call' && p.header.procedure === PROC_EVENT_REGISTER).length;
    const quiet = await Connection.open(proxy.uri);
    try {
      assert.equal(registrations(), 0);
    } finally {
      assert.equal(await quiet.close(), 0);
    }
    const listening = await Connection.open(proxy.uri, { onEvent: () => {} });
    try {
      assert.equal(registrations(), 4, 'lifecycle, device added, device removed, device removal failed');
    } finally {
      assert.equal(await listening.close(), 0);
    }
  } finally {
    await proxy.stop();
  }
});

test(
  'a connection looks a domain up once for its calls, and afresh once the domain is gone',
  { timeout: 120_000 },
  async () => {
    const proxy = await LibvirtProxy.start();
    const direct = await Connection.open(libvirtd.uri);
    let connection: Connection | undefined;
    let vm: TestVm | undefined;
    try {
      vm = await createTestVm(direct, { start: false });
      connection = await Connection.open(proxy.uri);
      const lookups = () =>
        proxy.seen.filter((p) => p.direction === 'call' && p.header.procedure === PROC_LOOKUP_BY_UUID).length;

      await connection.getXml(vm.uuid, { inactive: true });
      await connection.getMetadata(vm.uuid, VM_METADATA_NAMESPACE, { inactive: true });
      await connection.getXml(vm.uuid, { inactive: true });
      assert.equal(lookups(), 1, 'three calls on one domain, one lookup');

      // Undefined meanwhile by another client: the kept handle finds nothing...
      await direct.undefine(vm.uuid);
      assert.equal((await rejection(connection.getXml(vm.uuid, { inactive: true }))).code, C.VIR_ERR_NO_DOMAIN);
      // ...and is let go of: the domain defined again under that UUID is looked up anew.
      const again = vm.xml.replace('<name>', `<uuid>${vm.uuid}</uuid><name>`);
      assert.equal((await direct.defineXml(again)).uuid, vm.uuid);
      assert.match(await connection.getXml(vm.uuid, { inactive: true }), new RegExp(vm.name));
      assert.equal(lookups(), 2, 'a lookup again after the domain was gone');

      // The kept handles hold the connection: close() lets go of them first.
      assert.equal(await connection.close(), 0);
      connection = undefined;
    } finally {
      await connection?.close();
      await vm?.remove();
      await direct.close();
      await proxy.stop();
    }
  },
);

test('lists a running test VM with its vmdevd type', { timeout: 60_000 }, async () => {
  await withVm(
    async (connection, vm, recorder) => {
      const listed = (await connection.listDomains()).find((domain) => domain.uuid === vm.uuid);
      assert.ok(listed, 'the VM is listed');
      assert.equal(listed.name, vm.name);
      assert.equal(listed.state, C.VIR_DOMAIN_RUNNING);
      assert.equal(listed.reason, C.VIR_DOMAIN_RUNNING_BOOTED);
      assert.equal(listed.persistent, true);
      assert.equal(listed.active, true);
      assert.ok(listed.id > 0);
      assert.match((await connection.getMetadata(vm.uuid, VM_METADATA_NAMESPACE)) ?? '', /^<vm type="ivi"\s*\/>$/);
      assert.match(
        (await connection.getMetadata(vm.uuid, VM_METADATA_NAMESPACE, { inactive: true })) ?? '',
        /type="ivi"/,
      );
      // The VM was started after open(): its STARTED event came through.
      await recorder.waitFor(
        'STARTED',
        (event) => event.kind === 'lifecycle' && event.uuid === vm.uuid && event.event === C.VIR_DOMAIN_EVENT_STARTED,
      );
    },
    { type: 'ivi' },
  );
});

test(
  'detaches the SCSI and the USB disk by XML: DEVICE_REMOVED, and gone from the XML',
  { timeout: 60_000 },
  async () => {
    await withVm(async (connection, vm, recorder) => {
      assert.deepEqual(targets(await connection.getXml(vm.uuid)).sort(), ['sda', 'sdb']);

      await connection.detachDevice(vm.uuid, vm.devices.scsiDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE);
      await removedEvent(recorder, vm, vm.devices.scsiDisk.alias);
      await connection.detachDevice(vm.uuid, vm.devices.usbDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE);
      await removedEvent(recorder, vm, vm.devices.usbDisk.alias);

      assert.deepEqual(targets(await connection.getXml(vm.uuid)), []);
      // LIVE only: the persistent definition keeps both disks.
      assert.deepEqual(targets(await connection.getXml(vm.uuid, { inactive: true })).sort(), ['sda', 'sdb']);
      const removed = recorder.events.filter((event) => event.kind === 'device-removed');
      assert.deepEqual(
        removed.map((event) => [event.name, event.uuid, event.kind === 'device-removed' && event.alias]),
        [
          [vm.name, vm.uuid, 'scsi0-0-0-0'],
          [vm.name, vm.uuid, 'usb-disk1'],
        ],
      );
    });
  },
);

test('detaches by alias', { timeout: 60_000 }, async () => {
  await withVm(async (connection, vm, recorder) => {
    // LIVE only: libvirt's own aliases (not `ua-` ones) exist only in the running VM.
    await connection.detachDeviceAlias(vm.uuid, vm.devices.usbDisk.alias, C.VIR_DOMAIN_AFFECT_LIVE);
    await removedEvent(recorder, vm, vm.devices.usbDisk.alias);
    assert.deepEqual(targets(await connection.getXml(vm.uuid)), ['sda']);
    assert.deepEqual(targets(await connection.getXml(vm.uuid, { inactive: true })).sort(), ['sda', 'sdb']);
  });
});

test('detaches by XML from the running VM and its definition', { timeout: 60_000 }, async () => {
  await withVm(async (connection, vm, recorder) => {
    await connection.detachDevice(
      vm.uuid,
      vm.devices.usbDisk.xml,
      C.VIR_DOMAIN_AFFECT_LIVE | C.VIR_DOMAIN_AFFECT_CONFIG,
    );
    await removedEvent(recorder, vm, vm.devices.usbDisk.alias);
    assert.deepEqual(targets(await connection.getXml(vm.uuid)), ['sda']);
    assert.deepEqual(targets(await connection.getXml(vm.uuid, { inactive: true })), ['sda']);
  });
});

test('a detached disk can be attached again, with a DEVICE_ADDED event', { timeout: 60_000 }, async () => {
  await withVm(async (connection, vm, recorder) => {
    await connection.detachDevice(vm.uuid, vm.devices.usbDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE);
    await removedEvent(recorder, vm, vm.devices.usbDisk.alias);
    await connection.attachDevice(vm.uuid, vm.devices.usbDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE);
    await recorder.waitFor(
      'DEVICE_ADDED',
      (event) => event.kind === 'device-added' && event.uuid === vm.uuid && event.alias.length > 0,
    );
    assert.deepEqual(targets(await connection.getXml(vm.uuid)).sort(), ['sda', 'sdb']);
  });
});

test(
  'the PCI NIC detach returns after libvirt waited for the guest, and the NIC stays',
  { timeout: 60_000 },
  async () => {
    await withVm(async (connection, vm, recorder) => {
      const started = performance.now();
      const answered: string[] = [];
      // Neither the JavaScript thread nor the binding's worker threads are
      // held while libvirt waits inside the call: a call made after it, which
      // needs no domain (libvirt would queue one behind the detach's job), is
      // answered first. Were the detach done on this thread, the second call
      // would only be made once it had returned, and answered after it.
      await Promise.all([
        connection
          .detachDevice(vm.uuid, vm.devices.nic.xml, C.VIR_DOMAIN_AFFECT_LIVE)
          .then(() => answered.push('detach')),
        connection.isAlive().then(() => answered.push('isAlive')),
      ]);
      const waited = performance.now() - started;
      assert.deepEqual(answered, ['isAlive', 'detach'], 'a call made during the detach was answered only after it');
      assert.ok(waited >= 4_000, `libvirt waits about 5 s for the guest; the call took ${Math.round(waited)} ms`);
      assert.match(await connection.getXml(vm.uuid), new RegExp(`<mac address='${vm.devices.nic.mac}'/>`));
      assert.equal(
        recorder.events.some((event) => event.kind === 'device-removed' && event.alias === vm.devices.nic.alias),
        false,
      );
    });
  },
);

test(
  'a failed system call in libvirtd is its own error, not a lost connection; the connection says it is alive',
  { timeout: 60_000 },
  async () => {
    const connection = await Connection.open(libvirtd.uri, { onEvent: () => {}, onClose: () => {} });
    const name = `vmdevd-test-missing-${process.pid}`;
    const info = await connection.defineXml(
      `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory>` +
        `<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>` +
        `<disk type='file' device='disk'><source file='/nonexistent/vmdevd-missing.img'/><target dev='vda' bus='virtio'/></disk>` +
        `</devices></domain>`,
    );
    try {
      const err = await rejection(connection.create(info.uuid));
      assert.ok(err instanceof LibvirtError);
      // libvirt reports an errno failure (ENOENT) with VIR_ERR_SYSTEM_ERROR, from its storage code.
      assert.equal(err.code, C.VIR_ERR_SYSTEM_ERROR);
      assert.notEqual(err.domain, C.VIR_FROM_RPC);
      assert.notEqual(err.domain, C.VIR_FROM_REMOTE);
      assert.equal(isConnectionError(err), false);
      assert.equal(isAmbiguousError(err), true);
      assert.equal(await connection.isAlive(), true);
      const mapped = toBackendError(err, 'starting the VM');
      assert.equal(mapped.kind, 'Failed');
      assert.match(mapped.message, /^starting the VM: .*\/nonexistent\/vmdevd-missing\.img/);
    } finally {
      await connection.undefine(info.uuid);
      assert.equal(await connection.close(), 0);
    }
  },
);

test("detaching a device the VM does not have fails with libvirt's error", { timeout: 60_000 }, async () => {
  await withVm(async (connection, vm, recorder) => {
    await connection.detachDevice(vm.uuid, vm.devices.scsiDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE);
    await removedEvent(recorder, vm, vm.devices.scsiDisk.alias);
    const byXml = await rejection(connection.detachDevice(vm.uuid, vm.devices.scsiDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE));
    assert.equal(byXml.code, C.VIR_ERR_DEVICE_MISSING);
    assert.match(byXml.message, /sda/);
    // By alias, libvirt (9.0) reports a missing device as an internal error.
    const byAlias = await rejection(
      connection.detachDeviceAlias(vm.uuid, 'ua-no-such-device', C.VIR_DOMAIN_AFFECT_LIVE),
    );
    assert.equal(byAlias.code, C.VIR_ERR_INTERNAL_ERROR);
    assert.match(byAlias.message, /no device found with alias ua-no-such-device/);
    const unknownVm = await rejection(connection.detachDevice(UNKNOWN_UUID, vm.devices.usbDisk.xml, 0));
    assert.equal(unknownVm.code, C.VIR_ERR_NO_DOMAIN);
  });
});

test('suspend, resume and shutdown state changes arrive as lifecycle events', { timeout: 60_000 }, async () => {
  await withVm(async (connection, vm, recorder) => {
    const lifecycle = (event: number) =>
      recorder.waitFor(
        `lifecycle ${event}`,
        (candidate) => candidate.kind === 'lifecycle' && candidate.uuid === vm.uuid && candidate.event === event,
      );
    await connection.suspend(vm.uuid);
    await lifecycle(C.VIR_DOMAIN_EVENT_SUSPENDED);
    assert.equal((await connection.getDomain(vm.uuid)).state, C.VIR_DOMAIN_PAUSED);
    await connection.resume(vm.uuid);
    await lifecycle(C.VIR_DOMAIN_EVENT_RESUMED);
    await connection.destroy(vm.uuid);
    const stopped = await lifecycle(C.VIR_DOMAIN_EVENT_STOPPED);
    assert.equal(stopped.kind === 'lifecycle' && stopped.detail, C.VIR_DOMAIN_EVENT_STOPPED_DESTROYED);
    const off = await connection.getDomain(vm.uuid);
    assert.equal(off.state, C.VIR_DOMAIN_SHUTOFF);
    assert.equal(off.reason, C.VIR_DOMAIN_SHUTOFF_DESTROYED);
    assert.equal(off.id, -1);
  });
});

function ownedLibvirtd(t: TestContext): boolean {
  if (libvirtd.owned) return true;
  t.skip('libvirtd belongs to the host: this test would have to kill it');
  return false;
}

test(
  'the close callback reports EOF when libvirtd dies, and close() still resolves 0',
  { timeout: 120_000 },
  async (t) => {
    if (!ownedLibvirtd(t)) return;
    const recorder = new EventRecorder();
    const connection = await Connection.open(libvirtd.uri, { onEvent: recorder.onEvent, onClose: recorder.onClose });
    let closed: number | undefined;
    try {
      assert.equal(await connection.setKeepAlive(5, 3), true);
      await libvirtd.restart({ signal: 'SIGKILL' });
      assert.equal(await recorder.waitForClose(), C.VIR_CONNECT_CLOSE_REASON_EOF);
      const broken = await rejection(connection.listDomains());
      assert.ok(
        [C.VIR_ERR_INTERNAL_ERROR, C.VIR_ERR_RPC, C.VIR_ERR_SYSTEM_ERROR].includes(broken.code),
        `code ${broken.code}: ${broken.message}`,
      );
    } finally {
      closed = await connection.close();
    }
    assert.equal(closed, 0);
    assert.deepEqual(recorder.closeReasons, [C.VIR_CONNECT_CLOSE_REASON_EOF]);

    // The restarted daemon serves new connections.
    const again = await Connection.open(libvirtd.uri);
    try {
      assert.ok(Array.isArray(await again.listDomains()));
    } finally {
      assert.equal(await again.close(), 0);
    }
  },
);

test('keepalive closes the connection to a daemon that stopped answering', { timeout: 120_000 }, async (t) => {
  if (!ownedLibvirtd(t)) return;
  const pid = libvirtd.pid;
  assert.ok(pid !== undefined);
  const recorder = new EventRecorder();
  const connection = await Connection.open(libvirtd.uri, { onClose: recorder.onClose });
  try {
    assert.equal(await connection.setKeepAlive(1, 1), true);
    process.kill(pid, 'SIGSTOP');
    try {
      assert.equal(await recorder.waitForClose(20_000), C.VIR_CONNECT_CLOSE_REASON_KEEPALIVE);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
  } finally {
    assert.equal(await connection.close(), 0);
  }
});
