import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stderrSink } from '../../src/core/logger.js';

const LOGGER = new URL('../../src/core/logger.js', import.meta.url).href;

/** Runs `body` in a node of its own with a `log` (component `t`, level info); returns its stderr. */
function stderrOf(body: string, env: NodeJS.ProcessEnv = {}): string {
  const script = `import { RootLogger } from ${JSON.stringify(LOGGER)};
const root = new RootLogger('info');
const log = root.child('t');
${body}`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    env: { PATH: process.env['PATH'], ...env },
  });
  assert.equal(child.error, undefined);
  return child.stderr;
}

/** The lines without their time stamps. */
const lines = (text: string) =>
  text
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/^\S+ /, ''));

describe('the log on stderr', () => {
  it('writes each line with its fields as they were when it was logged', () => {
    const out = stderrOf(`const fields = { n: 1, text: 'a b' };
log.info('one', fields);
fields.n = 2;
fields.text = 'c';
log.info('two', fields);`);
    assert.deepEqual(lines(out), ['info  t: one n=1 text="a b"', 'info  t: two n=2 text=c']);
  });

  it('holds info lines back, and writes them in order with the next warning at once', () => {
    // SIGKILL: no exit handler writes what is still held.
    const held = stderrOf(`log.info('held'); process.kill(process.pid, 'SIGKILL');`);
    assert.equal(held, '');
    const out = stderrOf(
      `log.info('first'); log.warn('second'); log.info('third'); process.kill(process.pid, 'SIGKILL');`,
    );
    assert.deepEqual(lines(out), ['info  t: first', 'warn  t: second']);
  });

  it('writes what it holds when the process exits', () => {
    const out = stderrOf(`log.info('last'); process.exit(0);`);
    assert.deepEqual(lines(out), ['info  t: last']);
  });

  it('writes every line, in order, by the time drain resolves', () => {
    const out = stderrOf(`for (let i = 0; i < 20000; i++) log.info('line', { i });
await root.drain();
log.info('after');
await root.drain();
process.kill(process.pid, 'SIGKILL');`);
    const expected = Array.from({ length: 20000 }, (_, i) => `info  t: line i=${i}`);
    assert.deepEqual(lines(out), [...expected, 'info  t: after']);
  });

  it('writes text that is not ASCII, in short and long pieces, across many writes in turn', () => {
    // Lines logged over many turns of the loop, so that the two buffers
    // take turns while writes are in flight.
    const out = stderrOf(`const long = 'é€😀'.repeat(200) + 'x';
for (let turn = 0; turn < 50; turn++) {
  for (let i = 0; i < 100; i++) log.info('é line', { turn, i, short: 'aé€😀b', long, lone: 'a\\ud800b' });
  await new Promise((resolve) => setImmediate(resolve));
}
await root.drain();
process.kill(process.pid, 'SIGKILL');`);
    const long = 'é€😀'.repeat(200) + 'x';
    const expected: string[] = [];
    for (let turn = 0; turn < 50; turn++)
      for (let i = 0; i < 100; i++)
        expected.push(`info  t: é line turn=${turn} i=${i} short=aé€😀b long=${long} lone=a\ufffdb`);
    assert.deepEqual(lines(out), expected);
  });

  it('keeps each line one line, and logs values that JSON cannot encode', () => {
    const out = stderrOf(
      `log.info('two\\nlines', { text: 'a\\nb', n: 12n, odd: { toJSON() { throw new Error('no'); } } });`,
    );
    assert.deepEqual(lines(out), ['info  t: two\\nlines text="a\\nb" n=12 odd="(unencodable object)"']);
  });

  it('drops what is past 4 MiB held, and says how many', () => {
    // One synchronous loop: nothing can be written before it ends, so everything is held.
    const out = stderrOf(`const pad = 'x'.repeat(80);
for (let i = 0; i < 60000; i++) log.info('line', { i, pad });
await root.drain();
log.info('after');
await root.drain();
process.kill(process.pid, 'SIGKILL');`);
    const got = lines(out);
    const kept = got.filter((l) => l.startsWith('info  t: line '));
    assert.ok(kept.length > 0 && kept.length < 60000, `${kept.length} lines kept`);
    kept.forEach((l, i) => assert.ok(l.startsWith(`info  t: line i=${i} `), l));
    // Held up to 4 MiB (ASCII: a byte per character): one line more would have gone past.
    const heldChars = out.indexOf('warn  log: ');
    assert.ok(heldChars <= 4 * 1024 * 1024 && heldChars + out.indexOf('\n') + 1 > 4 * 1024 * 1024, `${heldChars}`);
    assert.deepEqual(got.slice(kept.length), [
      `warn  log: ${60000 - kept.length} lines dropped: the log file took nothing for too long`,
      'info  t: after',
    ]);
  });

  it('waits for a full pipe that something made non-blocking, and loses nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmdevd-log-'));
    const fifo = join(dir, 'log');
    execFileSync('mkfifo', [fifo]);
    const fd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    let reader: number | undefined;
    try {
      const sink = stderrSink(fd);
      let expected = '';
      for (let i = 0; i < 5000; i++) {
        const line = `line ${i} ${'x'.repeat(60)}\n`;
        expected += line;
        sink.write(line);
      }
      let drained = false;
      const drain = sink.drain!().then(() => (drained = true));
      // 340 KB for a pipe of 64 KiB that nobody reads yet: writes end in EAGAIN until the reader below takes.
      reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
      const buf = Buffer.alloc(65536);
      let got = '';
      for (;;) {
        try {
          const n = readSync(reader, buf);
          got += buf.toString('latin1', 0, n);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
          if (drained) break;
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      }
      await drain;
      assert.equal(got.length, expected.length);
      assert.ok(got === expected, 'the lines as they were logged, in order');
    } finally {
      closeSync(fd);
      if (reader !== undefined) closeSync(reader);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("starts each line with the journal's priority under systemd", () => {
    const out = stderrOf(`log.info('one'); log.error('two');`, { JOURNAL_STREAM: '8:1' });
    assert.deepEqual(out.split('\n').filter(Boolean), ['<6>t: one', '<3>t: two']);
  });
});
