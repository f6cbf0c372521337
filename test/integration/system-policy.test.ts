/**
 * The bus policy on a real dbus-daemon with a system-style configuration
 * that includes dbus/org.example.dbustest.conf, and the daemon running as
 * the service user from an installed copy: root and members of
 * vmdevd-admin may call TestMethod and Set, anyone else gets AccessDenied
 * from the bus and may still read, introspect, ping and receive signals,
 * and only the service user may own the name. With a permissive policy
 * instead, the daemon's own check still refuses the unprivileged caller.
 *
 * Needs root: it creates the accounts it needs (and removes them after).
 * Clients are Python's dbus_next (test/clients/policy_probe.py), gdbus and
 * busctl, each run as the user under test with setpriv.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Accounts, type Account } from '../harness/accounts.js';
import { TestClient } from '../harness/bus-client.js';
import { startPrivateBus, systemBusConfig, type PrivateBus } from '../harness/dbus-daemon.js';
import { run, startProcess } from '../harness/process.js';
import { DEFAULT_VMS, readJournal, TEST_BACKEND } from '../harness/stack.js';
import { addTestBackend, installToTempDir, type Installed } from '../harness/system-install.js';
import { REPO_ROOT, startVmdevd, type VmdevdProcess } from '../harness/vmdevd-process.js';

const POLICY = join(REPO_ROOT, 'dbus/org.example.dbustest.conf');
const SERVICE_USER = 'vmdevd';
const ADMIN_GROUP = 'vmdevd-admin';
const BUS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied';
const DAEMON_DENIED = 'org.example.dbustest.Error.AccessDenied';
const IFACE = 'org.example.dbustest.Module';
const isRoot = process.getuid?.() === 0;

interface ProbeResult {
  uid: number;
  calls: Record<string, string>;
  signals: number;
}

const READS = ['Get', 'GetAll', 'GetDevices', 'Introspect', 'Introspect /', 'Ping', 'GetMachineId'];

/** A permissive policy: anyone may call anything; owning stays with the service user. */
const PERMISSIVE = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="${SERVICE_USER}"><allow own="org.example.dbustest"/></policy>
  <policy context="default">
    <allow send_destination="org.example.dbustest"/>
    <allow receive_sender="org.example.dbustest"/>
  </policy>
</busconfig>
`;

describe('system bus policy', { skip: isRoot ? false : 'needs root: it creates users and groups' }, () => {
  let accounts: Accounts | undefined;
  let service: Account;
  let user: Account;
  let admin: Account;
  let inst: Installed | undefined;
  let plugin: string;
  let probeScript: string;
  let journalFile: string;

  /** setpriv's arguments to run as `who`, with the groups /etc/group gives it. */
  const as = (who: Account) => ['setpriv', `--reuid=${who.id}`, `--regid=${who.gid}`, '--init-groups', '--'];
  const env = { PATH: process.env['PATH'], HOME: '/nonexistent', LANG: 'C.UTF-8' };

  const journal = () => readJournal(journalFile);
  const detachedLabels = () =>
    journal()
      .filter((e) => e['op'] === 'detach')
      .map((e) => e['label']);
  const attachedLabels = () =>
    journal()
      .filter((e) => e['op'] === 'attach')
      .map((e) => e['label']);

  before(async () => {
    accounts = new Accounts();
    // The bus resolves user and group names when it reads its config: they exist first.
    accounts.group(ADMIN_GROUP);
    service = accounts.user(SERVICE_USER, { system: true });
    user = accounts.user('vmdevd-t-user');
    admin = accounts.user('vmdevd-t-admin', { groups: [ADMIN_GROUP] });

    // The service user may not be able to read the checkout: run an installed copy.
    inst = await installToTempDir();
    plugin = addTestBackend(inst, TEST_BACKEND);
    probeScript = inst.dir.file('policy_probe.py');
    copyFileSync(join(REPO_ROOT, 'test/clients/policy_probe.py'), probeScript);
    chmodSync(probeScript, 0o644);
    const state = inst.dir.file('state');
    mkdirSync(state);
    chownSync(state, service.id, service.gid);
    journalFile = join(state, 'journal.jsonl');
  });

  after(async () => {
    inst?.remove();
    accounts?.cleanup();
  });

  /** A system-style bus with `policyFile`, and vmdevd on it as the service user. */
  async function startSystem(
    policyFile: string,
  ): Promise<{ bus: PrivateBus; daemon: VmdevdProcess; root: TestClient; stop(): Promise<void> }> {
    const bus = await startPrivateBus((socket) => systemBusConfig(socket, [policyFile]));
    let daemon: VmdevdProcess | undefined;
    try {
      chmodSync(bus.dir.path, 0o755);
      daemon = await startVmdevd({
        bin: inst!.bin,
        address: bus.address,
        wrapper: as(service),
        nodeArgs: ['--jitless', '--no-expose-wasm'],
        env,
        config: {
          logLevel: 'debug',
          detachTimeoutSeconds: 2,
          backends: [{ id: 'test', plugin, vms: DEFAULT_VMS, journal: journalFile }],
        },
      });
      const root = await TestClient.connect(bus.address);
      return {
        bus,
        daemon,
        root,
        async stop() {
          root.close();
          await daemon!.stop();
          await bus.stop();
        },
      };
    } catch (err) {
      await daemon?.stop();
      await bus.stop();
      throw err;
    }
  }

  /**
   * Runs the probe as `who` (root when undefined); when it is ready, root
   * changes vm3's state so that a TestSignal goes out.
   */
  async function probe(
    sys: { bus: PrivateBus; root: TestClient },
    who: Account | undefined,
    label: string,
  ): Promise<ProbeResult> {
    const args = ['/usr/bin/python3', probeScript, sys.bus.address, label, '10'];
    const proc =
      who === undefined
        ? startProcess(args[0]!, args.slice(1))
        : startProcess(as(who)[0]!, [...as(who).slice(1), ...args], { env });
    try {
      await proc.waitForOutput(/^READY$/m, 20_000);
      const states = await sys.root.getProperty<Record<string, string>>('TestProperty');
      await sys.root.setProperty('TestProperty', 'a{ss}', { vm3: states['vm3'] === 'running' ? 'shutoff' : 'running' });
      const [line] = await proc.waitForOutput(/^\{.*\}$/m, 20_000);
      assert.equal(await proc.exited(), 0, proc.output());
      return JSON.parse(line) as ProbeResult;
    } finally {
      await proc.stop();
    }
  }

  describe('with the policy from dbus/', () => {
    let sys: Awaited<ReturnType<typeof startSystem>>;
    before(async () => {
      sys = await startSystem(POLICY);
    });
    after(async () => {
      await sys?.stop();
    });

    it('has the daemon own the name as the service user', async () => {
      const owner = await sys.root.nameOwner();
      assert.ok(owner);
      const [uid] = await sys.root.call({
        destination: 'org.freedesktop.DBus',
        path: '/org/freedesktop/DBus',
        interface: 'org.freedesktop.DBus',
        member: 'GetConnectionUnixUser',
        signature: 's',
        body: [owner],
      });
      assert.equal(uid, service.id);
    });

    it('lets root call TestMethod, AttachDevices and Set, and nothing else but reading', async () => {
      const r = await probe(sys, undefined, 'root-d1');
      assert.equal(r.uid, 0);
      for (const read of READS) assert.equal(r.calls[read], 'ok', read);
      assert.equal(r.calls['TestMethod'], 'ok');
      assert.equal(r.calls['AttachDevices'], 'ok');
      assert.equal(r.calls['Set'], 'ok');
      assert.ok(attachedLabels().includes('root-d1-attach'), 'the attach was started');
      assert.equal(r.calls['unknown member'], BUS_DENIED);
      assert.equal(r.calls['unknown interface'], BUS_DENIED);
      assert.equal(r.calls['TestMethod without interface'], BUS_DENIED);
      assert.ok(r.signals >= 1, 'root receives TestSignal');
      assert.ok(detachedLabels().includes('root-d1'), 'the detach was started');
    });

    it('gives an unprivileged user AccessDenied from the bus for TestMethod, AttachDevices and Set, and lets it read (GetDevices too) and receive TestSignal', async () => {
      const r = await probe(sys, user, 'user-d1');
      assert.equal(r.uid, user.id);
      for (const read of READS) assert.equal(r.calls[read], 'ok', read);
      for (const call of [
        'TestMethod',
        'AttachDevices',
        'Set',
        'unknown member',
        'unknown interface',
        'TestMethod without interface',
      ]) {
        assert.equal(r.calls[call], BUS_DENIED, call);
      }
      assert.ok(r.signals >= 1, 'the unprivileged user receives TestSignal');
      assert.ok(!detachedLabels().some((l) => String(l).startsWith('user-d1')), 'nothing was started');
      assert.ok(!attachedLabels().some((l) => String(l).startsWith('user-d1')), 'nothing was attached');
      assert.doesNotMatch(
        sys.daemon.output(),
        new RegExp(`access denied .*uid=${user.id}`),
        'the bus stopped the calls before the daemon',
      );
    });

    it('shows gdbus and busctl users the bus refusal', async () => {
      const gdbus = await run(
        as(user)[0]!,
        [
          ...as(user).slice(1),
          'gdbus',
          'call',
          '--address',
          sys.bus.address,
          '--dest',
          'org.example.dbustest',
          '--object-path',
          '/org/example/dbustest',
          '--method',
          `${IFACE}.TestMethod`,
          'vm1',
          "{'user-gd': ['type=disk', 'target=vdb']}",
        ],
        { env },
      );
      assert.notEqual(gdbus.code, 0);
      assert.match(gdbus.stderr, /GDBus\.Error:org\.freedesktop\.DBus\.Error\.AccessDenied/);
      const get = await run(
        as(user)[0]!,
        [
          ...as(user).slice(1),
          'busctl',
          `--address=${sys.bus.address}`,
          'get-property',
          'org.example.dbustest',
          '/org/example/dbustest',
          IFACE,
          'Backends',
        ],
        { env },
      );
      assert.equal(get.stdout.trim(), 'a{ss} 1 "test" "connected"', get.stderr);
      const set = await run(
        as(user)[0]!,
        [
          ...as(user).slice(1),
          'busctl',
          `--address=${sys.bus.address}`,
          'set-property',
          'org.example.dbustest',
          '/org/example/dbustest',
          IFACE,
          'TestProperty',
          'a{ss}',
          '1',
          'vm1',
          'paused',
        ],
        { env },
      );
      assert.notEqual(set.code, 0);
      assert.match(set.stderr, /Access denied/i);
    });

    it('lets a member of vmdevd-admin call TestMethod, AttachDevices and Set', async () => {
      const r = await probe(sys, admin, 'admin-d1');
      assert.equal(r.uid, admin.id);
      for (const read of READS) assert.equal(r.calls[read], 'ok', read);
      assert.equal(r.calls['TestMethod'], 'ok');
      assert.equal(r.calls['AttachDevices'], 'ok');
      assert.equal(r.calls['Set'], 'ok');
      assert.equal(r.calls['unknown member'], BUS_DENIED);
      assert.ok(detachedLabels().includes('admin-d1'));
    });

    it('lets no one but the service user own the name, even when it is free', async () => {
      // While the daemon owns it: the policy is checked before ownership.
      for (const who of [undefined, user, admin]) {
        const r = await probe(sys, who, `own-${who?.name ?? 'root'}`);
        assert.equal(r.calls['RequestName'], BUS_DENIED, `${who?.name ?? 'root'} may not own the name`);
      }
      await sys.daemon.stop();
      const request = (who: Account | undefined) => {
        const cmd = [
          'busctl',
          `--address=${sys.bus.address}`,
          'call',
          'org.freedesktop.DBus',
          '/org/freedesktop/DBus',
          'org.freedesktop.DBus',
          'RequestName',
          'su',
          'org.example.dbustest',
          '4',
        ];
        return who === undefined
          ? run(cmd[0]!, cmd.slice(1))
          : run(as(who)[0]!, [...as(who).slice(1), ...cmd], { env });
      };
      for (const who of [undefined, user, admin]) {
        const r = await request(who);
        assert.notEqual(r.code, 0, `${who?.name ?? 'root'} owned the free name`);
        assert.match(r.stderr, /not allowed to own|Access denied/i);
      }
      const own = await request(service);
      assert.equal(own.stdout.trim(), 'u 1', `the service user owns the free name: ${own.stderr}`);
    });
  });

  describe('with a permissive policy instead', () => {
    let sys: Awaited<ReturnType<typeof startSystem>>;
    before(async () => {
      const file = inst!.dir.file('permissive.conf');
      writeFileSync(file, PERMISSIVE);
      sys = await startSystem(file);
    });
    after(async () => {
      await sys?.stop();
    });

    it('still denies TestMethod, AttachDevices and Set to the unprivileged user, in the daemon', async () => {
      const r = await probe(sys, user, 'perm-user-d1');
      for (const read of READS) assert.equal(r.calls[read], 'ok', read);
      assert.equal(r.calls['TestMethod'], DAEMON_DENIED);
      assert.equal(r.calls['AttachDevices'], DAEMON_DENIED);
      assert.ok(!attachedLabels().some((l) => String(l).startsWith('perm-user-d1')), 'nothing was attached');
      assert.equal(r.calls['Set'], DAEMON_DENIED);
      assert.equal(r.calls['TestMethod without interface'], DAEMON_DENIED);
      assert.equal(
        r.calls['unknown member'],
        'org.freedesktop.DBus.Error.UnknownMethod',
        'the call reached the daemon',
      );
      assert.ok(r.signals >= 1);
      assert.ok(!detachedLabels().some((l) => String(l).startsWith('perm-user-d1')), 'nothing was started');
      await sys.daemon.waitForOutput(new RegExp(`access denied caller=:1\\.\\d+ uid=${user.id} call=TestMethod`));
    });

    it('still lets the admin group through, by the caller groups the bus reports', async () => {
      const r = await probe(sys, admin, 'perm-admin-d1');
      assert.equal(r.calls['TestMethod'], 'ok');
      assert.equal(r.calls['Set'], 'ok');
      assert.ok(detachedLabels().includes('perm-admin-d1'));
    });
  });
});
