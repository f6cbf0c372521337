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
  /**
   * The journal entries since entry `from` that come before a barrier: a
   * detach on `selector` (default `vm1`) asked for now, of a device no test
   * uses. The backends journal what they start in the order they start it,
   * so whatever the daemon started for an earlier call is among them: this
   * checks that nothing was started without waiting for a while.
   */
  journalUntilBarrier(from: number, selector?: string): Promise<Array<Record<string, unknown>>>;
  /**
   * Waits until a client in another process (gdbus monitor, vmdevctl watch)
   * follows the daemon's signals. It subscribes at a moment the test cannot
   * see, so this asks for detaches of devices no test uses on `selector`
   * (default `vm1`; each confirmed at once), one after another, until the
   * label of one shows in the client's `output()`. From then on the client
   * gets every signal: the daemon's signals reach it in the order sent.
   */
  waitUntilFollowed(output: () => string, selector?: string): Promise<void>;
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

/** What the test backend's journal file holds: one JSON object a line (none before its first entry). */
export function readJournal(file: string): Array<Record<string, unknown>> {
  return existsSync(file)
    ? readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
    : [];
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
    const journal = () => readJournal(journalFile);
    let barriers = 0;
    let probes = 0;
    const stack: Stack = {
      bus,
      daemon,
      client,
      dir,
      journal,
      async journalUntilBarrier(from, selector = 'vm1') {
        const label = `barrier-${++barriers}`;
        const accepted = await client.testMethod(selector, { [label]: ['type=alias', `name=ua-${label}`] });
        if (!accepted) throw new Error(`the barrier's detach on ${selector} was not accepted`);
        const deadline = Date.now() + 30_000;
        for (;;) {
          const entries = journal().slice(from);
          const at = entries.findIndex((e) => e['op'] === 'detach' && e['label'] === label);
          if (at >= 0) return entries.slice(0, at);
          if (Date.now() > deadline) throw new Error(`the barrier's detach ${label} was not journaled within 30 s`);
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      },
      async waitUntilFollowed(output, selector = 'vm1') {
        const deadline = Date.now() + 30_000;
        while (!/probe-\d+/.test(output())) {
          if (Date.now() > deadline) throw new Error(`no probe's outcome showed within 30 s in:\n${output()}`);
          const label = `probe-${++probes}`;
          await client.testMethod(selector, { [label]: ['type=alias', `name=ua-${label}`] });
          // The pace of the probes, not a limit: a late outcome still counts.
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      },
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
