/**
 * Parsing and validation of the `a{sas}` device map of `TestMethod` and
 * `AttachDevices`. A request is validated as a whole: the first problem
 * found rejects it with `InvalidArgs` naming the label and the problem, and
 * nothing is started.
 *
 * Every token is valid in both directions, so that what `GetDevices` lists
 * can be given unchanged to `TestMethod` and then to `AttachDevices`. An
 * attach needs more of them: a disk's `source` and `bus`, an interface's
 * `network`, `bridge` or `user`; and an `alias` names a device that exists,
 * so it cannot be attached.
 */
import { DESCRIPTIVE_PARAMS, DEVICE_TYPES, type DeviceSpec, type DeviceType } from '../plugin-api.js';
import { buildDeviceXml } from './device-xml.js';
import { invalidArgs } from './errors.js';

export const MAX_DEVICES = 256;
export const MAX_TOKENS_PER_DEVICE = 16;
export const MAX_TOKEN_LENGTH = 256;
export const LABEL_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

interface ParamRule {
  readonly pattern: RegExp;
  /** What a valid value looks like, for the error message. */
  readonly expected: string;
  readonly normalize?: (value: string) => string;
}

/** Which way a device goes: `TestMethod` detaches, `AttachDevices` attaches. */
export type Direction = 'detach' | 'attach';

interface TypeRule {
  /** Alternatives: at least one group must be complete; any group that is started must be complete. */
  readonly required: readonly (readonly string[])[];
  readonly params: Readonly<Record<string, ParamRule>>;
  /** At most one of these may be given. */
  readonly exclusive?: readonly string[];
  /** What an attach needs besides `required`: every token of `all`, and one of `oneOf`. */
  readonly attach?: { readonly all?: readonly string[]; readonly oneOf?: readonly string[] };
  /** Why this type cannot be attached, if it cannot. */
  readonly notAttachable?: string;
}

interface CompiledRule extends TypeRule {
  /** The parameter names, in a fixed order (for the identity). */
  readonly names: readonly string[];
  /** The parameters that name the device (all but the descriptive ones), in the same order. */
  readonly naming: readonly string[];
}

/** The longest path a `source` may name (the token, `source=` and all, is at most MAX_TOKEN_LENGTH). */
export const MAX_PATH_LENGTH = 240;

/**
 * An absolute path, written the one way libvirt will show it again: no
 * empty, `.` or `..` component, no trailing slash, no control character.
 */
const absolutePath: ParamRule = {
  // Anything but C0 and C1 control characters and DEL; the structure is checked below.
  // eslint-disable-next-line no-control-regex -- the control characters are what it refuses
  pattern: /^\/[^\u0000-\u001f\u007f-\u009f]*$/,
  expected: `an absolute path without control characters, empty, . or .. components, at most ${MAX_PATH_LENGTH} characters`,
  normalize: (v) => {
    if (v.length > MAX_PATH_LENGTH) throw new RangeError();
    const parts = v.slice(1).split('/');
    if (parts.some((p) => p === '' || p === '.' || p === '..')) throw new RangeError();
    return v;
  },
};

const yesNo: ParamRule = { pattern: /^(yes|no)$/, expected: 'yes or no' };

const decimal = (max: number): ParamRule => ({
  pattern: /^[0-9]{1,10}$/,
  expected: `a decimal number from 0 to ${max}`,
  normalize: (v) => {
    const n = Number(v);
    if (n > max) throw new RangeError();
    return String(n);
  },
});

const hex16: ParamRule = {
  pattern: /^0x[0-9A-Fa-f]{4}$/,
  expected: '0x followed by 4 hex digits',
  normalize: (v) => v.toLowerCase(),
};

function normalizePciAddress(value: string): string {
  const m = /^(?:([0-9A-Fa-f]{4}):)?([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])$/.exec(value)!;
  const slot = parseInt(m[3]!, 16);
  if (slot > 0x1f) throw new RangeError();
  return `${(m[1] ?? '0000').toLowerCase()}:${m[2]!.toLowerCase()}:${m[3]!.toLowerCase()}.${m[4]}`;
}

const RULE_TABLE: Readonly<Record<DeviceType, TypeRule>> = {
  pci: {
    required: [['address']],
    params: {
      address: {
        pattern: /^(?:[0-9A-Fa-f]{4}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$/,
        expected: '[DDDD:]BB:SS.F in hex, slot at most 1f, function 0-7',
        normalize: normalizePciAddress,
      },
    },
  },
  usb: {
    required: [
      ['vendor', 'product'],
      ['bus', 'device'],
    ],
    params: { vendor: hex16, product: hex16, bus: decimal(65535), device: decimal(65535) },
  },
  scsi: {
    required: [['adapter', 'bus', 'target', 'unit']],
    params: {
      adapter: { pattern: /^scsi_host[0-9]{1,6}$/, expected: 'scsi_hostN' },
      bus: decimal(65535),
      target: decimal(65535),
      unit: decimal(4294967295),
    },
  },
  mdev: {
    required: [['uuid']],
    params: {
      uuid: {
        pattern: /^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$/,
        expected: 'a UUID such as 4b20d080-1b54-4048-85b3-a6a62d165c01',
        normalize: (v) => v.toLowerCase(),
      },
      model: { pattern: /^vfio-(pci|ccw|ap)$/, expected: 'vfio-pci, vfio-ccw or vfio-ap' },
    },
  },
  disk: {
    required: [['target']],
    params: {
      // A guest device name (libvirt: vdb, sda) or a QEMU device or drive id (qmp: scsi0, drive-virtio-disk1).
      target: {
        pattern: /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/,
        expected:
          'a disk target such as vdb, or a QEMU device or drive id (a letter, then letters, digits, _ . -, at most 64)',
      },
      // A path under /dev is a block device; any other, a file.
      source: absolutePath,
      bus: { pattern: /^(scsi|usb|virtio|sata)$/, expected: 'scsi, usb, virtio or sata' },
      format: { pattern: /^(raw|qcow2)$/, expected: 'raw or qcow2' },
      readonly: yesNo,
    },
    attach: { all: ['source', 'bus'] },
  },
  interface: {
    required: [['mac']],
    params: {
      mac: {
        pattern: /^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/,
        expected: 'a MAC address such as 52:54:00:12:34:56',
        normalize: (v) => v.toLowerCase(),
      },
      network: {
        pattern: /^[A-Za-z0-9_][A-Za-z0-9_.+:-]{0,63}$/,
        expected: 'a libvirt network name (letters, digits, _ . + : -, at most 64, not starting with . + : -)',
      },
      // Linux interface names: at most 15 characters.
      bridge: {
        pattern: /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,14}$/,
        expected: 'a bridge name (letters, digits, _ . : -, at most 15, not starting with . : -)',
      },
      user: { pattern: /^yes$/, expected: 'yes (user-mode networking)' },
      model: { pattern: /^(virtio|e1000e|e1000|rtl8139)$/, expected: 'virtio, e1000e, e1000 or rtl8139' },
    },
    exclusive: ['network', 'bridge', 'user'],
    attach: { oneOf: ['network', 'bridge', 'user'] },
  },
  alias: {
    required: [['name']],
    params: {
      name: {
        pattern: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/,
        expected: 'a device alias such as ua-disk1 (letters, digits, _ . -, at most 64)',
      },
    },
    notAttachable: 'an alias names a device the VM already has, so it cannot be attached; give its type and tokens',
  },
};

const RULES = Object.fromEntries(
  Object.entries(RULE_TABLE).map(([type, rule]) => {
    const names = Object.keys(rule.params);
    const descriptive = DESCRIPTIVE_PARAMS[type as DeviceType];
    return [type, { ...rule, names, naming: names.filter((n) => !descriptive.includes(n)) }];
  }),
) as unknown as Readonly<Record<DeviceType, CompiledRule>>;

const PERSISTENT: ParamRule = yesNo;

function describeLabel(label: string): string {
  return JSON.stringify(label.length > 80 ? `${label.slice(0, 77)}...` : label);
}

/** Validates and normalises one device for `direction`; throws `InvalidArgs`. */
export function parseDevice(label: string, tokens: unknown, direction: Direction = 'detach'): DeviceSpec {
  // Only needed for an error: built then.
  const at = () => `device ${describeLabel(label)}`;
  if (!LABEL_PATTERN.test(label)) {
    throw invalidArgs(`${at()}: a label is 1 to 64 characters of A-Z a-z 0-9 _ . : -`);
  }
  if (!Array.isArray(tokens)) {
    throw invalidArgs(`${at()}: the tokens must be a list of strings`);
  }
  if (tokens.length === 0) {
    throw invalidArgs(`${at()}: no tokens; "type=…" is required`);
  }
  if (tokens.length > MAX_TOKENS_PER_DEVICE) {
    throw invalidArgs(`${at()}: ${tokens.length} tokens, at most ${MAX_TOKENS_PER_DEVICE} are allowed`);
  }
  // Names and values side by side: a handful of tokens, cheaper than a Map.
  const names: string[] = [];
  const values: string[] = [];
  let type: string | undefined;
  for (const token of tokens as unknown[]) {
    if (typeof token !== 'string') throw invalidArgs(`${at()}: the tokens must be a list of strings`);
    if (token.length > MAX_TOKEN_LENGTH) {
      throw invalidArgs(`${at()}: a token is ${token.length} characters long, at most ${MAX_TOKEN_LENGTH} are allowed`);
    }
    const eq = token.indexOf('=');
    if (eq <= 0) {
      throw invalidArgs(`${at()}: token ${JSON.stringify(token)} is not of the form name=value`);
    }
    const name = token.slice(0, eq);
    if (names.includes(name)) {
      throw invalidArgs(`${at()}: token "${name}" is given more than once`);
    }
    const value = token.slice(eq + 1);
    if (name === 'type') type = value;
    names.push(name);
    values.push(value);
  }

  if (type === undefined) {
    throw invalidArgs(`${at()}: "type=…" is required (one of ${DEVICE_TYPES.join(', ')})`);
  }
  if (!(DEVICE_TYPES as readonly string[]).includes(type)) {
    throw invalidArgs(`${at()}: unknown type ${JSON.stringify(type)} (expected one of ${DEVICE_TYPES.join(', ')})`);
  }
  const rule = RULES[type as DeviceType];

  const params: Record<string, string> = {};
  let persistent = false;
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    if (name === 'type') continue;
    const value = values[i]!;
    // Own keys only: a token named "constructor" is unknown, not Object's.
    const paramRule =
      name === 'persistent' ? PERSISTENT : Object.hasOwn(rule.params, name) ? rule.params[name] : undefined;
    if (paramRule === undefined) {
      const known = [...Object.keys(rule.params), 'persistent'].join(', ');
      throw invalidArgs(`${at()}: unknown token "${name}" for type ${type} (known: ${known})`);
    }
    let normalized: string | undefined;
    if (paramRule.pattern.test(value)) {
      try {
        normalized = paramRule.normalize ? paramRule.normalize(value) : value;
      } catch {
        normalized = undefined;
      }
    }
    if (normalized === undefined) {
      throw invalidArgs(`${at()}: malformed ${name} ${JSON.stringify(value)} (expected ${paramRule.expected})`);
    }
    if (name === 'persistent') persistent = normalized === 'yes';
    else params[name] = normalized;
  }

  const groups = rule.required;
  let complete = false;
  let started: readonly string[] | undefined;
  for (const g of groups) {
    let present = 0;
    for (const n of g) if (n in params) present++;
    if (present === g.length) complete = true;
    else if (present > 0) started ??= g;
  }
  if (!complete || started !== undefined) {
    const missing = (started ?? groups[0]!).filter((n) => !(n in params));
    const alternatives = groups.map((g) => g.join(' and ')).join(', or ');
    throw invalidArgs(`${at()}: type ${type} requires ${alternatives}; missing ${missing.join(', ')}`);
  }
  if (rule.exclusive !== undefined) {
    const given = rule.exclusive.filter((n) => n in params);
    if (given.length > 1) {
      throw invalidArgs(`${at()}: give only one of ${orList(rule.exclusive)}; ${given.join(' and ')} were given`);
    }
  }
  if (direction === 'attach') {
    if (rule.notAttachable !== undefined)
      throw invalidArgs(`${at()}: type ${type} cannot be attached: ${rule.notAttachable}`);
    const missing = (rule.attach?.all ?? []).filter((n) => !(n in params));
    if (missing.length > 0) {
      throw invalidArgs(
        `${at()}: an attach of type ${type} requires ${rule.attach!.all!.join(' and ')}; missing ${missing.join(', ')}`,
      );
    }
    const oneOf = rule.attach?.oneOf;
    if (oneOf !== undefined && !oneOf.some((n) => n in params)) {
      throw invalidArgs(`${at()}: an attach of type ${type} requires one of ${orList(oneOf)}`);
    }
  }

  // Canonical: the type's parameters in their fixed order, whatever the token order.
  let identity = `${type}:`;
  let device = identity;
  for (const n of rule.names) {
    if (!(n in params)) continue;
    identity += `${n}=${params[n]},`;
    if (rule.naming.includes(n)) device += `${n}=${params[n]},`;
  }
  const persistence = persistent ? ';persistent=yes' : ';persistent=no';
  return new ParsedDevice(label, type as DeviceType, params, persistent, identity + persistence, device + persistence);
}

function orList(names: readonly string[]): string {
  return names.length < 2 ? names.join('') : `${names.slice(0, -1).join(', ')} or ${names.at(-1)!}`;
}

/** A validated device; its XML is built when a backend first reads it (libvirt does; others may never), as it costs more than the rest of the validation together. */
class ParsedDevice implements DeviceSpec {
  #xml: string | undefined | null = null;

  constructor(
    readonly label: string,
    readonly type: DeviceType,
    readonly params: Readonly<Record<string, string>>,
    readonly persistent: boolean,
    readonly identity: string,
    /** Equal for two specs naming the same device, whatever they say of it: a request may name a device once. */
    readonly device: string,
  ) {}

  get xml(): string | undefined {
    if (this.#xml === null) this.#xml = buildDeviceXml(this.type, this.params);
    return this.#xml;
  }
}

/**
 * Validates a whole device map. Throws `InvalidArgs` on the first problem, so
 * that a request is either accepted entirely or not at all.
 */
export function parseDeviceMap(devices: unknown, direction: Direction = 'detach'): DeviceSpec[] {
  if (typeof devices !== 'object' || devices === null || Array.isArray(devices)) {
    throw invalidArgs('the devices argument must be a map of label to tokens (a{sas})');
  }
  // Where Object.prototype has its __proto__ accessor (the daemon removes it at
  // start), a label "__proto__" cannot survive the decoding into a plain
  // object; say so instead of dropping it.
  const proto: unknown = Object.getPrototypeOf(devices);
  if (proto !== Object.prototype && proto !== null) {
    throw invalidArgs('device "__proto__": this label is reserved');
  }
  const entries = Object.entries(devices as Record<string, unknown>);
  if (entries.length === 0) {
    throw invalidArgs('no devices given: the map must name at least one device');
  }
  if (entries.length > MAX_DEVICES) {
    throw invalidArgs(`${entries.length} devices given, at most ${MAX_DEVICES} are allowed in one request`);
  }
  const specs = entries.map(([label, tokens]) => parseDevice(label, tokens, direction));
  const seen = new Map<string, string>();
  for (const spec of specs) {
    const key = (spec as ParsedDevice).device;
    const other = seen.get(key);
    if (other !== undefined) {
      throw invalidArgs(`device ${describeLabel(spec.label)}: names the same device as ${describeLabel(other)}`);
    }
    seen.set(key, spec.label);
  }
  return specs;
}

/** The descriptive tokens a spec carries (plugin API 2): a plugin of version 1 cannot check them. */
export function descriptiveParams(spec: DeviceSpec): string[] {
  return DESCRIPTIVE_PARAMS[spec.type].filter((n) => n in spec.params);
}
