/**
 * The install and uninstall commands, into a temporary DESTDIR: every file
 * where it belongs with its mode, production dependencies only, the plugins
 * with their native builds, a config that is never overwritten or removed,
 * and a unit that `systemd-analyze verify` accepts and `security` rates
 * 1.0 or lower.
 *
 * Both systemd-analyze checks work without systemd running, on the unit
 * file's path in the DESTDIR: `verify` loads what the unit depends on
 * (dbus.socket, sysinit.target) from the host, where the packages systemd
 * and dbus put them (scripts/setup.sh installs both), and checks that the
 * node of ExecStart exists. `--root=DESTDIR` would need those units and
 * node inside the DESTDIR as well.
 */
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/core/config.js';
import { TestClient } from '../harness/bus-client.js';
import { openBusConfig, startPrivateBus } from '../harness/dbus-daemon.js';
import { run } from '../harness/process.js';
import { startQemu } from '../harness/qemu-process.js';
import { installToTempDir, runInstallScript, type Installed } from '../harness/system-install.js';
import { makeTempDir } from '../harness/temp-dir.js';
import { DAEMON_ENV, DAEMON_NODE_ARGS, REPO_ROOT, startVmdevd } from '../harness/vmdevd-process.js';

/** Files outside PREFIX/lib/vmdevd, with their modes, for PREFIX=/usr/local. */
const SYSTEM_FILES: Record<string, number> = {
  'etc/vmdevd/config.json': 0o644,
  'usr/local/lib/systemd/system/vmdevd.service': 0o644,
  'usr/local/lib/sysusers.d/vmdevd.conf': 0o644,
  'usr/share/dbus-1/system.d/org.example.dbustest.conf': 0o644,
  'usr/share/dbus-1/system-services/org.example.dbustest.service': 0o644,
  'usr/share/dbus-1/interfaces/org.example.dbustest.xml': 0o644,
};
const MAX_EXPOSURE = 1.0;

/** Every path under `dir` (relative), directories included, without following links. */
function walk(dir: string, base = dir, out: string[] = []): string[] {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    out.push(relative(base, path));
    if (lstatSync(path).isDirectory()) walk(path, base, out);
  }
  return out;
}

const mode = (path: string) => lstatSync(path).mode & 0o7777;
const octal = (m: number) => m.toString(8).padStart(4, '0');
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const plugins = existsSync(join(REPO_ROOT, 'plugins'))
  ? readdirSync(join(REPO_ROOT, 'plugins')).filter((p) => existsSync(join(REPO_ROOT, 'plugins', p, 'package.json')))
  : [];

describe('system install into a DESTDIR', () => {
  let inst: Installed;
  before(async () => {
    inst = await installToTempDir();
  });
  after(() => inst?.remove());

  it('puts the unit, sysusers file, policy, activation file, interface XML and config where they belong, mode 0644', () => {
    const files = walk(inst.destdir).filter(
      (p) => !p.startsWith('usr/local/lib/vmdevd') && !lstatSync(join(inst.destdir, p)).isDirectory(),
    );
    const links = readdirSync(join(REPO_ROOT, 'bin')).map((b) => `usr/local/bin/${b}`);
    assert.deepEqual(files.sort(), [...Object.keys(SYSTEM_FILES), ...links].sort());
    for (const [file, expected] of Object.entries(SYSTEM_FILES)) {
      assert.equal(octal(mode(join(inst.destdir, file))), octal(expected), file);
    }
    assert.equal(
      readFileSync(inst.path('usr/share/dbus-1/system.d/org.example.dbustest.conf'), 'utf8'),
      readFileSync(join(REPO_ROOT, 'dbus/org.example.dbustest.conf'), 'utf8'),
    );
    assert.equal(
      readFileSync(inst.path('usr/share/dbus-1/interfaces/org.example.dbustest.xml'), 'utf8'),
      readFileSync(join(REPO_ROOT, 'dbus/org.example.dbustest.xml'), 'utf8'),
    );
    assert.equal(
      readFileSync(inst.path('etc/vmdevd/config.json'), 'utf8'),
      readFileSync(join(REPO_ROOT, 'systemd/config.json'), 'utf8'),
    );
  });

  it('links every program into PREFIX/bin, and the installed vmdevd runs', async () => {
    for (const bin of readdirSync(join(REPO_ROOT, 'bin'))) {
      const l = inst.path(`usr/local/bin/${bin}`);
      assert.ok(lstatSync(l).isSymbolicLink(), bin);
      assert.equal(readlinkSync(l), `../lib/vmdevd/bin/${bin}`);
      assert.equal(octal(mode(join(inst.pkglibdir, 'bin', bin))), '0755', bin);
    }
    const link = inst.path('usr/local/bin/vmdevd');
    const r = await run(process.execPath, [link, '--version']);
    assert.equal(
      r.stdout.trim(),
      `vmdevd ${(JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version}`,
      r.stderr,
    );
  });

  it('writes the install paths into the unit and the activation file', () => {
    const unit = readFileSync(inst.path('usr/local/lib/systemd/system/vmdevd.service'), 'utf8');
    const activation = readFileSync(inst.path('usr/share/dbus-1/system-services/org.example.dbustest.service'), 'utf8');
    const command = `${process.execPath} ${DAEMON_NODE_ARGS.join(' ')} /usr/local/lib/vmdevd/bin/vmdevd --system --config /etc/vmdevd/config.json`;
    const escaped = command.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    assert.match(unit, new RegExp(`^ExecStart=${escaped}$`, 'm'));
    const env = Object.entries(DAEMON_ENV)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
    assert.match(unit, new RegExp(`^Environment=${env}$`, 'm'));
    assert.match(activation, new RegExp(`^Exec=/usr/bin/env ${env} ${escaped}$`, 'm'));
    const dropIn = readFileSync(inst.path('usr/local/lib/vmdevd/systemd/jitless.conf'), 'utf8');
    assert.match(
      dropIn,
      new RegExp(
        `^ExecStart=${process.execPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} --jitless --no-expose-wasm ${DAEMON_NODE_ARGS.join(' ')} /usr/local/lib/vmdevd/bin/vmdevd `,
        'm',
      ),
    );
    assert.doesNotMatch(unit + activation + dropIn, /@[A-Z_]+@/, 'no placeholder is left');
  });

  it('installs compiled code and production dependencies only, readable by all and writable by root only', () => {
    const lib = inst.pkglibdir;
    const paths = walk(lib);
    for (const required of [
      'package.json',
      'bin/vmdevd',
      'dist/src/daemon/main.js',
      'dist/src/plugin-api.js',
      'dbus/org.example.dbustest.xml',
    ]) {
      assert.ok(paths.includes(required), `${required} is installed`);
    }
    for (const dep of Object.keys(pkg.dependencies))
      assert.ok(existsSync(join(lib, 'node_modules', dep, 'package.json')), `dependency ${dep}`);
    for (const dep of Object.keys(pkg.devDependencies))
      assert.ok(!existsSync(join(lib, 'node_modules', dep)), `devDependency ${dep} is left out`);
    assert.equal(
      readlinkSync(join(lib, 'node_modules/vmdevd')),
      '..',
      'plugins resolve vmdevd/plugin-api to the installation',
    );
    const stray = paths.filter(
      (p) =>
        p.startsWith('dist/test') ||
        p.startsWith('dist/bench') ||
        p.startsWith('src/') ||
        p.startsWith('test/') ||
        p.endsWith('.tsbuildinfo') ||
        (p.endsWith('.ts') && !p.endsWith('.d.ts')),
    );
    assert.deepEqual(
      stray.filter((p) => !p.startsWith('node_modules/')),
      [],
      'no sources, tests or build info',
    );

    const uid = process.getuid!();
    for (const p of paths) {
      const st = lstatSync(join(lib, p));
      if (uid === 0) assert.equal(st.uid, 0, `${p} belongs to root`);
      if (st.isSymbolicLink()) continue;
      assert.equal(st.mode & 0o022, 0, `${p} (${octal(st.mode & 0o7777)}) is writable by group or others`);
      assert.equal(st.mode & 0o004, 0o004, `${p} is readable by others`);
      if (st.isDirectory()) assert.equal(st.mode & 0o001, 0o001, `${p} is searchable by others`);
    }
  });

  it('installs every plugin with its compiled code and native build', (t) => {
    if (plugins.length === 0) {
      t.skip('this checkout has no plugins/');
      return;
    }
    for (const name of plugins) {
      const src = join(REPO_ROOT, 'plugins', name);
      const dest = join(inst.pkglibdir, 'plugins', name);
      const manifest = JSON.parse(readFileSync(join(src, 'package.json'), 'utf8')) as { main?: string };
      assert.ok(existsSync(join(dest, 'package.json')), `plugins/${name}/package.json`);
      assert.ok(existsSync(join(dest, manifest.main ?? 'index.js')), `plugins/${name}: its main file`);
      assert.ok(
        !existsSync(join(dest, 'src')) && !existsSync(join(dest, 'dist/test')),
        `plugins/${name}: no sources or tests`,
      );
      if (existsSync(join(src, 'binding.gyp'))) {
        const natives = readdirSync(join(src, 'build/Release')).filter((f) => f.endsWith('.node'));
        assert.ok(natives.length > 0, `plugins/${name} has a native build`);
        for (const n of natives)
          assert.ok(existsSync(join(dest, 'build/Release', n)), `plugins/${name}/build/Release/${n}`);
      }
    }
  });

  it('runs the installed libvirt plugin on test:///default', async (t) => {
    if (!plugins.includes('libvirt')) {
      t.skip('this checkout has no plugins/libvirt');
      return;
    }
    const bus = await startPrivateBus();
    try {
      const daemon = await startVmdevd({
        bin: inst.bin,
        address: bus.address,
        config: { backends: [{ id: 'lv', plugin: 'libvirt', uri: 'test:///default' }] },
      });
      try {
        const client = await TestClient.connect(bus.address);
        try {
          assert.deepEqual(await client.getProperty('Backends'), { lv: 'connected' });
          assert.ok(Object.keys(await client.getProperty<Record<string, string>>('TestProperty')).length > 0);
        } finally {
          client.close();
        }
      } finally {
        await daemon.stop();
      }
    } finally {
      await bus.stop();
    }
  });

  it('runs the installed qmp plugin on a QEMU', async (t) => {
    if (!plugins.includes('qmp')) {
      t.skip('this checkout has no plugins/qmp');
      return;
    }
    const qemu = await startQemu();
    try {
      const bus = await startPrivateBus();
      try {
        const daemon = await startVmdevd({
          bin: inst.bin,
          address: bus.address,
          config: { backends: [{ id: 'q', plugin: 'qmp', vms: [{ name: 'vm', socket: qemu.socket('vmdevd') }] }] },
        });
        try {
          const client = await TestClient.connect(bus.address);
          try {
            assert.deepEqual(await client.getProperty('Backends'), { q: 'connected' });
            assert.deepEqual(await client.getProperty('TestProperty'), { vm: 'running' });
            assert.match(
              daemon.output(),
              /backend created id=q plugin=qmp version=\S+ from=\S*\/usr\/local\/lib\/vmdevd\/plugins\/qmp/,
            );
          } finally {
            client.close();
          }
        } finally {
          await daemon.stop();
        }
      } finally {
        await bus.stop();
      }
    } finally {
      await qemu.stop();
    }
  });

  it('has a unit that systemd-analyze verify accepts without a word', async () => {
    const unit = inst.path('usr/local/lib/systemd/system/vmdevd.service');
    const r = await run('systemd-analyze', ['verify', '--man=no', unit]);
    const ours = (r.stdout + r.stderr).split('\n').filter((l) => /vmdevd/.test(l));
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.deepEqual(ours, [], 'verify has nothing to say about vmdevd.service');
  });

  it(`has a unit that systemd-analyze security --offline rates ${MAX_EXPOSURE.toFixed(1)} or lower`, async () => {
    const unit = inst.path('usr/local/lib/systemd/system/vmdevd.service');
    const r = await run('systemd-analyze', [
      'security',
      '--offline=true',
      `--threshold=${MAX_EXPOSURE * 10}`,
      '--no-pager',
      unit,
    ]);
    const m = /Overall exposure level for vmdevd\.service: (\d+\.\d+)/.exec(r.stdout);
    assert.ok(m, `no exposure level in:\n${r.stdout}${r.stderr}`);
    console.log(`# systemd-analyze security --offline=true: ${m[1]}`);
    assert.ok(Number(m[1]) <= MAX_EXPOSURE, `exposure ${m[1]} > ${MAX_EXPOSURE}:\n${r.stdout}`);
    assert.equal(r.code, 0, `--threshold failed it:\n${r.stdout}`);
  });

  it('has a sysusers file that creates the service user and the admin group, and puts the user in libvirt', async () => {
    const root = makeTempDir('vmdevd-sysusers-');
    try {
      mkdirSync(root.file('etc'));
      const r = await run('systemd-sysusers', [`--root=${root.path}`, '-'], {
        input: readFileSync(inst.path('usr/local/lib/sysusers.d/vmdevd.conf'), 'utf8'),
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        readFileSync(root.file('etc/passwd'), 'utf8'),
        /^vmdevd:x:\d+:\d+:[^:]*:[^:]*:\/usr\/sbin\/nologin$/m,
      );
      assert.match(readFileSync(root.file('etc/group'), 'utf8'), /^vmdevd-admin:x:\d+:$/m);
      assert.match(
        readFileSync(root.file('etc/group'), 'utf8'),
        /^libvirt:x:\d+:vmdevd$/m,
        'vmdevd is a member of libvirt (polkit looks there)',
      );
    } finally {
      root.remove();
    }
  });

  it('has a default config for the system bus with the libvirt backend on qemu:///system', () => {
    const config = parseConfig(
      JSON.parse(readFileSync(inst.path('etc/vmdevd/config.json'), 'utf8')),
      'config.json',
      '/etc/vmdevd',
    );
    assert.equal(config.bus, 'system');
    assert.deepEqual(config.backends, [{ id: 'local', plugin: 'libvirt', options: { uri: 'qemu:///system' } }]);
    assert.deepEqual(config.access, { users: ['root'], groups: ['vmdevd-admin'] });
  });

  it('has an activation file that a bus reads', async () => {
    const servicedir = inst.path('usr/share/dbus-1/system-services');
    const bus = await startPrivateBus((socket) =>
      openBusConfig(socket).replace('</busconfig>', `  <servicedir>${servicedir}</servicedir>\n</busconfig>`),
    );
    try {
      const client = await TestClient.connect(bus.address);
      try {
        const [names] = await client.call({
          destination: 'org.freedesktop.DBus',
          path: '/org/freedesktop/DBus',
          interface: 'org.freedesktop.DBus',
          member: 'ListActivatableNames',
        });
        assert.ok((names as string[]).includes('org.example.dbustest'), (names as string[]).join(', '));
      } finally {
        client.close();
      }
    } finally {
      await bus.stop();
    }
  });

  it('keeps an existing config when it installs again, and replaces the program', async () => {
    const config = inst.path('etc/vmdevd/config.json');
    writeFileSync(config, '{"logLevel": "debug"}\n');
    writeFileSync(join(inst.pkglibdir, 'stale.js'), '');
    const r = await runInstallScript('install', inst.destdir, ['--node', process.execPath]);
    assert.match(r.stdout, /kept .*etc\/vmdevd\/config\.json/);
    assert.equal(readFileSync(config, 'utf8'), '{"logLevel": "debug"}\n');
    assert.ok(!existsSync(join(inst.pkglibdir, 'stale.js')), 'the old program is gone');
    assert.deepEqual(
      readdirSync(join(inst.destdir, 'usr/local/lib')).filter((n) => n.startsWith('.')),
      [],
      'no staging directory is left',
    );
  });

  it('removes everything but the config when it uninstalls', async () => {
    await runInstallScript('uninstall', inst.destdir);
    const left = walk(inst.destdir).filter((p) => !lstatSync(join(inst.destdir, p)).isDirectory());
    assert.deepEqual(left, ['etc/vmdevd/config.json']);
  });
});

describe('system install with PREFIX=/usr, from the environment', () => {
  it('puts the program in /usr/lib/vmdevd and the unit where systemd looks for it', async () => {
    const dir = makeTempDir('vmdevd-install-');
    try {
      const r = await run('bash', [join(REPO_ROOT, 'scripts/system-install.sh'), 'install'], {
        env: { ...process.env, DESTDIR: dir.path, PREFIX: '/usr', NODE: process.execPath },
      });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      for (const f of [
        'usr/lib/vmdevd/bin/vmdevd',
        'usr/bin/vmdevd',
        'usr/lib/systemd/system/vmdevd.service',
        'usr/lib/sysusers.d/vmdevd.conf',
        'etc/vmdevd/config.json',
      ]) {
        assert.ok(existsSync(join(dir.path, f)), f);
      }
      assert.match(
        readFileSync(join(dir.path, 'usr/lib/systemd/system/vmdevd.service'), 'utf8'),
        new RegExp(`^ExecStart=\\S+ ${DAEMON_NODE_ARGS.join(' ')} /usr/lib/vmdevd/bin/vmdevd `, 'm'),
      );
      const u = await run('bash', [join(REPO_ROOT, 'scripts/system-install.sh'), 'uninstall'], {
        env: { ...process.env, DESTDIR: dir.path, PREFIX: '/usr' },
      });
      assert.equal(u.code, 0, u.stdout + u.stderr);
      assert.deepEqual(
        walk(dir.path).filter((p) => !lstatSync(join(dir.path, p)).isDirectory()),
        ['etc/vmdevd/config.json'],
      );
    } finally {
      dir.remove();
    }
  });

  it('refuses a PREFIX that cannot be written into a unit file', async () => {
    const r = await run('bash', [
      join(REPO_ROOT, 'scripts/system-install.sh'),
      'install',
      '--destdir',
      '/nonexistent',
      '--prefix',
      '/opt/my vmdevd',
    ]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /PREFIX must be an absolute path/);
    assert.ok(!existsSync('/nonexistent'));
  });
});
