/** The qmp backend's options: their schema, defaults and the checks a schema cannot make. */
import { isAbsolute, join } from 'node:path';

/** A VM name: what `NAME.qmp` in `socketDir` may be, and what `vms[].name` must be. */
export const VM_NAME_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,63}$';
/** The longest unix socket path Linux takes (`sun_path` is 108 bytes with its NUL). */
export const MAX_SOCKET_PATH = 107;

export const OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    vms: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name'],
        additionalProperties: false,
        properties: {
          name: { type: 'string', pattern: VM_NAME_PATTERN, description: 'the VM name vmdevd shows' },
          type: { type: 'string', minLength: 1, maxLength: 128, description: 'the VM type selectors match' },
          socket: {
            type: 'string',
            pattern: '^/',
            maxLength: MAX_SOCKET_PATH,
            description: "the path of vmdevd's own QMP socket of this VM",
          },
        },
      },
    },
    socketDir: {
      type: 'string',
      pattern: '^/',
      maxLength: MAX_SOCKET_PATH,
      description: 'a directory where every NAME.qmp socket is a VM NAME',
    },
    commandTimeoutMs: { type: 'integer', minimum: 100, maximum: 600000 },
    connectTimeoutMs: { type: 'integer', minimum: 100, maximum: 600000 },
    reconnectInitialMs: { type: 'integer', minimum: 10, maximum: 60000 },
    reconnectMaxMs: { type: 'integer', minimum: 10, maximum: 600000 },
  },
  // Either may be absent, not both; and without socketDir every VM needs its socket.
  if: { not: { required: ['socketDir'] } },
  then: { required: ['vms'], properties: { vms: { minItems: 1, items: { required: ['socket'] } } } },
} as const;

export interface VmConfig {
  readonly name: string;
  readonly type: string | undefined;
  readonly socket: string;
}

export interface QmpOptions {
  readonly vms: readonly VmConfig[];
  readonly socketDir: string | undefined;
  readonly commandTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
}

/**
 * Options already validated against {@link OPTIONS_SCHEMA}, with defaults.
 * Throws an Error naming the field for what the schema cannot check: a
 * name or a socket given twice.
 */
export function readOptions(raw: Readonly<Record<string, unknown>>): QmpOptions {
  const socketDir = raw['socketDir'] as string | undefined;
  const entries = (raw['vms'] as Array<{ name: string; type?: string; socket?: string }> | undefined) ?? [];
  const vms = entries.map((entry, i): VmConfig => {
    const socket = entry.socket ?? join(socketDir!, `${entry.name}.qmp`);
    if (!isAbsolute(socket)) throw new Error(`vms[${i}].socket: must be an absolute path`);
    return { name: entry.name, type: entry.type, socket };
  });
  vms.forEach((vm, i) => {
    const j = vms.findIndex((other) => other.name === vm.name);
    if (j < i) throw new Error(`vms[${i}].name: "${vm.name}" is also the name of vms[${j}]`);
    const k = vms.findIndex((other) => other.socket === vm.socket);
    if (k < i) throw new Error(`vms[${i}].socket: ${vm.socket} is also the socket of vms[${k}]`);
    if (Buffer.byteLength(vm.socket) > MAX_SOCKET_PATH)
      throw new Error(`vms[${i}].socket: ${vm.socket} is longer than ${MAX_SOCKET_PATH} bytes`);
  });
  return {
    vms,
    socketDir,
    commandTimeoutMs: (raw['commandTimeoutMs'] as number | undefined) ?? 10_000,
    connectTimeoutMs: (raw['connectTimeoutMs'] as number | undefined) ?? 5_000,
    reconnectInitialMs: (raw['reconnectInitialMs'] as number | undefined) ?? 500,
    reconnectMaxMs: (raw['reconnectMaxMs'] as number | undefined) ?? 30_000,
  };
}
