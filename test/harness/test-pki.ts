/**
 * A throw-away PKI for libvirt's TLS transport, made with GnuTLS's
 * `certtool` (package gnutls-bin): a CA, a server certificate for
 * 127.0.0.1 (and localhost) and a client certificate, valid for two days.
 * The client files are laid out as libvirt's `pkipath=` wants them
 * (`cacert.pem`, `clientcert.pem`, `clientkey.pem`). `remove()` deletes it all.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { makeTempDir } from './temp-dir.js';

const execFileAsync = promisify(execFile);

export interface ServerPki {
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
}

export interface TestPki extends ServerPki {
  /** For the client's URI: `pkipath=…`. */
  readonly clientDir: string;
  remove(): void;
}

async function certtool(args: string[]): Promise<void> {
  await execFileAsync('certtool', args, { timeout: 60_000 });
}

export async function makeTestPki(): Promise<TestPki> {
  const dir = makeTempDir('vmdevd-pki-');
  try {
    const file = (name: string) => dir.file(name);
    const clientDir = dir.file('client');
    mkdirSync(clientDir, { mode: 0o700 });
    const template = (name: string, lines: string[]) => {
      writeFileSync(file(name), `${lines.join('\n')}\n`);
      return file(name);
    };
    await certtool(['--generate-privkey', '--key-type', 'rsa', '--bits', '2048', '--outfile', file('ca-key.pem')]);
    await certtool([
      '--generate-self-signed',
      '--load-privkey',
      file('ca-key.pem'),
      '--template',
      template('ca.info', ['cn = vmdevd test CA', 'ca', 'cert_signing_key', 'expiration_days = 2']),
      '--outfile',
      file('cacert.pem'),
    ]);
    const sign = async (key: string, info: string, out: string) => {
      await certtool(['--generate-privkey', '--key-type', 'rsa', '--bits', '2048', '--outfile', key]);
      await certtool([
        '--generate-certificate',
        '--load-privkey',
        key,
        '--load-ca-certificate',
        file('cacert.pem'),
        '--load-ca-privkey',
        file('ca-key.pem'),
        '--template',
        info,
        '--outfile',
        out,
      ]);
    };
    await sign(
      file('serverkey.pem'),
      template('server.info', [
        'organization = vmdevd test',
        'cn = 127.0.0.1',
        'ip_address = 127.0.0.1',
        'dns_name = localhost',
        'tls_www_server',
        'encryption_key',
        'signing_key',
        'expiration_days = 2',
      ]),
      file('servercert.pem'),
    );
    await sign(
      join(clientDir, 'clientkey.pem'),
      template('client.info', [
        'organization = vmdevd test',
        'cn = vmdevd test client',
        'tls_www_client',
        'encryption_key',
        'signing_key',
        'expiration_days = 2',
      ]),
      join(clientDir, 'clientcert.pem'),
    );
    await execFileAsync('cp', [file('cacert.pem'), join(clientDir, 'cacert.pem')]);
    return {
      caCert: file('cacert.pem'),
      serverCert: file('servercert.pem'),
      serverKey: file('serverkey.pem'),
      clientDir,
      remove: () => dir.remove(),
    };
  } catch (err) {
    dir.remove();
    throw err;
  }
}
