// The binding against libvirt's in-process test driver (test:///default):
// no daemon needed. The driver's default connection keeps its state for
// the whole process, so every test leaves the `test` domain running.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { create } from 'xmlbuilder2';
import { VM_METADATA_NAMESPACE as METADATA_NAMESPACE } from 'vmdevd/testing/test-vms';
import { Connection, constants as C, type DomainInfo } from '../src/binding.js';
import { EventRecorder } from './event-recorder.js';
import { TEST_DOMAIN_UUID, TEST_URI as URI, UNKNOWN_UUID, rejection } from './support.js';

async function withConnection(body: (connection: Connection, recorder: EventRecorder) => Promise<void>): Promise<void> {
  const recorder = new EventRecorder();
  const connection = await Connection.open(URI, { onEvent: recorder.onEvent, onClose: recorder.onClose });
  try {
    await body(connection, recorder);
  } finally {
    assert.equal(await connection.close(), 0, 'close() must find no other reference to the connection');
  }
}

test('lists the test domain with its state', async () => {
  await withConnection(async (connection) => {
    const domains = await connection.listDomains();
    const domain = domains.find((candidate) => candidate.name === 'test');
    // The reason depends on what earlier calls in this process did to it.
    assert.equal(typeof domain?.reason, 'number');
    assert.deepEqual(domain, {
      name: 'test',
      uuid: TEST_DOMAIN_UUID,
      id: 1,
      state: C.VIR_DOMAIN_RUNNING,
      reason: domain?.reason ?? -1,
      persistent: true,
      active: true,
    } satisfies DomainInfo);
    assert.deepEqual(await connection.getDomain(TEST_DOMAIN_UUID), domain);
  });
});

test('returns the live and the inactive XML', async () => {
  await withConnection(async (connection) => {
    const live = await connection.getXml(TEST_DOMAIN_UUID);
    const inactive = await connection.getXml(TEST_DOMAIN_UUID, { inactive: true });
    assert.match(live, /^<domain type='test' id='1'>/);
    assert.match(live, /<uuid>6695eb01-f6a4-8304-79aa-97f2502e193f<\/uuid>/);
    // Only a running domain's XML carries its id.
    assert.match(inactive, /^<domain type='test'>/);
  });
});

test('resolves metadata as undefined when the domain has none', async () => {
  await withConnection(async (connection) => {
    assert.equal(await connection.getMetadata(TEST_DOMAIN_UUID, METADATA_NAMESPACE), undefined);
    assert.equal(await connection.getMetadata(TEST_DOMAIN_UUID, METADATA_NAMESPACE, { inactive: true }), undefined);
  });
});

test('suspend and resume change the state and arrive as lifecycle events', async () => {
  await withConnection(async (connection, recorder) => {
    await connection.suspend(TEST_DOMAIN_UUID);
    try {
      const suspended = await recorder.waitFor(
        'SUSPENDED',
        (event) => event.kind === 'lifecycle' && event.event === C.VIR_DOMAIN_EVENT_SUSPENDED,
      );
      assert.deepEqual(suspended, {
        kind: 'lifecycle',
        name: 'test',
        uuid: TEST_DOMAIN_UUID,
        event: C.VIR_DOMAIN_EVENT_SUSPENDED,
        detail: C.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
      });
      const paused = await connection.getDomain(TEST_DOMAIN_UUID);
      assert.equal(paused.state, C.VIR_DOMAIN_PAUSED);
      assert.equal(paused.reason, C.VIR_DOMAIN_PAUSED_USER);
    } finally {
      await connection.resume(TEST_DOMAIN_UUID);
    }
    const resumed = await recorder.waitFor(
      'RESUMED',
      (event) => event.kind === 'lifecycle' && event.event === C.VIR_DOMAIN_EVENT_RESUMED,
    );
    assert.equal(resumed.kind === 'lifecycle' && resumed.detail, C.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED);
    const running = await connection.getDomain(TEST_DOMAIN_UUID);
    assert.equal(running.state, C.VIR_DOMAIN_RUNNING);
    assert.equal(running.reason, C.VIR_DOMAIN_RUNNING_UNPAUSED);
    // The events came in the order libvirt emitted them.
    const kinds = recorder.events.map((event) => (event.kind === 'lifecycle' ? event.event : event.kind));
    assert.deepEqual(kinds, [C.VIR_DOMAIN_EVENT_SUSPENDED, C.VIR_DOMAIN_EVENT_RESUMED]);
  });
});

test('libvirt errors carry code, domain, level and message', async () => {
  await withConnection(async (connection) => {
    const unknown = await rejection(connection.getXml(UNKNOWN_UUID));
    assert.equal(unknown.name, 'LibvirtError');
    assert.equal(unknown.code, C.VIR_ERR_NO_DOMAIN);
    assert.equal(unknown.domain, C.VIR_FROM_TEST);
    assert.equal(unknown.level, C.VIR_ERR_ERROR);
    assert.match(unknown.message, /not found/i);

    const malformed = await rejection(connection.getDomain('not-a-uuid'));
    assert.equal(malformed.code, C.VIR_ERR_INVALID_ARG);

    // The test driver cannot detach: the error of an unsupported call.
    const detach = await rejection(
      connection.detachDevice(
        TEST_DOMAIN_UUID,
        "<disk type='file' device='disk'><target dev='vda'/></disk>",
        C.VIR_DOMAIN_AFFECT_LIVE,
      ),
    );
    assert.equal(detach.code, C.VIR_ERR_NO_SUPPORT);
    const alias = await rejection(connection.detachDeviceAlias(TEST_DOMAIN_UUID, 'ua-disk', C.VIR_DOMAIN_AFFECT_LIVE));
    assert.equal(alias.code, C.VIR_ERR_NO_SUPPORT);

    // An error does not break the connection.
    assert.equal((await connection.getDomain(TEST_DOMAIN_UUID)).name, 'test');
  });
});

test('opening a malformed URI fails with a LibvirtError', async () => {
  // Rejected by the client library itself, whether or not a daemon runs.
  const error = await rejection(Connection.open('http://['));
  assert.equal(error.code, C.VIR_ERR_INTERNAL_ERROR);
  assert.match(error.message, /Unable to parse URI/);
});

test('keepalive is refused by a driver without a daemon', async () => {
  await withConnection(async (connection) => {
    const error = await rejection(connection.setKeepAlive(5, 3));
    assert.equal(error.code, C.VIR_ERR_NO_SUPPORT);
  });
});

test('a read-only connection lists but cannot change', async () => {
  const connection = await Connection.open(URI, { readOnly: true });
  try {
    assert.ok((await connection.listDomains()).some((domain) => domain.uuid === TEST_DOMAIN_UUID));
    const error = await rejection(connection.suspend(TEST_DOMAIN_UUID));
    assert.equal(error.code, C.VIR_ERR_OPERATION_DENIED);
  } finally {
    assert.equal(await connection.close(), 0);
  }
});

test('defines a domain with vmdevd metadata, starts, destroys and undefines it', async () => {
  const name = `vmdevd-test-${randomBytes(4).toString('hex')}`;
  const domain = create().ele('domain', { type: 'test' });
  domain.ele('name').txt(name);
  domain.ele('metadata').ele(METADATA_NAMESPACE, 'vmdevd:vm', { type: 'ivi' });
  domain.ele('memory', { unit: 'MiB' }).txt('64');
  domain.ele('os').ele('type').txt('hvm');
  await withConnection(async (connection, recorder) => {
    const defined = await connection.defineXml(domain.end({ headless: true }));
    try {
      assert.equal(defined.name, name);
      assert.equal(defined.state, C.VIR_DOMAIN_SHUTOFF);
      assert.equal(defined.id, -1);
      assert.equal(defined.persistent, true);
      assert.equal(defined.active, false);
      const metadata = await connection.getMetadata(defined.uuid, METADATA_NAMESPACE);
      assert.match(metadata ?? '', /^<vm type="ivi"\s*\/>$/);

      await connection.create(defined.uuid);
      const running = await connection.getDomain(defined.uuid);
      assert.equal(running.state, C.VIR_DOMAIN_RUNNING);
      assert.ok(running.id > 0);
      await connection.destroy(defined.uuid);
      assert.equal((await connection.getDomain(defined.uuid)).state, C.VIR_DOMAIN_SHUTOFF);
    } finally {
      await connection.undefine(defined.uuid);
    }
    const notFound = await rejection(connection.getDomain(defined.uuid));
    assert.equal(notFound.code, C.VIR_ERR_NO_DOMAIN);

    await recorder.waitFor(
      'UNDEFINED',
      (event) =>
        event.kind === 'lifecycle' && event.uuid === defined.uuid && event.event === C.VIR_DOMAIN_EVENT_UNDEFINED,
    );
    const mine = recorder.events.filter((event) => event.uuid === defined.uuid);
    assert.deepEqual(
      mine.map((event) => (event.kind === 'lifecycle' ? [event.event, event.detail] : event.kind)),
      [
        [C.VIR_DOMAIN_EVENT_DEFINED, C.VIR_DOMAIN_EVENT_DEFINED_ADDED],
        [C.VIR_DOMAIN_EVENT_STARTED, C.VIR_DOMAIN_EVENT_STARTED_BOOTED],
        [C.VIR_DOMAIN_EVENT_STOPPED, C.VIR_DOMAIN_EVENT_STOPPED_DESTROYED],
        [C.VIR_DOMAIN_EVENT_UNDEFINED, C.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED],
      ],
    );
    assert.ok(mine.every((event) => event.name === name));
  });
});

test('one listing gives every domain as getDomain and getMetadata give them one by one', async () => {
  const name = `vmdevd-test-${randomBytes(4).toString('hex')}`;
  const domain = create().ele('domain', { type: 'test' });
  domain.ele('name').txt(name);
  domain.ele('metadata').ele(METADATA_NAMESPACE, 'vmdevd:vm', { type: 'listed' });
  domain.ele('memory', { unit: 'MiB' }).txt('64');
  domain.ele('os').ele('type').txt('hvm');
  await withConnection(async (connection) => {
    const defined = await connection.defineXml(domain.end({ headless: true }));
    try {
      await connection.suspend(TEST_DOMAIN_UUID);
      const listed = await connection.listDomains({ metadataNamespace: METADATA_NAMESPACE });
      const plain = await connection.listDomains();
      assert.ok(listed.length >= 2);
      assert.deepEqual(
        plain.map((d) => d.uuid),
        listed.map((d) => d.uuid),
      );
      for (const info of listed) {
        const { metadata, ...rest } = info;
        assert.deepEqual(rest, await connection.getDomain(info.uuid), info.name);
        assert.equal(metadata, await connection.getMetadata(info.uuid, METADATA_NAMESPACE), info.name);
      }
      assert.equal(listed.find((d) => d.uuid === TEST_DOMAIN_UUID)!.state, C.VIR_DOMAIN_PAUSED);
      assert.match(listed.find((d) => d.uuid === defined.uuid)!.metadata ?? '', /type="listed"/);
      assert.ok(
        plain.every((d) => d.metadata === undefined),
        'no metadata unless asked for',
      );
    } finally {
      await connection.resume(TEST_DOMAIN_UUID);
      await connection.undefine(defined.uuid);
    }
  });
});

test('close() resolves 0, and the connection refuses calls afterwards', async () => {
  const recorder = new EventRecorder();
  const connection = await Connection.open(URI, { onEvent: recorder.onEvent });
  await connection.listDomains();
  assert.equal(await connection.close(), 0);
  await assert.rejects(connection.listDomains(), { code: 'ERR_LIBVIRT_CONNECTION_CLOSED' });
  await assert.rejects(connection.close(), { code: 'ERR_LIBVIRT_CONNECTION_CLOSED' });

  // Events on the closed connection do not reach its listener. Another
  // connection, open all along, gets them: once it has the last one, they
  // have been dispatched to every listener.
  const witness = new EventRecorder();
  const other = await Connection.open(URI, { onEvent: witness.onEvent });
  try {
    await other.suspend(TEST_DOMAIN_UUID);
    await other.resume(TEST_DOMAIN_UUID);
    await witness.waitFor(
      'RESUMED',
      (event) =>
        event.kind === 'lifecycle' && event.uuid === TEST_DOMAIN_UUID && event.event === C.VIR_DOMAIN_EVENT_RESUMED,
    );
  } finally {
    assert.equal(await other.close(), 0);
  }
  assert.deepEqual(recorder.events, []);
});

test('close() counts a call still in flight as a reference', async () => {
  const connection = await Connection.open(URI);
  const listing = connection.listDomains();
  const remaining = await connection.close();
  // The list call may have finished first on another thread, or still hold its reference.
  assert.ok(remaining === 0 || remaining === 1, `unexpected count ${remaining}`);
  assert.ok((await listing).length > 0);
});

test('constants come from the libvirt headers', () => {
  assert.equal(C.VIR_DOMAIN_RUNNING, 1);
  assert.equal(C.VIR_DOMAIN_AFFECT_LIVE, 1);
  assert.equal(C.VIR_DOMAIN_AFFECT_CONFIG, 2);
  assert.equal(C.VIR_ERR_NO_DOMAIN, 42);
  assert.ok(Object.isFrozen(C));
});
