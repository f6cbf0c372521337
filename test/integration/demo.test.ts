/**
 * The README's quick start: `npm run demo` sets up and walks through the
 * main job on the local libvirt. Its output is checked step by step; an
 * interrupted run cleans up, and the next run works.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { startLibvirtd } from '../harness/libvirtd.js';
import { startProcess } from '../harness/process.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

const STEPS: Array<[string, RegExp]> = [
  [
    'libvirt',
    /\[1\] libvirt\n {4}(started virtlogd and libvirtd \(pid \d+\)|using the libvirtd that is already running)/,
  ],
  [
    'demo VMs',
    /vmdevd-demo-ivi: type "ivi" in its metadata, (KVM|TCG[^,]*), NIC 52:54:00:de:00:01\n {4}vmdevd-demo-cluster: type "cluster"/,
  ],
  ['daemon', /vmdevd is running \(pid \d+\) and owns org\.example\.dbustest/],
  [
    'state map',
    /\$ vmdevctl status\n\s+VM\s+STATE\s+BACKEND\s+TYPE\n(\s+.*\n)*?\s+vmdevd-demo-ivi\s+running\s+local\s+ivi/,
  ],
  [
    'detach that completes',
    /\$ vmdevctl detach vmdevd-demo-ivi scsi:type=disk,target=sda usb:type=disk,target=sdb --wait\n[\s\S]*?detached\s+vmdevd-demo-ivi\s+scsi[\s\S]*?detached\s+vmdevd-demo-ivi\s+usb[\s\S]*?\(exit code 0\)\n\s+both detached, confirmed by libvirt/,
  ],
  [
    'detach that times out',
    /failed\s+vmdevd-demo-cluster\s+nic\s+org\.example\.dbustest\.Error\.Timeout: [\s\S]*?\(exit code 6\)\n\s+timed out as expected/,
  ],
  ['outcomes in watch', /watch \| \S+\s+failed\s+vmdevd-demo-cluster\s+nic\s+org\.example\.dbustest\.Error\.Timeout/],
  ['pause seen in TestSignal', /watch \| \S+\s+states\s+.*vmdevd-demo-ivi=paused/],
  ['resume seen in TestSignal', /watch \| \S+\s+states\s+.*vmdevd-demo-ivi=running/],
  [
    'cleanup',
    /\[end\] cleaning up what the demo created\n[\s\S]*removed VM vmdevd-demo-cluster and its disks\n[\s\S]*removed VM vmdevd-demo-ivi and its disks/,
  ],
  ['finish', /demo finished\n$/],
];

function runDemo() {
  // In a group of its own, so a Ctrl-C can be sent to all of it, as a terminal does.
  return startProcess('npm', ['run', '--silent', 'demo'], {
    cwd: REPO_ROOT,
    detached: true,
    env: { ...process.env, npm_config_update_notifier: 'false' },
  });
}

describe('npm run demo', { timeout: 600_000 }, () => {
  it('walks through every step and exits 0', async (t) => {
    const t0 = performance.now();
    const demo = runDemo();
    const code = await demo.exited();
    t.diagnostic(`the demo took ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    const out = demo.output();
    assert.equal(code, 0, out);
    for (const [step, pattern] of STEPS) assert.match(out, pattern, `step "${step}"`);
  });

  it('cleans up when interrupted with Ctrl-C, and runs again right after', async () => {
    const libvirtd = await startLibvirtd();
    try {
      const demo = runDemo();
      await demo.waitForOutput(/vmdevd is running/, 120_000);
      // Ctrl-C: SIGINT to the whole foreground process group (npm, the shell and the demo).
      process.kill(-demo.pid, 'SIGINT');
      assert.notEqual(await demo.exited(), 0);
      assert.match(
        demo.output(),
        /SIGINT: stopping[\s\S]*removed VM vmdevd-demo-cluster and its disks[\s\S]*removed VM vmdevd-demo-ivi and its disks/,
      );
      // The core's tests do not compile against the plugin; this is the part of its binding used here.
      type Binding = {
        Connection: {
          open(uri: string): Promise<{ listDomains(): Promise<Array<{ name: string }>>; close(): Promise<number> }>;
        };
      };
      const { Connection } = (await import(`${REPO_ROOT}plugins/libvirt/dist/src/binding.js`)) as Binding;
      const conn = await Connection.open(libvirtd.uri);
      try {
        const left = (await conn.listDomains()).filter((d) => d.name.startsWith('vmdevd-demo-'));
        assert.deepEqual(
          left.map((d) => d.name),
          [],
          'no demo VM is left',
        );
      } finally {
        await conn.close();
      }
      const again = runDemo();
      assert.equal(await again.exited(), 0, again.output());
      assert.match(again.output(), /demo finished\n$/);
    } finally {
      await libvirtd.stop();
    }
  });
});
