/**
 * The calls the fuzzer makes: generated from a seeded `Random`, each with
 * what the daemon must answer (a reply, an error of given names, or
 * anything) and, for TestMethod and AttachDevices, the labels of the
 * request and whether it is known to be invalid.
 */
import { BUS_NAME, INTERFACE, OBJECT_PATH } from '../harness/bus-client.js';
import { DEFAULT_VMS } from '../harness/stack.js';
import { NO_REPLY_EXPECTED, type RawCall } from './raw-client.js';
import {
  MAX_ARRAY_DEPTH,
  type Random,
  chars,
  hugeString,
  interfaceName,
  memberName,
  nestedArrays,
  nestedVariants,
  objectPath,
  randomBody,
  randomSignature,
  randomString,
  randomType,
  randomValue,
} from './random-dbus.js';

const PROPS = 'org.freedesktop.DBus.Properties';
export const INVALID_ARGS = 'org.freedesktop.DBus.Error.InvalidArgs';
export const UNKNOWN_METHOD = 'org.freedesktop.DBus.Error.UnknownMethod';
const VM_NOT_FOUND = 'org.example.dbustest.Error.VmNotFound';
const VM_NAMES = DEFAULT_VMS.map((v) => v.name);
const STATES = ['running', 'paused', 'shutdown', 'shutoff'];
/** Strings that trip up code that keeps data in plain objects, or parsers. */
const DICTIONARY = [
  '',
  ' ',
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'valueOf',
  '__defineGetter__',
  'vm1',
  'vm1 ',
  'VM1',
  'ivi',
  'cluster',
  'type',
  'type=',
  '=disk',
  '==',
  'type=disk',
  'type==disk',
  'target=vdb',
  'persistent=yes',
  'null',
  'undefined',
  'NaN',
  '-1',
  '0x',
  '%s%n',
  '../../etc/passwd',
  '<hostdev/>',
  ']]>',
  '\u202eevil',
  'a'.repeat(64),
  'a'.repeat(65),
  'x'.repeat(257),
];

export interface FuzzCall extends RawCall {
  readonly id: number;
  readonly category: string;
  /** What must come back: anything, an error (of one of `errors` if given), or a method return. */
  readonly expect: 'any' | 'error' | 'return';
  readonly errors?: readonly string[];
  /** TestMethod and AttachDevices: the labels of the request, and whether it is known to be invalid. */
  readonly labels?: readonly string[];
  readonly invalid?: boolean;
  /** TestMethod and AttachDevices: the reply a valid request must get. */
  readonly accepted?: boolean | string;
}

/** Devices an attach takes: every token it needs (and a detach takes them too). */
const VALID_ATTACHES: Array<(r: Random, i: number) => string[]> = [
  (r, i) => [
    'type=disk',
    `target=sd${String.fromCharCode(97 + (i % 26))}`,
    `source=/var/lib/vmdevd-fuzz/${chars(r, 'abcdefgh', 6)}.img`,
    `bus=${r.pick(['scsi', 'usb', 'virtio', 'sata'])}`,
    ...(r.chance(0.5) ? [`format=${r.pick(['raw', 'qcow2'])}`] : []),
    ...(r.chance(0.3) ? [`readonly=${r.pick(['yes', 'no'])}`] : []),
  ],
  (r) => [
    'type=interface',
    `mac=52:54:00:${chars(r, '0123456789abcdef', 2)}:${chars(r, '0123456789abcdef', 2)}:${chars(r, '0123456789abcdef', 2)}`,
    r.pick(['user=yes', 'network=default', 'bridge=br0']),
    ...(r.chance(0.5) ? [`model=${r.pick(['virtio', 'e1000e', 'e1000', 'rtl8139'])}`] : []),
  ],
  (r, i) => VALID_DEVICES[r.int(1, 5)]!(r, i),
];

/** A disk or interface an attach cannot take (a detach may take some of them). */
const ATTACH_DEFECTS: Array<(r: Random, i: number) => string[]> = [
  (r, i) => {
    const missing = r.pick(['source=', 'bus=']);
    return VALID_ATTACHES[0]!(r, i).filter((t) => !t.startsWith(missing));
  },
  (r, i) =>
    VALID_ATTACHES[0]!(r, i).map((t) =>
      t.startsWith('source=')
        ? `source=${r.pick(['relative.img', '/a/../b', '/a//b', '/a/', '/', '/a\u001bb', '/a\u0085b', `/${'p'.repeat(241)}`])}`
        : t,
    ),
  (r, i) =>
    VALID_ATTACHES[0]!(r, i).map((t) => (t.startsWith('bus=') ? `bus=${r.pick(['ide', 'fdc', 'SCSI', ''])}` : t)),
  (r, i) => [...VALID_ATTACHES[0]!(r, i), `format=${r.pick(['vmdk', 'QCOW2', ''])}`],
  (r, i) => [...VALID_ATTACHES[0]!(r, i), r.pick(['network=default', 'model=virtio', 'user=yes'])],
  (r, i) => VALID_ATTACHES[1]!(r, i).filter((t) => !/^(network|bridge|user)=/.test(t)),
  (r, i) => [
    ...VALID_ATTACHES[1]!(r, i).filter((t) => !/^(network|bridge|user)=/.test(t)),
    'network=default',
    r.pick(['bridge=br0', 'user=yes']),
  ],
  (r, i) => [
    ...VALID_ATTACHES[1]!(r, i).filter((t) => !t.startsWith('model=')),
    `model=${r.pick(['ne2k_pci', 'VIRTIO', ''])}`,
  ],
  (r, i) => [
    ...VALID_ATTACHES[1]!(r, i),
    r.pick(['user=no', 'source=/x.img', `bridge=${'b'.repeat(16)}`, 'network=a/b']),
  ],
  (r) => ['type=alias', `name=ua-${chars(r, 'abcdefgh', 4)}`],
];

const VALID_DEVICES: Array<(r: Random, i: number) => string[]> = [
  (_r, i) => [
    'type=disk',
    `target=vd${String.fromCharCode(97 + (i % 26))}${String.fromCharCode(97 + (Math.floor(i / 26) % 26))}`,
  ],
  (r) => ['type=usb', `vendor=0x${chars(r, '0123456789abcdef', 4)}`, `product=0x${chars(r, '0123456789ABCDEF', 4)}`],
  (r) => ['type=usb', `bus=${r.int(0, 65535)}`, `device=${r.int(0, 65535)}`, 'persistent=no'],
  (r, i) => [
    'type=pci',
    `address=0000:${(i % 256).toString(16).padStart(2, '0')}:${r.int(0, 31).toString(16).padStart(2, '0')}.${r.int(0, 7)}`,
  ],
  (r) => [
    'type=scsi',
    `adapter=scsi_host${r.int(0, 9)}`,
    `bus=${r.int(0, 3)}`,
    `target=${r.int(0, 9)}`,
    `unit=${r.int(0, 99999)}`,
  ],
  (r) => [
    'type=mdev',
    `uuid=${chars(r, '0123456789abcdef', 8)}-${chars(r, '0123456789abcdef', 4)}-4${chars(r, '0123456789abcdef', 3)}-8${chars(r, '0123456789abcdef', 3)}-${chars(r, '0123456789abcdef', 12)}`,
    'model=vfio-pci',
  ],
  (r) => [
    'type=interface',
    `mac=52:54:00:${chars(r, '0123456789abcdef', 2)}:${chars(r, '0123456789abcdef', 2)}:${chars(r, '0123456789abcdef', 2)}`,
  ],
  (r, i) => ['type=alias', `name=ua-${i}-${chars(r, 'abcdefgh', 4)}`, 'persistent=yes'],
];

/** One defect that makes an otherwise valid request invalid. */
const DEFECTS: Array<(r: Random, devices: Array<[string, string[]]>) => void> = [
  (r, d) =>
    (d[0]![0] = r.pick(['', 'a'.repeat(65), 'bad label', 'bad/label', 'é', '\ud83d\ude00', 'a,b', 'a=b', 'a\u00a0b'])),
  (r, d) =>
    (d[0]![1] = d[0]![1].map((t) =>
      t.startsWith('type=') ? `type=${r.pick(['floppy', 'PCI', '', 'disk ', 'hostdev', '\u00e9'])}` : t,
    )),
  (_r, d) => (d[0]![1] = d[0]![1].filter((t) => !t.startsWith('type='))),
  (r, d) => d[0]![1].push(`${r.pick(['bogus', 'Type', 'address', 'xml', 'target'])}=${r.pick(['1', 'x', ''])}`),
  (_r, d) => d[0]![1].push(d[0]![1][0]!),
  (r, d) => d[0]![1].push(r.pick(['novalue', '=x', ''])),
  (r, d) => d[0]![1].push(`persistent=${r.pick(['maybe', 'YES', '1', ''])}`),
  (_r, d) => (d[0]![1] = []),
  // Targets are QEMU ids too (a letter, then letters, digits, _ . -): at most 64 characters.
  (r, d) => (d[0]![1] = ['type=disk', `target=${'vd' + 'b'.repeat(r.int(63, 300))}`]),
  (_r, d) => (d[0]![1] = ['type=disk', 'target=vdb', 'persistent=no', `x${'='.repeat(300)}`]),
  (r, d) =>
    (d[0]![1] = ['type=pci', `address=${r.pick(['zz:00.0', '00:20.0', '0000:00:00.8', '00:00.0 ', '10000:00:00.0'])}`]),
  (r, d) => (d[0]![1] = ['type=usb', `vendor=${r.pick(['0x12345', '1234', '0xgggg', ''])}`, 'product=0x0001']),
  (_r, d) => (d[0]![1] = ['type=usb', 'vendor=0x0001']),
  (r, d) =>
    (d[0]![1] = ['type=interface', `mac=${r.pick(['52:54:00:12:34', '52-54-00-12-34-56', 'zz:54:00:12:34:56'])}`]),
  (r, d) => (d[0]![1] = ['type=mdev', `uuid=${r.pick(['1234', 'not-a-uuid', '4b20d080-1b54-4048-85b3-a6a62d165c0'])}`]),
  (r, d) =>
    (d[0]![1] = ['type=scsi', 'adapter=scsi_host0', 'bus=0', 'target=0', `unit=${r.pick(['4294967296', '-1', 'x'])}`]),
  (_r, d) => d.push([`${d[0]![0]}-dup`, [...d[0]![1]]]),
  (_r, d) => d.splice(0, d.length),
  (r, d) => {
    const n = r.int(257, 600);
    for (let i = d.length; i < n; i++)
      d.push([
        `${d[0]![0]}-${i}`,
        [
          'type=disk',
          `target=sd${String.fromCharCode(97 + (i % 26))}${String.fromCharCode(97 + (Math.floor(i / 26) % 26))}${String.fromCharCode(97 + (Math.floor(i / 676) % 26))}`,
        ],
      ]);
  },
  (r, d) => (d[0]![1] = Array.from({ length: r.int(17, 40) }, (_, i) => (i === 0 ? 'type=disk' : `target${i}=vdb`))),
];

const SELECTOR_RESULT: Record<string, boolean | string> = {
  vm1: true,
  vm2: true,
  vm3: true,
  ivi: true,
  '11111111-1111-4111-8111-111111111111': true,
  ['11111111-1111-4111-8111-111111111111'.toUpperCase()]: true,
  nosuchvm: false,
  cluster: 'org.example.dbustest.Error.AmbiguousSelector',
};

function lowLevelMap(entries: Array<[string, unknown]>): unknown[] {
  return entries.map(([k, v]) => [k, v]);
}

export function ourCall(member: string, signature: string, body: unknown[], extra: Partial<RawCall> = {}): RawCall {
  return { destination: BUS_NAME, path: OBJECT_PATH, interface: INTERFACE, member, signature, body, ...extra };
}

function propsCall(member: string, signature: string, body: unknown[], path = OBJECT_PATH): RawCall {
  return { destination: BUS_NAME, path, interface: PROPS, member, signature, body };
}

function randomLabel(r: Random): string {
  return r.weighted({ dict: 2, random: 3, valid: 3 }) === 'dict'
    ? r.pick(DICTIONARY)
    : r.chance(0.5)
      ? randomString(r, 70)
      : chars(r, 'abcdefghijklmnopqrstuvwxyz0123456789_.:-', r.int(1, 64));
}

function randomToken(r: Random): string {
  switch (r.weighted({ dict: 2, random: 2, shaped: 4 })) {
    case 'dict':
      return r.pick(DICTIONARY);
    case 'random':
      return randomString(r, 80);
    default:
      return `${r.pick(['type', 'target', 'address', 'vendor', 'product', 'bus', 'device', 'adapter', 'unit', 'uuid', 'model', 'mac', 'name', 'persistent', randomString(r, 8)])}=${r.pick(['disk', 'pci', 'usb', 'vdb', '0x1234', '1', 'yes', 'scsi_host0', randomString(r, 20)])}`;
  }
}

export function generate(r: Random, id: number): FuzzCall {
  const category = r.weighted({
    'TestMethod valid': 8,
    'TestMethod one defect': 16,
    'TestMethod random': 14,
    'TestMethod wrong signature': 8,
    'AttachDevices valid': 4,
    'AttachDevices one defect': 6,
    GetDevices: 3,
    'Properties.Get': 7,
    'Properties.GetAll': 3,
    'Properties.Set': 12,
    'Properties wrong signature': 4,
    Introspect: 4,
    Peer: 4,
    'unknown member or interface': 10,
    'deep nesting': 3,
    huge: 0.6,
    'not UTF-8 bytes': 2,
  });
  const base = { id, category };
  switch (category) {
    case 'TestMethod valid': {
      const selector = r.pick(Object.keys(SELECTOR_RESULT));
      const n = r.int(1, 4);
      const devices = Array.from({ length: n }, (_, i): [string, string[]] => [
        `v${id}-${i}`,
        r.pick(VALID_DEVICES)(r, i),
      ]);
      return {
        ...base,
        ...ourCall('TestMethod', 'sa{sas}', [selector, lowLevelMap(devices)]),
        expect: typeof SELECTOR_RESULT[selector] === 'string' ? 'error' : 'return',
        errors: typeof SELECTOR_RESULT[selector] === 'string' ? [SELECTOR_RESULT[selector]] : undefined,
        accepted: SELECTOR_RESULT[selector],
        labels: devices.map(([l]) => l),
      };
    }
    case 'TestMethod one defect': {
      const n = r.int(1, 3);
      const devices = Array.from({ length: n }, (_, i): [string, string[]] => [
        `i${id}-${i}`,
        r.pick(VALID_DEVICES)(r, i),
      ]);
      r.pick(DEFECTS)(r, devices);
      const flags = r.chance(0.05) ? NO_REPLY_EXPECTED : 0;
      return {
        ...base,
        ...ourCall('TestMethod', 'sa{sas}', [r.pick(['vm1', 'vm2']), lowLevelMap(devices)], { flags }),
        expect: 'error',
        errors: [INVALID_ARGS],
        labels: devices.map(([l]) => l),
        invalid: true,
      };
    }
    case 'TestMethod random': {
      const huge = r.chance(0.02);
      const n = huge ? r.int(257, 3000) : r.int(0, 6);
      const devices = Array.from({ length: n }, (): [string, string[]] => [
        randomLabel(r),
        Array.from({ length: r.int(0, r.chance(0.05) ? 40 : 5) }, () => randomToken(r)),
      ]);
      const selector = r.weighted({ vm: 3, dict: 1, random: 2, huge: 0.2 });
      const sel =
        selector === 'vm'
          ? r.pick(Object.keys(SELECTOR_RESULT))
          : selector === 'dict'
            ? r.pick(DICTIONARY)
            : selector === 'huge'
              ? hugeString(r, r.int(1000, 100_000))
              : randomString(r, 100);
      return {
        ...base,
        ...ourCall('TestMethod', 'sa{sas}', [sel, lowLevelMap(devices)]),
        expect: 'any',
        labels: devices.map(([l]) => l),
      };
    }
    case 'TestMethod wrong signature': {
      let sig = r.chance(0.5)
        ? r.pick([
            '',
            's',
            'sa{sv}',
            'sa{ss}',
            'sas',
            'a{sas}',
            'sa{sas}s',
            'ssa{sas}',
            'sa{say}',
            'sv',
            'sa{sa{sas}}',
            'say',
            'ia{sas}',
            'sa{ias}',
            'oa{sas}',
            'sa(sas)',
            'va{sas}',
          ])
        : randomSignature(r);
      if (sig === 'sa{sas}') sig = 'sa{sas}b';
      return {
        ...base,
        ...ourCall('TestMethod', sig, randomBody(r, sig), { interface: r.chance(0.2) ? undefined : INTERFACE }),
        expect: 'error',
        errors: [INVALID_ARGS],
      };
    }
    case 'AttachDevices valid': {
      const selector = r.pick(Object.keys(SELECTOR_RESULT));
      const devices = Array.from({ length: r.int(1, 4) }, (_, i): [string, string[]] => [
        `a${id}-${i}`,
        r.pick(VALID_ATTACHES)(r, i),
      ]);
      return {
        ...base,
        ...ourCall('AttachDevices', 'sa{sas}', [selector, lowLevelMap(devices)]),
        expect: typeof SELECTOR_RESULT[selector] === 'string' ? 'error' : 'return',
        errors: typeof SELECTOR_RESULT[selector] === 'string' ? [SELECTOR_RESULT[selector]] : undefined,
        accepted: SELECTOR_RESULT[selector],
        labels: devices.map(([l]) => l),
      };
    }
    case 'AttachDevices one defect': {
      const devices = Array.from({ length: r.int(1, 3) }, (_, i): [string, string[]] => [
        `ai${id}-${i}`,
        r.pick(VALID_ATTACHES.slice(0, 2))(r, i),
      ]);
      // A defect of the grammar, or of what only an attach needs.
      if (r.chance(0.5)) r.pick(DEFECTS)(r, devices);
      else devices[0]![1] = r.pick(ATTACH_DEFECTS)(r, 0);
      return {
        ...base,
        ...ourCall('AttachDevices', 'sa{sas}', [r.pick(['vm1', 'vm2']), lowLevelMap(devices)]),
        expect: 'error',
        errors: [INVALID_ARGS],
        labels: devices.map(([l]) => l),
        invalid: true,
      };
    }
    case 'GetDevices': {
      const known = r.chance(0.7);
      const selector = known ? r.pick(Object.keys(SELECTOR_RESULT)) : r.pick([...DICTIONARY, randomString(r, 40)]);
      const result = SELECTOR_RESULT[selector];
      return {
        ...base,
        ...ourCall('GetDevices', 's', [selector]),
        expect: !known ? 'any' : result === true ? 'return' : 'error',
        errors: !known || result === true ? undefined : [result === false ? VM_NOT_FOUND : (result as string)],
      };
    }
    case 'Properties.Get': {
      const iface = r.pick([INTERFACE, INTERFACE, '', PROPS, 'org.example.Other', randomString(r, 30)]);
      const prop = r.pick(['TestProperty', 'Backends', ...DICTIONARY.slice(0, 8), randomString(r, 30)]);
      const path = r.chance(0.9) ? OBJECT_PATH : objectPath(r);
      if (path !== OBJECT_PATH || (iface !== INTERFACE && iface !== ''))
        return { ...base, ...propsCall('Get', 'ss', [iface, prop], path), expect: 'any' };
      const known = prop === 'TestProperty' || prop === 'Backends';
      return {
        ...base,
        ...propsCall('Get', 'ss', [iface, prop], path),
        expect: known ? 'return' : 'error',
        errors: known ? undefined : [INVALID_ARGS],
      };
    }
    case 'Properties.GetAll': {
      const iface = r.pick([INTERFACE, '', 'org.freedesktop.DBus.Introspectable', randomString(r, 30)]);
      return {
        ...base,
        ...propsCall('GetAll', 's', [iface]),
        expect: iface === INTERFACE || iface === '' ? 'return' : 'any',
      };
    }
    case 'Properties.Set': {
      const what = r.weighted({ states: 6, readOnly: 1, otherType: 2, unknownProp: 1, otherIface: 1 });
      if (what === 'states') {
        const n = r.int(0, r.chance(0.02) ? 2000 : 4);
        const entries: Array<[string, string]> = Array.from({ length: n }, () => [
          r.chance(0.6) ? r.pick(VM_NAMES) : r.pick([...DICTIONARY, randomString(r, 30)]),
          r.chance(0.7)
            ? r.pick(STATES)
            : r.pick(['crashed', 'nostate', 'RUNNING', '', randomString(r, 20), ...DICTIONARY.slice(0, 5)]),
        ]);
        const seen = new Map(entries);
        const valid = [...seen].every(([k, v]) => VM_NAMES.includes(k) && STATES.includes(v));
        return {
          ...base,
          ...propsCall('Set', 'ssv', [INTERFACE, 'TestProperty', ['a{ss}', lowLevelMap(entries)]]),
          expect: valid ? 'return' : 'error',
          errors: valid ? undefined : [INVALID_ARGS],
        };
      }
      if (what === 'readOnly') {
        return {
          ...base,
          ...propsCall('Set', 'ssv', [INTERFACE, 'Backends', ['a{ss}', [['test', 'disconnected: no']]]]),
          expect: 'error',
          errors: ['org.freedesktop.DBus.Error.PropertyReadOnly'],
        };
      }
      if (what === 'otherType') {
        let type = randomType(r);
        if (type === 'a{ss}') type = 'a{sv}';
        return {
          ...base,
          ...propsCall('Set', 'ssv', [INTERFACE, 'TestProperty', [type, randomValue(r, type)]]),
          expect: 'error',
          errors: [INVALID_ARGS],
        };
      }
      if (what === 'unknownProp') {
        return {
          ...base,
          ...propsCall('Set', 'ssv', [INTERFACE, r.pick([...DICTIONARY, randomString(r, 20)]), ['a{ss}', []]]),
          expect: 'error',
        };
      }
      return {
        ...base,
        ...propsCall('Set', 'ssv', [
          r.pick(['org.example.Other', PROPS, randomString(r, 20)]),
          'TestProperty',
          ['s', 'x'],
        ]),
        expect: 'error',
      };
    }
    case 'Properties wrong signature': {
      const member = r.pick(['Get', 'GetAll', 'Set']);
      let sig = randomSignature(r);
      if (sig === { Get: 'ss', GetAll: 's', Set: 'ssv' }[member]) sig += 'b';
      return { ...base, ...propsCall(member, sig, randomBody(r, sig)), expect: 'error' };
    }
    case 'Introspect': {
      const sig = r.chance(0.7) ? '' : randomSignature(r, 2);
      return {
        ...base,
        destination: BUS_NAME,
        path: r.chance(0.5) ? OBJECT_PATH : objectPath(r),
        interface: 'org.freedesktop.DBus.Introspectable',
        member: 'Introspect',
        signature: sig,
        body: randomBody(r, sig),
        flags: r.chance(0.03) ? NO_REPLY_EXPECTED : 0,
        expect: 'any',
      };
    }
    case 'Peer': {
      const sig = r.chance(0.7) ? '' : randomSignature(r, 2);
      return {
        ...base,
        destination: BUS_NAME,
        path: r.chance(0.5) ? OBJECT_PATH : objectPath(r),
        interface: 'org.freedesktop.DBus.Peer',
        member: r.pick(['Ping', 'GetMachineId', 'Pong', memberName(r)]),
        signature: sig,
        body: randomBody(r, sig),
        expect: 'any',
      };
    }
    case 'unknown member or interface': {
      const sig = randomSignature(r, 3);
      const where = r.weighted({ ourInterface: 3, otherInterface: 3, noInterface: 2, otherPath: 2 });
      const member = r.chance(0.3)
        ? r.pick(['testMethod', 'TestSignal', 'DeviceDetached', 'TestProperty', 'Get', 'Set', 'Introspect'])
        : memberName(r);
      const call = {
        destination: BUS_NAME,
        path: where === 'otherPath' ? objectPath(r) : OBJECT_PATH,
        interface: where === 'noInterface' ? undefined : where === 'ourInterface' ? INTERFACE : interfaceName(r),
        member: member === 'TestMethod' ? 'TestMethodX' : member,
        signature: sig,
        body: randomBody(r, sig),
        flags: r.chance(0.05) ? NO_REPLY_EXPECTED : 0,
      };
      // Without an interface, a member of the standard interfaces is answered
      // (the spec lets a call leave its interface out), on our path and, for
      // Introspect and Peer, on its ancestors.
      const answerable =
        where !== 'ourInterface' && where !== 'otherInterface' && ['Get', 'Set', 'Introspect'].includes(call.member);
      if (answerable) return { ...base, ...call, expect: 'any' };
      return { ...base, ...call, expect: 'error', errors: where === 'ourInterface' ? [UNKNOWN_METHOD] : undefined };
    }
    case 'deep nesting': {
      const kind = r.pick(['variants', 'arrays', 'mixed']);
      if (kind === 'variants') {
        const depth = r.int(20, 62);
        return {
          ...base,
          ...propsCall('Set', 'ssv', [INTERFACE, 'TestProperty', nestedVariants(depth)]),
          expect: 'error',
          errors: [INVALID_ARGS],
        };
      }
      if (kind === 'arrays') {
        const { type, value } = nestedArrays(r.int(20, MAX_ARRAY_DEPTH));
        return {
          ...base,
          ...ourCall('TestMethod', `s${type}`, ['vm1', value]),
          expect: 'error',
          errors: [INVALID_ARGS],
        };
      }
      const inner = nestedArrays(r.int(10, 20));
      let value: unknown = [inner.type, inner.value];
      for (let i = 0; i < r.int(5, 20); i++) value = ['v', value];
      return { ...base, ...ourCall(memberName(r), 'v', [value]), expect: 'error', errors: [UNKNOWN_METHOD] };
    }
    case 'huge':
      return hugeCall(r, id, r.pick(HUGE_KINDS), r.int(256 * 1024, MAX_HUGE_BYTES));
    default: {
      // Byte arrays that are not UTF-8, where strings are expected and elsewhere.
      const bytes = Array.from({ length: r.int(1, 200) }, () => r.int(0x80, 0xff));
      const kind = r.pick(['method', 'map', 'variant']);
      if (kind === 'method')
        return { ...base, ...ourCall('TestMethod', 'ayay', [bytes, bytes]), expect: 'error', errors: [INVALID_ARGS] };
      if (kind === 'map')
        return {
          ...base,
          ...ourCall('TestMethod', 'sa{saay}', ['vm1', [['b1', [bytes]]]]),
          expect: 'error',
          errors: [INVALID_ARGS],
        };
      return {
        ...base,
        ...propsCall('Set', 'ssv', [INTERFACE, 'TestProperty', ['a{say}', [['vm1', bytes]]]]),
        expect: 'error',
        errors: [INVALID_ARGS],
      };
    }
  }
}

export const HUGE_KINDS = ['selector', 'token', 'bytes', 'map', 'member'] as const;
/** The largest body the fuzzer sends: well below the bus's message size limit (32 MiB by default). */
export const MAX_HUGE_BYTES = 3 * 1024 * 1024;

/** A call whose body is about `bytes` long, of one of `HUGE_KINDS`. */
export function hugeCall(r: Random, id: number, kind: (typeof HUGE_KINDS)[number], bytes: number): FuzzCall {
  const base = { id, category: 'huge' };
  switch (kind) {
    case 'selector':
      return {
        ...base,
        ...ourCall('TestMethod', 'sa{sas}', [hugeString(r, bytes), [['h1', ['type=disk', 'target=vdb']]]]),
        expect: 'error',
        errors: [INVALID_ARGS],
      };
    case 'token':
      return {
        ...base,
        ...ourCall('TestMethod', 'sa{sas}', ['vm1', [[`h${id}`, ['type=disk', hugeString(r, bytes)]]]]),
        expect: 'error',
        errors: [INVALID_ARGS],
        labels: [`h${id}`],
        invalid: true,
      };
    case 'bytes':
      return {
        ...base,
        ...propsCall('Set', 'ssv', [
          INTERFACE,
          'TestProperty',
          ['ay', Array.from({ length: bytes }, (_, i) => 0x80 + (i % 128))],
        ]),
        expect: 'error',
        errors: [INVALID_ARGS],
      };
    case 'map':
      return {
        ...base,
        ...propsCall('Set', 'ssv', [
          INTERFACE,
          'TestProperty',
          ['a{ss}', Array.from({ length: Math.floor(bytes / 64) }, (_, i) => [`vm-${i}-${'x'.repeat(40)}`, 'running'])],
        ]),
        expect: 'error',
        errors: [INVALID_ARGS],
      };
    case 'member':
      return {
        ...base,
        ...ourCall(memberName(r), 'as', [Array.from({ length: Math.floor(bytes / 1000) }, () => 'y'.repeat(990))]),
        expect: 'error',
        errors: [UNKNOWN_METHOD],
      };
  }
}
