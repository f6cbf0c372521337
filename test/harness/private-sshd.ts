/**
 * An sshd in the mount namespace of a private libvirtd
 * (`private-libvirtd.ts`), on a loopback port, so that
 * `qemu+ssh://root@127.0.0.1:PORT/system` reaches that libvirtd: the ssh
 * session's `virt-ssh-helper` connects to `/run/libvirt/libvirt-sock` as
 * the namespace sees it. The test makes the host key and a client key;
 * only that key logs in (as root), and the client checks the host key
 * against a known_hosts file of the test's, through an `ssh` wrapper
 * passed as the URI's `command=` (nothing under ~/.ssh is read or written).
 * Needs `sshd` (package openssh-server) and `ssh`. `stop()` stops sshd by
 * its PID and removes the keys.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { PrivateLibvirtd } from './private-libvirtd.js';
import { startProcess, type ManagedProcess } from './process.js';

const execFileAsync = promisify(execFile);

export interface PrivateSshd {
  readonly port: number;
  readonly pid: number;
  /** `qemu+ssh://root@127.0.0.1:PORT/system?…` with the test's key and known_hosts. */
  readonly uri: string;
  stop(): Promise<void>;
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

export async function startPrivateSshd(libvirtd: PrivateLibvirtd, port: number): Promise<PrivateSshd> {
  const dir = join(libvirtd.dir, 'ssh');
  mkdirSync(dir, { mode: 0o700 });
  const hostKey = join(dir, 'host_ed25519');
  const clientKey = join(dir, 'client_ed25519');
  for (const key of [hostKey, clientKey]) {
    await execFileAsync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vmdevd-test', '-f', key]);
  }
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(`${clientKey}.pub`));
  const knownHosts = join(dir, 'known_hosts');
  writeFileSync(
    knownHosts,
    `[127.0.0.1]:${port} ${readFileSync(`${hostKey}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`,
  );
  const config = join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PidFile none',
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      // The keys live under /tmp, which is world-writable: sshd's ownership check of every parent would refuse them.
      'StrictModes no',
      'UseDNS no',
      'LogLevel ERROR',
      '',
    ].join('\n'),
  );
  // libvirt runs the ssh binary it is given (`command=`); this one checks the host key against the test's file only.
  const wrapper = join(dir, 'ssh');
  writeFileSync(
    wrapper,
    `#!/bin/sh\nexec ssh -F /dev/null -o UserKnownHostsFile=${knownHosts} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes "$@"\n`,
  );
  chmodSync(wrapper, 0o755);

  const sshd: ManagedProcess = startProcess('nsenter', [
    '-t',
    String(libvirtd.pid),
    '-m',
    '--',
    '/usr/sbin/sshd',
    '-D',
    '-e',
    '-f',
    config,
  ]);
  const deadline = Date.now() + 20_000;
  while (!(await portAnswers(port))) {
    if (sshd.child.exitCode !== null) throw new Error(`sshd exited with ${sshd.child.exitCode}:\n${sshd.output()}`);
    if (Date.now() > deadline) {
      await sshd.stop(5_000);
      throw new Error(`sshd did not listen on 127.0.0.1:${port} within 20 s:\n${sshd.output()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const params = new URLSearchParams({ keyfile: clientKey, no_tty: '1', command: wrapper });
  return {
    port,
    pid: sshd.pid,
    uri: `qemu+ssh://root@127.0.0.1:${port}/system?${params.toString()}`,
    async stop() {
      await sshd.stop(10_000);
    },
  };
}
