/**
 * The README's qmp configuration and the QEMU command line it expects, as
 * printed, with only the paths moved into a temporary directory (and TCG
 * where there is no KVM): the VM shows up, and the vmdevctl command the
 * README shows prints what the README says.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestClient } from 'vmdevd/testing/bus-client';
import { startPrivateBus, type PrivateBus } from 'vmdevd/testing/dbus-daemon';
import { run, startProcess, type ManagedProcess } from 'vmdevd/testing/process';
import { defaultAccel, socketListening } from 'vmdevd/testing/qemu-process';
import { makeTempDir, type TempDir } from 'vmdevd/testing/temp-dir';
import { REPO_ROOT, startVmdevd, type VmdevdProcess } from 'vmdevd/testing/vmdevd-process';
import { until } from './support.js';

function block(readme: string, name: string, lang: string): string {
  const m = new RegExp(`<!-- example: ${name} -->\\s*\`\`\`${lang}\\n([\\s\\S]*?)\\n\`\`\``).exec(readme);
  assert.ok(m, `the README has the ${name} example`);
  return m[1]!;
}

describe('the README qmp example', { timeout: 120_000 }, () => {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  let dir: TempDir;
  let qemu: ManagedProcess | undefined;
  let bus: PrivateBus | undefined;
  let daemon: VmdevdProcess | undefined;
  let client: TestClient | undefined;
  let moved: (text: string) => string;

  before(async () => {
    dir = makeTempDir('vmdevd-readme-qmp-');
    const places: Array<[string, string]> = [
      ['/run/vmdevd/qmp', dir.file('qmp')],
      ['/run/ivi', dir.file('ivi')],
      ['/var/lib/ivi', dir.file('images')],
    ];
    for (const [, to] of places) mkdirSync(to);
    moved = (text) => places.reduce((t, [from, to]) => t.split(from).join(to), text);
    writeFileSync(dir.file('images/data.img'), '');
    await truncate(dir.file('images/data.img'), 1024 * 1024);

    const args = moved(block(readme, 'qmp-command', 'sh'))
      .replace(/\\\n/g, ' ')
      .split(/\s+/)
      .filter(Boolean);
    const accel = args.indexOf('-accel');
    assert.ok(accel > 0, 'the command line names its accelerator');
    args[accel + 1] = defaultAccel();
    const [command, ...rest] = args;
    qemu = startProcess(command!, rest);
    const sockets = [dir.file('qmp/ivi.qmp'), dir.file('ivi/qmp.sock')];
    await until(() => sockets.every(socketListening), 'QEMU listens on both sockets');

    bus = await startPrivateBus();
    const config = JSON.parse(moved(block(readme, 'qmp-config', 'json'))) as Record<string, unknown>;
    // --address, as the README's --system, wins over "bus" in the config.
    daemon = await startVmdevd({ address: bus.address, config });
    client = await TestClient.connect(bus.address);
  });

  after(async () => {
    client?.close();
    await daemon?.stop();
    await bus?.stop();
    await qemu?.stop();
    dir?.remove();
  });

  it('shows the VM with its type, the backend connected', async () => {
    assert.deepEqual(await client!.getProperty('TestProperty'), { ivi: 'running' });
    assert.deepEqual(await client!.getProperty('Backends'), { qemu: 'connected' });
    assert.equal((await client!.getProperty<Record<string, Record<string, string>>>('Vms'))['ivi']!['type'], 'ivi');
  });

  it('detaches the disk with the vmdevctl command shown, which prints what is shown', async () => {
    const m = /^\$ (vmdevctl .*)\n(.*)$/m.exec(readme.slice(readme.indexOf('<!-- example: qmp-command -->')));
    assert.ok(m, 'the README shows a vmdevctl command after the QEMU command line');
    const words = m[1]!.split(' ').slice(1);
    const system = words.indexOf('--system');
    assert.ok(system >= 0);
    words.splice(system, 1, '--address', bus!.address);
    const r = await run(process.execPath, [join(REPO_ROOT, 'bin/vmdevctl'), ...words]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), m[2]!.trim());
  });
});
