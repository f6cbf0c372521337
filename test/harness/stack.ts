/**
 * The whole stack for core tests: a private dbus-daemon, the real vmdevd
 * process with backends from the test-backend plugin (or any config), and a
 * client connected to the same bus.
 */
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { TestClient } from './bus-client.js';
import { startPrivateBus, type PrivateBus } from './dbus-daemon.js';
import { makeTempDir, type TempDir } from './temp-dir.js';
import { startVmdevd, type VmdevdOptions, type VmdevdProcess } from './vmdevd-process.js';

/** The compiled test backend plugin, to name in a config as `plugin`. */
export const TEST_BACKEND = fileURLToPath(new URL('../fixtures/test-backend/index.js', import.meta.url));

export interface TestBackendOptions {
  id?: string;
  vms?: Array<{ name: string; uuid?: string; type?: string; state: string }>;
  [option: string]: unknown;
}

export interface Stack {
  readonly bus: PrivateBus;
  readonly daemon: VmdevdProcess;
  readonly client: TestClient;
  readonly dir: TempDir;
  /** Entries the test backends wrote (detaches and state changes started). */
  journal(): Array<Record<string, unknown>>;
  /** Sends a command to a test backend's control socket. */
  control(backendId: string, command: Record<string, unknown>): Promise<void>;
  stop(): Promise<number>;
}

export interface StackOptions {
  backends?: TestBackendOptions[];
  /** Backend entries added after the test backends, as they are. */
  extraBackends?: Array<Record<string, unknown>>;
  config?: Record<string, unknown>;
  daemon?: Omit<VmdevdOptions, 'address' | 'config'>;
  /** The bus configuration (default: a session-style bus open to its own user). */
  bus?: (socket: string) => string;
}

export const DEFAULT_VMS = [
  { name: 'vm1', uuid: '11111111-1111-4111-8111-111111111111', type: 'ivi', state: 'running' },
  { name: 'vm2', uuid: '22222222-2222-4222-8222-222222222222', type: 'cluster', state: 'paused' },
  { name: 'vm3', uuid: '33333333-3333-4333-8333-333333333333', type: 'cluster', state: 'shutoff' },
];

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const dir = makeTempDir('vmdevd-stack-');
  const journalFile = dir.file('journal.jsonl');
  const backends = (options.backends ?? [{}]).map((b, i) => ({
    id: b.id ?? (i === 0 ? 'test' : `test${i}`),
    plugin: TEST_BACKEND,
    vms: b.vms ?? DEFAULT_VMS,
    journal: journalFile,
    controlSocket: dir.file(`control-${i}.sock`),
    ...b,
  }));
  const config = {
    detachTimeoutSeconds: 2,
    logLevel: 'debug',
    backends: [...backends, ...(options.extraBackends ?? [])],
    ...options.config,
  };
  let bus: PrivateBus | undefined;
  let daemon: VmdevdProcess | undefined;
  try {
    bus = await startPrivateBus(options.bus);
    daemon = await startVmdevd({ address: bus.address, config, ...options.daemon });
    const client = await TestClient.connect(bus.address);
    const sockets = new Map(backends.map((b) => [b.id, b.controlSocket]));
    const stack: Stack = {
      bus,
      daemon,
      client,
      dir,
      journal: () =>
        existsSync(journalFile)
          ? readFileSync(journalFile, 'utf8')
              .split('\n')
              .filter(Boolean)
              .map((l) => JSON.parse(l) as Record<string, unknown>)
          : [],
      control: (backendId, command) =>
        new Promise((resolve, reject) => {
          const socket = connect(sockets.get(backendId)!);
          socket.on('error', reject);
          socket.once('data', (data) => {
            socket.end();
            const text = data.toString().trim();
            if (text === 'ok') resolve();
            else reject(new Error(text));
          });
          socket.write(JSON.stringify(command) + '\n');
        }),
      async stop() {
        client.close();
        const code = await daemon!.stop();
        await bus!.stop();
        dir.remove();
        return code;
      },
    };
    return stack;
  } catch (err) {
    await daemon?.stop();
    await bus?.stop();
    dir.remove();
    throw err;
  }
}
