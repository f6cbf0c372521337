/**
 * `vmdevctl`: the command-line client of vmdevd, built on `vmdevd/client`.
 * Tables for people, `--json` for scripts, one readable line per error.
 */
import { parseArgs } from 'node:util';
import {
  INVALID_ARGS,
  VmdevClient,
  VmdevClientError,
  type DeviceOutcome,
  type MovedDevice,
  type RequestResult,
} from '../client/index.js';
import { DEFAULT_BUS_NAME, vmdevErrorName } from '../protocol.js';

/** Exit codes; `detach --wait`, `attach --wait` and `move` tell their outcomes apart by them. */
export const EXIT = {
  ok: 0,
  /** A D-Bus error other than those below (access denied, ambiguous selector, backend unavailable, no bus). */
  error: 1,
  /** The command line is wrong. */
  usage: 2,
  /** No VM matches the selector. */
  noSuchVm: 3,
  /** The daemon rejected the arguments (InvalidArgs). */
  invalidArgs: 4,
  /** At least one device failed (other than by timeout), or `move` was given a label the VM does not have. */
  deviceFailed: 5,
  /** A device timed out, or --timeout ran out before every outcome arrived. */
  timeout: 6,
} as const;

const COMMANDS = {
  status: { usage: 'status', help: 'The VMs: name, state, backend, and type where known.' },
  watch: { usage: 'watch', help: 'Follow TestSignal and the device outcomes, one line each, until interrupted.' },
  detach: {
    usage: 'detach SELECTOR LABEL:type=TYPE,NAME=VALUE… [--wait] [--timeout S]',
    help: `Detach devices from the VM that SELECTOR (a name, UUID or type) names.
Each device is LABEL:TOKENS, TOKENS separated by commas, e.g. d1:type=disk,target=vdb.
  --wait       wait for every device's outcome and print each as it arrives
  --timeout S  with --wait, stop waiting after S seconds
Exit codes: 0 all detached (or started, without --wait), 3 no such VM,
4 invalid arguments, 5 a device failed, 6 timeout, 1 any other error.`,
  },
  devices: {
    usage: 'devices SELECTOR',
    help: `The disks, network interfaces and host devices of the VM that SELECTOR names: each device's
label and tokens, which detach and attach take as LABEL:TOKENS (--json: label to tokens).
Exit codes: 0, 3 no such VM, 1 any other error.`,
  },
  attach: {
    usage: 'attach SELECTOR LABEL:type=TYPE,NAME=VALUE… [--wait] [--timeout S]',
    help: `Attach devices to the VM that SELECTOR names, e.g. d1:type=disk,target=sdc,source=/var/lib/vm/d1.img,bus=usb.
A disk needs source and bus, an interface one of network, bridge or user=yes.
  --wait       wait for every device's outcome and print each as it arrives
  --timeout S  with --wait, stop waiting after S seconds
Exit codes: 0 all attached (or started, without --wait), 3 no such VM,
4 invalid arguments, 5 a device failed, 6 timeout, 1 any other error.`,
  },
  move: {
    usage: 'move FROM TO LABEL… [--wait] [--timeout S]',
    help: `Move devices, by their labels in 'devices FROM', from one VM to another: detach them from FROM,
attach them to TO, and put back on FROM any device TO refuses (and say so). It waits for every
outcome, with or without --wait: each step needs the one before.
  --timeout S  stop waiting for each step after S seconds
Exit codes: 0 all moved, 3 no such VM, 5 a device not moved (put back or not) or a label FROM
does not have, 6 timeout, 4 invalid arguments, 1 any other error.`,
  },
  set: { usage: 'set VM=STATE…', help: 'Ask for states: running, paused, shutdown (graceful) or shutoff (power off).' },
  backends: { usage: 'backends', help: 'Each backend and whether it is connected.' },
} as const;
type Command = keyof typeof COMMANDS;

const GLOBAL_USAGE = `Usage: vmdevctl [--system | --session | --address ADDR] [--bus-name NAME] [--json] COMMAND [ARGS]

Commands:
${Object.values(COMMANDS)
  .map((c) => `  ${c.usage}`)
  .join('\n')}

Options:
  --system          the system bus
  --session         the session bus (the default)
  --address ADDR    the bus at this D-Bus address
  --bus-name NAME   vmdevd's bus name (default ${DEFAULT_BUS_NAME})
  --json            machine-readable output
  --help            help; 'vmdevctl COMMAND --help' for a command
`;

class UsageError extends Error {}

export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** Resolves when the user interrupts (watch runs until then). */
  interrupted(): Promise<void>;
}

const processIo: Io = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  interrupted: () => new Promise((resolve) => ['SIGINT', 'SIGTERM'].forEach((s) => process.once(s, () => resolve()))),
};

/** `LABEL:type=disk,target=vdb` → [label, tokens]. A label may contain ':', a token value may not contain ','. */
export function parseDeviceArg(arg: string): [string, string[]] {
  const firstEq = arg.indexOf('=');
  const colon = firstEq < 0 ? -1 : arg.lastIndexOf(':', firstEq);
  if (colon <= 0) throw new UsageError(`device "${arg}" is not LABEL:type=TYPE,NAME=VALUE…`);
  return [arg.slice(0, colon), arg.slice(colon + 1).split(',')];
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

function describeOutcome(o: DeviceOutcome): string {
  // "detached" and "attached" are as wide as "failed  ": the columns line up.
  return o.ok ? `${o.action}ed  ${o.vm}  ${o.device}` : `failed    ${o.vm}  ${o.device}  ${o.error}: ${o.message}`;
}

function outcomeJson(o: DeviceOutcome): Record<string, string> {
  return o.ok
    ? { vm: o.vm, device: o.device, result: `${o.action}ed` }
    : { vm: o.vm, device: o.device, result: 'failed', error: o.error, message: o.message };
}

/** The exit code of outcomes: a failure other than a timeout first, then a timeout or a missing outcome. */
function outcomeCode(outcomes: readonly (DeviceOutcome | undefined)[], pending: boolean): number {
  const failed = outcomes.filter((o): o is DeviceOutcome & { ok: false } => o !== undefined && !o.ok);
  if (failed.some((o) => o.error !== vmdevErrorName('Timeout'))) return EXIT.deviceFailed;
  if (failed.length > 0 || pending) return EXIT.timeout;
  return EXIT.ok;
}

/** `move`'s last word on one device. */
function describeMoved(d: MovedDevice, from: string, to: string): string {
  switch (d.status) {
    case 'moved':
      return `moved     ${d.label}  ${from} -> ${to}`;
    case 'not-detached':
      return `not moved ${d.label}  the detach from ${from} failed`;
    case 'put-back':
      return `put back  ${d.label}  on ${from}: ${to} refused it`;
    case 'stranded':
      return `stranded  ${d.label}  ${to} refused it and ${from} did not take it back: it is on neither`;
    case 'pending':
      return `pending   ${d.label}  no outcome in time`;
  }
}

export async function main(argv: readonly string[], io: Io = processIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        system: { type: 'boolean' },
        session: { type: 'boolean' },
        address: { type: 'string' },
        'bus-name': { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        wait: { type: 'boolean' },
        timeout: { type: 'string' },
      },
    });
  } catch (err) {
    io.err(`vmdevctl: ${(err as Error).message}\n${GLOBAL_USAGE}`);
    return EXIT.usage;
  }
  const { values, positionals } = parsed;
  const [name, ...args] = positionals;
  if (name === undefined || name === 'help') {
    const topic = args[0] as Command | undefined;
    if (topic && topic in COMMANDS) {
      io.out(`Usage: vmdevctl [BUS OPTIONS] ${COMMANDS[topic].usage}\n\n${COMMANDS[topic].help}\n`);
      return EXIT.ok;
    }
    if (values.help || name === 'help') {
      io.out(GLOBAL_USAGE);
      return EXIT.ok;
    }
    io.err(`vmdevctl: no command given\n${GLOBAL_USAGE}`);
    return EXIT.usage;
  }
  if (!(name in COMMANDS)) {
    io.err(`vmdevctl: unknown command "${name}"\n${GLOBAL_USAGE}`);
    return EXIT.usage;
  }
  const command = name as Command;
  if (values.help) {
    io.out(`Usage: vmdevctl [BUS OPTIONS] ${COMMANDS[command].usage}\n\n${COMMANDS[command].help}\n`);
    return EXIT.ok;
  }

  const buses = [values.system && 'system', values.session && 'session', values.address].filter(
    (b): b is string => typeof b === 'string',
  );
  let client: VmdevClient | undefined;
  try {
    if (buses.length > 1) throw new UsageError('give only one of --system, --session and --address');
    if (!['detach', 'attach', 'move'].includes(command) && (values.wait || values.timeout !== undefined))
      throw new UsageError('--wait and --timeout belong to detach, attach and move');
    const run = prepare(command, args, values);
    const bus = buses[0] ?? 'session';
    try {
      client = await VmdevClient.connect({ bus, busName: values['bus-name'] });
    } catch (err) {
      // The usual cause: vmdevd installed as a service, on the system bus.
      const hint =
        bus === 'session' && !/--system/.test((err as Error).message)
          ? '; is vmdevd on the system bus? try --system'
          : '';
      throw new Error(`${(err as Error).message}${hint}`, { cause: err });
    }
    return await run(client, io, values.json === true);
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`vmdevctl: ${err.message}\nUsage: vmdevctl [BUS OPTIONS] ${COMMANDS[command].usage}\n`);
      return EXIT.usage;
    }
    if (err instanceof VmdevClientError) {
      io.err(`vmdevctl: ${err.errorName}: ${err.message}\n`);
      if (err.errorName === INVALID_ARGS) return EXIT.invalidArgs;
      if (err.errorName === vmdevErrorName('VmNotFound')) return EXIT.noSuchVm;
      if (err.errorName === vmdevErrorName('DeviceNotFound')) return EXIT.deviceFailed;
      return EXIT.error;
    }
    io.err(`vmdevctl: ${(err as Error).message}\n`);
    return EXIT.error;
  } finally {
    client?.close();
  }
}

type Values = { json?: boolean | undefined; wait?: boolean | undefined; timeout?: string | undefined };
type Runner = (client: VmdevClient, io: Io, json: boolean) => Promise<number>;

/** Checks a command's arguments before connecting, and returns what runs it. */
function prepare(command: Command, args: string[], values: Values): Runner {
  const noArgs = () => {
    if (args.length > 0) throw new UsageError(`${command} takes no arguments`);
  };
  switch (command) {
    case 'status':
      noArgs();
      return async (client, io, json) => {
        const vms = await client.vms();
        if (json) io.out(JSON.stringify(vms) + '\n');
        else if (vms.length === 0) io.out('no VMs\n');
        else
          io.out(
            table([['VM', 'STATE', 'BACKEND', 'TYPE'], ...vms.map((v) => [v.key, v.state, v.backend, v.type ?? '-'])]),
          );
        return EXIT.ok;
      };
    case 'backends':
      noArgs();
      return async (client, io, json) => {
        const backends = await client.backends();
        if (json) io.out(JSON.stringify(backends) + '\n');
        else io.out(table([['BACKEND', 'STATUS'], ...Object.entries(backends)]));
        return EXIT.ok;
      };
    case 'set': {
      if (args.length === 0) throw new UsageError('give at least one VM=STATE');
      const states: Record<string, string> = {};
      for (const a of args) {
        const eq = a.lastIndexOf('=');
        if (eq <= 0 || eq === a.length - 1) throw new UsageError(`"${a}" is not VM=STATE`);
        states[a.slice(0, eq)] = a.slice(eq + 1);
      }
      return async (client, io, json) => {
        await client.setStates(states);
        if (json) io.out(JSON.stringify({ requested: states }) + '\n');
        else
          io.out(
            Object.entries(states)
              .map(([vm, s]) => `${vm}: ${s} requested\n`)
              .join(''),
          );
        return EXIT.ok;
      };
    }
    case 'watch':
      noArgs();
      return async (client, io, json) => {
        const stamp = () => new Date().toISOString();
        const subs = [
          await client.onStates((states) =>
            io.out(
              json
                ? JSON.stringify({ time: stamp(), signal: 'TestSignal', states }) + '\n'
                : `${stamp()}  states    ${
                    Object.entries(states)
                      .map(([k, v]) => `${k}=${v}`)
                      .join(' ') || '(no VMs)'
                  }\n`,
            ),
          ),
          await client.onOutcome((o) =>
            io.out(
              json
                ? JSON.stringify({
                    time: stamp(),
                    signal: `Device${o.action === 'detach' ? 'Detach' : 'Attach'}${o.ok ? 'ed' : 'Failed'}`,
                    ...outcomeJson(o),
                  }) + '\n'
                : `${stamp()}  ${describeOutcome(o)}\n`,
            ),
          ),
        ];
        if (!json) io.err('watching; Ctrl-C to stop\n');
        await io.interrupted();
        await Promise.all(subs.map((s) => s.dispose()));
        return EXIT.ok;
      };
    case 'devices': {
      const [selector, ...rest] = args;
      if (selector === undefined || rest.length > 0) throw new UsageError('give one selector');
      return async (client, io, json) => {
        const devices = await client.devices(selector);
        if (json) io.out(JSON.stringify(devices) + '\n');
        else if (Object.keys(devices).length === 0) io.out('no devices\n');
        else
          io.out(
            table([
              ['LABEL', 'TYPE', 'TOKENS'],
              ...Object.entries(devices).map(([label, tokens]) => [
                label,
                tokens.find((t) => t.startsWith('type='))?.slice(5) ?? '-',
                tokens.filter((t) => !t.startsWith('type=')).join(','),
              ]),
            ]),
          );
        return EXIT.ok;
      };
    }
    case 'detach':
    case 'attach': {
      const [selector, ...deviceArgs] = args;
      if (selector === undefined || deviceArgs.length === 0)
        throw new UsageError('give a selector and at least one device');
      const devices: Record<string, string[]> = {};
      for (const d of deviceArgs) {
        const [label, tokens] = parseDeviceArg(d);
        if (label in devices) throw new UsageError(`label "${label}" is given twice`);
        devices[label] = tokens;
      }
      const timeoutMs = parseTimeout(values);
      const call = (client: VmdevClient, options: Parameters<VmdevClient['detach']>[2]): Promise<RequestResult> =>
        command === 'detach' ? client.detach(selector, devices, options) : client.attach(selector, devices, options);
      return async (client, io, json) => {
        if (!values.wait) {
          const result = await call(client, { timeoutMs: 0 });
          if (json) io.out(JSON.stringify({ accepted: result.accepted }) + '\n');
          else io.out(result.accepted ? `started: ${Object.keys(devices).join(', ')}\n` : '');
          if (!result.accepted) io.err(`vmdevctl: no VM matches "${selector}"\n`);
          return result.accepted ? EXIT.ok : EXIT.noSuchVm;
        }
        const result = await call(client, {
          timeoutMs,
          onOutcome: (o) => !json && io.out(describeOutcome(o) + '\n'),
        });
        if (!result.accepted) {
          if (json) io.out(JSON.stringify({ accepted: false, outcomes: [], pending: [] }) + '\n');
          io.err(`vmdevctl: no VM matches "${selector}"\n`);
          return EXIT.noSuchVm;
        }
        if (json)
          io.out(
            JSON.stringify({ accepted: true, outcomes: result.outcomes.map(outcomeJson), pending: result.pending }) +
              '\n',
          );
        else
          for (const label of result.pending) io.out(`pending   ${label}  (no outcome within ${values.timeout} s)\n`);
        return outcomeCode(result.outcomes, result.pending.length > 0);
      };
    }
    case 'move': {
      const [from, to, ...labels] = args;
      if (from === undefined || to === undefined || labels.length === 0)
        throw new UsageError('give the VM to move from, the VM to move to, and at least one label');
      if (new Set(labels).size !== labels.length) throw new UsageError('a label is given twice');
      const timeoutMs = parseTimeout(values, true);
      return async (client, io, json) => {
        const result = await client.move(from, to, labels, {
          timeoutMs,
          onOutcome: (o) => !json && io.out(describeOutcome(o) + '\n'),
        });
        if (json)
          io.out(
            JSON.stringify({
              from,
              to,
              devices: result.devices.map((d) => ({
                label: d.label,
                status: d.status,
                ...(d.detach && { detach: outcomeJson(d.detach) }),
                ...(d.attach && { attach: outcomeJson(d.attach) }),
                ...(d.putBack && { putBack: outcomeJson(d.putBack) }),
              })),
            }) + '\n',
          );
        else for (const d of result.devices) io.out(describeMoved(d, from, to) + '\n');
        const all = result.devices.flatMap((d) => [d.detach, d.attach, d.putBack]);
        const code = outcomeCode(
          all,
          result.devices.some((d) => d.status === 'pending'),
        );
        // A device that is not where it was asked to go failed, even when its put back worked.
        if (code === EXIT.ok && result.devices.some((d) => d.status !== 'moved')) return EXIT.deviceFailed;
        return code;
      };
    }
  }
}

/** `--timeout S` in ms; only with --wait, unless the command always waits. */
function parseTimeout(values: Values, alwaysWaits = false): number | undefined {
  if (values.timeout === undefined) return undefined;
  const s = Number(values.timeout);
  if (!values.wait && !alwaysWaits) throw new UsageError('--timeout needs --wait');
  if (!Number.isFinite(s) || s <= 0)
    throw new UsageError(`--timeout "${values.timeout}" is not a positive number of seconds`);
  return s * 1000;
}
