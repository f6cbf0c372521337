#!/usr/bin/env node
// Compares vmdevd's D-Bus wire layer (src/dbus/wire) with dbus-next's own.
// Build first (npx tsc -b; make -C bench/c for the end-to-end part).
//
//   node bench/wire-compare.mjs codec            per-message encode/decode time, ours vs dbus-next
//   node bench/wire-compare.mjs e2e [rounds] [seconds] [server,...]
//        one private dbus-daemon; bench/c/build/load --call testmethod against
//        (1) the sd-bus ref-server, (2) a bare dbus-next server replying true
//        with dbus-next's connection, (3) the same with the fast connection
//        (4) ... flushing with setImmediate instead of nextTick;
//        p50/p99 at --inflight 1 and calls/s at --inflight 16, interleaved,
//        repeated; medians and the ratios of each round.
//   node bench/wire-compare.mjs serve MODE NAME ADDRESS   (used by e2e)
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);
const dbus = require('dbus-next');
const { Message, Variant } = dbus;

const [mode = 'codec', ...args] = process.argv.slice(2);
if (mode === 'codec') await codec();
else if (mode === 'e2e') await e2e(Number(args[0] ?? 3), Number(args[1] ?? 4), args[2]?.split(','));
else if (mode === 'serve') await serve(args[0], args[1], args[2]);
else {
  console.error('usage: wire-compare.mjs codec | e2e [rounds] [seconds] | serve MODE NAME ADDRESS');
  process.exit(2);
}

// ---- codec ------------------------------------------------------------------

async function codec() {
  const { encodeMessage } = await import('../dist/src/dbus/wire/encoder.js');
  const { decodeMessage, messageLength } = await import('../dist/src/dbus/wire/decoder.js');
  const { marshallMessage, messageToJsFmt } = require('dbus-next/lib/marshall-compat.js');
  const DBusBuffer = require('dbus-next/lib/dbus-buffer.js');
  const headerSignature = require('dbus-next/lib/header-signature.json');
  const constants = require('dbus-next/lib/constants.js');

  // dbus-next's unmarshalMessages for one whole message in a buffer (its
  // stream reading left out), then messageToJsFmt and new Message, as its
  // connection does.
  function theirDecode(buf) {
    const fieldsLength = buf.readUInt32LE(12);
    const bodyLength = buf.readUInt32LE(4);
    const fieldsAndBody = buf.subarray(16);
    const messageBuffer = new DBusBuffer(fieldsAndBody, 0, constants.endianness.le, undefined, {});
    const fields = messageBuffer.readArray(headerSignature[0].child[0], fieldsLength);
    messageBuffer.align(3);
    const message = { serial: buf.readUInt32LE(8) };
    for (const f of fields) message[constants.headerTypeName[f[0]]] = f[1][1][0];
    message.type = buf[1];
    message.flags = buf[2];
    if (bodyLength > 0 && message.signature) message.body = messageBuffer.read(message.signature);
    return new Message(messageToJsFmt(message));
  }

  const map = {};
  for (let i = 0; i < 1000; i++) map[`vm-${String(i).padStart(4, '0')}`] = i % 3 ? 'running' : 'paused';
  const cases = [
    [
      '(a) method return b',
      { type: 2, serial: 1234, replySerial: 77, destination: ':1.42', signature: 'b', body: [true] },
    ],
    [
      '(b) signal ss',
      {
        type: 4,
        serial: 1235,
        path: '/org/example/dbustest',
        interface: 'org.example.dbustest.Module',
        member: 'DeviceDetached',
        signature: 'ss',
        body: ['vmdevd-demo-ivi', 'scsi'],
      },
    ],
    [
      '(c) TestMethod call sa{sas}',
      {
        type: 1,
        serial: 1236,
        path: '/org/example/dbustest',
        interface: 'org.example.dbustest.Module',
        member: 'TestMethod',
        destination: 'org.example.dbustest',
        sender: ':1.7',
        signature: 'sa{sas}',
        body: ['vm-0000', { d1: ['type=usb', 'vendor=0x1234', 'product=0x5678'], d2: ['type=disk', 'target=vdb'] }],
      },
    ],
    [
      '(d) method return v a{ss} x1000',
      {
        type: 2,
        serial: 1237,
        replySerial: 78,
        destination: ':1.42',
        signature: 'v',
        body: [new Variant('a{ss}', map)],
      },
    ],
  ];

  const rows = [];
  for (const [name, fields] of cases) {
    const msg = new Message(fields);
    msg.serial = fields.serial;
    const body = msg.body;
    const bytes = encodeMessage(msg);
    if (!bytes.equals(marshallMessage(msg)[0])) throw new Error(`${name}: the encoders disagree`);
    msg.body = body;
    const len = messageLength(bytes, 0);
    rows.push({
      case: name,
      bytes: bytes.length,
      'encode ours µs': time(() => encodeMessage(msg)),
      'encode dbus-next µs': time(() => {
        marshallMessage(msg);
        msg.body = body; // dbus-next's marshaller replaces the body
      }),
      'decode ours µs': time(() => decodeMessage(bytes, 0, len)),
      'decode dbus-next µs': time(() => theirDecode(bytes)),
    });
  }
  for (const r of rows) {
    r['encode ×'] = round(r['encode dbus-next µs'] / r['encode ours µs'], 1);
    r['decode ×'] = round(r['decode dbus-next µs'] / r['decode ours µs'], 1);
  }
  console.table(rows);
  console.log(JSON.stringify({ tool: 'wire-compare', kind: 'codec', node: process.version, rows }));
}

/** Median over 7 runs of the time per call, in µs. */
function time(fn) {
  const start = process.hrtime.bigint();
  let n = 0;
  while (process.hrtime.bigint() - start < 200_000_000n) {
    fn();
    n++;
  }
  const per = Math.max(1, Math.floor(n / 4));
  const samples = [];
  for (let run = 0; run < 7; run++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < per; i++) fn();
    samples.push(Number(process.hrtime.bigint() - t0) / per / 1000);
  }
  samples.sort((a, b) => a - b);
  return round(samples[3], 3);
}

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// ---- a bare server ------------------------------------------------------------

async function serve(serverMode, name, address) {
  let bus;
  if (serverMode === 'fast-immediate') {
    const { createFastConnection } = await import('../dist/src/dbus/wire/fast-connection.js');
    const MessageBus = require('dbus-next/lib/bus.js');
    bus = new MessageBus(createFastConnection({ busAddress: address, flush: 'immediate' }));
    await new Promise((resolve, reject) => {
      bus.once('connect', resolve);
      bus.once('error', reject);
    });
  } else if (serverMode === 'dbus-next') {
    // dbus-next's own connection, through its public API.
    bus = dbus.sessionBus({ busAddress: address });
    await new Promise((resolve, reject) => {
      bus.once('connect', resolve);
      bus.once('error', reject);
    });
  } else {
    const { openBus } = await import('../dist/src/dbus/bus-connection.js');
    bus = await openBus(address);
  }
  bus.addMethodHandler((msg) => {
    if (msg.member !== 'TestMethod') return false;
    bus.send(Message.newMethodReturn(msg, 'b', [true]));
    return true;
  });
  await bus.requestName(name, dbus.NameFlag.DO_NOT_QUEUE);
  console.log(`READY ${serverMode}`);
  process.on('SIGTERM', () => process.exit(0));
}

// ---- end to end ---------------------------------------------------------------

function startProcess(cmd, argv, env = process.env) {
  const child = spawn(cmd, argv, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  return {
    child,
    waitFor(re, ms = 10_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${cmd}: no ${re} within ${ms} ms; output: ${out}`)), ms);
        const check = () => {
          const m = re.exec(out);
          if (m) {
            clearTimeout(timer);
            child.stdout.off('data', check);
            resolve(m);
          }
        };
        child.stdout.on('data', check);
        child.once('exit', (code) => reject(new Error(`${cmd} exited (${code}); output: ${out}`)));
        check();
      });
    },
    stop() {
      if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      return new Promise((resolve) => {
        child.once('exit', resolve);
        child.kill('SIGTERM');
      });
    },
  };
}

function runLoad(address, dest, inflight, seconds) {
  return new Promise((resolve, reject) => {
    const load = spawn(
      `${root}/bench/c/build/load`,
      [
        '--call',
        'testmethod',
        '--address',
        address,
        '--dest',
        dest,
        '--path',
        '/org/example/dbustest',
        '--inflight',
        String(inflight),
        '--duration',
        String(seconds),
        '--expect-bool',
        'true',
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    load.stdout.on('data', (d) => (out += d));
    load.on('exit', (code) =>
      code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`load exited ${code}: ${out}`)),
    );
  });
}

function fail(why) {
  throw new Error(why);
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** `only`: server keys to run (ref, dbus-next, fast, immediate); the first is the reference of the ratios. */
async function e2e(rounds, seconds, only) {
  const { startPrivateBus } = await import('../dist/test/harness/dbus-daemon.js');
  const bus = await startPrivateBus();
  const started = [];
  try {
    let servers = [
      {
        key: 'sd-bus ref-server',
        name: 'org.example.ref',
        start: () =>
          startProcess(`${root}/bench/c/build/ref-server`, ['--address', bus.address, '--name', 'org.example.ref']),
      },
      {
        key: 'dbus-next connection',
        name: 'org.example.bare.dbusnext',
        start: () =>
          startProcess(process.execPath, [
            fileURLToPath(import.meta.url),
            'serve',
            'dbus-next',
            'org.example.bare.dbusnext',
            bus.address,
          ]),
      },
      {
        key: 'fast connection',
        name: 'org.example.bare.fast',
        start: () =>
          startProcess(process.execPath, [
            fileURLToPath(import.meta.url),
            'serve',
            'fast',
            'org.example.bare.fast',
            bus.address,
          ]),
      },
      {
        key: 'fast, setImmediate flush',
        name: 'org.example.bare.immediate',
        start: () =>
          startProcess(process.execPath, [
            fileURLToPath(import.meta.url),
            'serve',
            'fast-immediate',
            'org.example.bare.immediate',
            bus.address,
          ]),
      },
    ];
    const short = {
      ref: 'sd-bus ref-server',
      'dbus-next': 'dbus-next connection',
      fast: 'fast connection',
      immediate: 'fast, setImmediate flush',
    };
    if (only) servers = only.map((k) => servers.find((s) => s.key === short[k]) ?? fail(`unknown server ${k}`));
    for (const s of servers) {
      const p = s.start();
      started.push(p);
      const [line] = await p.waitFor(/^READY.*$/m);
      console.error(`${s.key}: ${line}`);
    }
    const results = [];
    for (let i = 1; i <= rounds; i++) {
      const row = { round: i };
      for (const s of servers) {
        const lat = await runLoad(bus.address, s.name, 1, seconds);
        const thr = await runLoad(bus.address, s.name, 16, seconds);
        row[s.key] = { p50: lat.latency.p50_us, p99: lat.latency.p99_us, rate16: Math.round(thr.calls_per_s) };
      }
      results.push(row);
      console.error(`round ${i}: ${JSON.stringify(row)}`);
    }
    const table = servers.map((s) => {
      const ref = (r) => r[servers[0].key];
      const p50s = results.map((r) => r[s.key].p50);
      return {
        server: s.key,
        'p50 µs (median)': median(p50s),
        'p99 µs (median)': median(results.map((r) => r[s.key].p99)),
        'calls/s @16 (median)': median(results.map((r) => r[s.key].rate16)),
        'p50 / ref, per round': results.map((r) => round(r[s.key].p50 / ref(r).p50, 2)).join(' '),
        'calls/s / ref, per round': results.map((r) => round(r[s.key].rate16 / ref(r).rate16, 2)).join(' '),
      };
    });
    console.table(table);
    console.log(JSON.stringify({ tool: 'wire-compare', kind: 'e2e', rounds, seconds, results }));
  } finally {
    for (const p of started.reverse()) await p.stop();
    await bus.stop();
  }
}
