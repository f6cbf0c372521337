/**
 * Parsing and validation of the `a{sas}` device map of `TestMethod`.
 * A request is validated as a whole: the first problem found rejects it with
 * `InvalidArgs` naming the label and the problem, and nothing is started.
 */
import { DEVICE_TYPES, type DeviceSpec, type DeviceType } from '../plugin-api.js';
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

interface TypeRule {
  /** Alternatives: at least one group must be complete; any group that is started must be complete. */
  readonly required: readonly (readonly string[])[];
  readonly params: Readonly<Record<string, ParamRule>>;
}

interface CompiledRule extends TypeRule {
  /** The parameter names, in a fixed order (for the identity). */
  readonly names: readonly string[];
}

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
    },
  },
  interface: {
    required: [['mac']],
    params: {
      mac: {
        pattern: /^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/,
        expected: 'a MAC address such as 52:54:00:12:34:56',
        normalize: (v) => v.toLowerCase(),
      },
    },
  },
  alias: {
    required: [['name']],
    params: {
      name: {
        pattern: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/,
        expected: 'a device alias such as ua-disk1 (letters, digits, _ . -, at most 64)',
      },
    },
  },
};

const RULES = Object.fromEntries(
  Object.entries(RULE_TABLE).map(([type, rule]) => [type, { ...rule, names: Object.keys(rule.params) }]),
) as unknown as Readonly<Record<DeviceType, CompiledRule>>;

const PERSISTENT: ParamRule = { pattern: /^(yes|no)$/, expected: 'yes or no' };

function describeLabel(label: string): string {
  return JSON.stringify(label.length > 80 ? `${label.slice(0, 77)}...` : label);
}

/** Validates and normalises one device; throws `InvalidArgs`. */
export function parseDevice(label: string, tokens: unknown): DeviceSpec {
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

  // Canonical: the type's parameters in their fixed order, whatever the token order.
  let identity = `${type}:`;
  for (const n of rule.names) if (n in params) identity += `${n}=${params[n]},`;
  identity += persistent ? ';persistent=yes' : ';persistent=no';
  return new ParsedDevice(label, type as DeviceType, params, persistent, identity);
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
export function parseDeviceMap(devices: unknown): DeviceSpec[] {
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
  const specs = entries.map(([label, tokens]) => parseDevice(label, tokens));
  const seen = new Map<string, string>();
  for (const spec of specs) {
    const other = seen.get(spec.identity);
    if (other !== undefined) {
      throw invalidArgs(`device ${describeLabel(spec.label)}: names the same device as ${describeLabel(other)}`);
    }
    seen.set(spec.identity, spec.label);
  }
  return specs;
}
