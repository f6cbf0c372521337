#!/usr/bin/env node
// The quick start's main job, end to end, on the local libvirt: small demo
// VMs, vmdevd on a private bus, and a walk through it with vmdevctl. It
// cleans up what it created (VMs, disks, daemons) on exit or Ctrl-C, and
// can be run again at once. Run it through `npm run demo`, which sets up
// the machine first.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const { startLibvirtd } = await import(`${root}dist/test/harness/libvirtd.js`);
const { createTestVm, removeLeftoverVms } = await import(`${root}dist/test/harness/test-vms.js`);
const { startPrivateBus } = await import(`${root}dist/test/harness/dbus-daemon.js`);
const { startVmdevd } = await import(`${root}dist/test/harness/vmdevd-process.js`);
const { Connection } = await import(`${root}plugins/libvirt/dist/src/binding.js`);

const PREFIX = 'vmdevd-demo-';
const TIMEOUT_SECONDS = 8;
const bold = (s) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const step = (n, text) => console.log(`\n${bold(`[${n}] ${text}`)}`);
const say = (text) => console.log(`    ${text}`);

const cleanups = [];
let cleaning;
function cleanup() {
  cleaning ??= (async () => {
    step('end', 'cleaning up what the demo created');
    for (const [what, fn] of cleanups.reverse()) {
      try {
        await fn();
        say(`removed ${what}`);
      } catch (err) {
        say(`could not remove ${what}: ${err.message}`);
      }
    }
  })();
  return cleaning;
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    console.log(`\n${signal}: stopping`);
    void cleanup().then(() => process.exit(130));
  });
}

/** Runs vmdevctl as a user would, printing the command and its output. */
function vmdevctl(address, ...args) {
  const shown = `vmdevctl ${args.join(' ')}`;
  console.log(`    $ ${shown}`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`${root}bin/vmdevctl`, '--address', address, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const show = (chunk) => {
      out += chunk;
      for (const line of chunk.toString().split('\n')) if (line) console.log(`      ${line}`);
    };
    child.stdout.on('data', show);
    child.stderr.on('data', show);
    child.on('error', reject);
    child.on('close', (code) => {
      console.log(`      (exit code ${code})`);
      resolve({ code, out });
    });
  });
}

async function main() {
  step(1, 'libvirt');
  const libvirtd = await startLibvirtd();
  if (libvirtd.owned) {
    say(`started virtlogd and libvirtd (pid ${libvirtd.pid})`);
    cleanups.push(['libvirtd', () => libvirtd.stop()]);
  } else {
    say('using the libvirtd that is already running');
  }
  const conn = await Connection.open('qemu:///system');
  cleanups.push(['the demo libvirt connection', () => conn.close()]);
  const leftovers = await removeLeftoverVms(conn, PREFIX);
  if (leftovers.length > 0) say(`removed VMs an interrupted earlier run left behind: ${leftovers.join(', ')}`);

  step(2, 'two small demo VMs (64 MiB, no guest OS), each with a SCSI disk, a USB disk and a PCI NIC');
  const vms = {};
  for (const [type, mac] of [
    ['ivi', '52:54:00:de:00:01'],
    ['cluster', '52:54:00:de:00:02'],
  ]) {
    const vm = await createTestVm(conn, { type, mac, name: `${PREFIX}${type}` });
    cleanups.push([`VM ${vm.name} and its disks`, () => vm.remove()]);
    vms[type] = vm;
    say(
      `${vm.name}: type "${type}" in its metadata, ${vm.virtType === 'kvm' ? 'KVM' : 'TCG (no usable /dev/kvm)'}, NIC ${mac}`,
    );
  }

  step(3, 'vmdevd on a private D-Bus daemon, with one libvirt backend on qemu:///system');
  const bus = await startPrivateBus();
  cleanups.push(['the private dbus-daemon', () => bus.stop()]);
  say(`dbus-daemon at ${bus.address}`);
  const config = {
    detachTimeoutSeconds: TIMEOUT_SECONDS,
    backends: [{ id: 'local', plugin: 'libvirt', uri: 'qemu:///system' }],
  };
  say(`config: ${JSON.stringify(config)}`);
  const daemon = await startVmdevd({ address: bus.address, config });
  cleanups.push(['vmdevd', () => daemon.stop()]);
  say(`vmdevd is running (pid ${daemon.pid}) and owns org.example.dbustest`);

  step(4, 'the state map');
  await vmdevctl(bus.address, 'status');
  await vmdevctl(bus.address, 'backends');

  step(5, 'watching TestSignal and the outcome signals in the background');
  console.log(`    $ vmdevctl watch &`);
  const watch = spawn(process.execPath, [`${root}bin/vmdevctl`, '--address', bus.address, 'watch'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  cleanups.push([
    'vmdevctl watch',
    () =>
      new Promise((resolve) =>
        watch.exitCode !== null ? resolve() : (watch.once('exit', resolve), watch.kill('SIGINT')),
      ),
  ]);
  watch.stdout.on('data', (chunk) => {
    for (const line of chunk.toString().split('\n')) if (line) console.log(`      watch | ${line}`);
  });
  await new Promise((r) => setTimeout(r, 500));

  // By name, not by type: the host may have VMs of its own of type "ivi".
  step(6, `a detach that completes: the SCSI and the USB disk of ${vms.ivi.name}`);
  const done = await vmdevctl(
    bus.address,
    'detach',
    vms.ivi.name,
    'scsi:type=disk,target=sda',
    'usb:type=disk,target=sdb',
    '--wait',
  );
  say(done.code === 0 ? 'both detached, confirmed by libvirt' : 'unexpected: not every device was detached');

  step(
    7,
    `a detach that times out: the PCI NIC of ${vms.cluster.name}, which no guest releases (timeout ${TIMEOUT_SECONDS} s)`,
  );
  const nic = await vmdevctl(
    bus.address,
    'detach',
    vms.cluster.name,
    `nic:type=interface,mac=${vms.cluster.devices.nic.mac}`,
    '--wait',
  );
  say(
    nic.code === 6
      ? 'timed out as expected (exit code 6): the NIC is still attached'
      : `unexpected exit code ${nic.code}`,
  );

  step(8, `a pause and a resume of ${vms.ivi.name}, seen in TestSignal`);
  await vmdevctl(bus.address, 'set', `${vms.ivi.name}=paused`);
  await new Promise((r) => setTimeout(r, 500));
  await vmdevctl(bus.address, 'set', `${vms.ivi.name}=running`);
  await new Promise((r) => setTimeout(r, 500));
  await vmdevctl(bus.address, 'status');

  const ok = done.code === 0 && nic.code === 6;
  await cleanup();
  console.log(`\n${bold(ok ? 'demo finished' : 'demo finished with unexpected results')}`);
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  async (err) => {
    console.error(`\ndemo failed: ${err.stack ?? err}`);
    await cleanup();
    process.exit(1);
  },
);
