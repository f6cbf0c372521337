import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';

const LOGGER = new URL('../../src/core/logger.js', import.meta.url).href;

/** Runs `body` in a node of its own with a `log` (component `t`, level info); returns its stderr. */
function stderrOf(body: string, env: NodeJS.ProcessEnv = {}): string {
  const script = `import { RootLogger } from ${JSON.stringify(LOGGER)};
const log = new RootLogger('info').child('t');
${body}`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
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

  it("starts each line with the journal's priority under systemd", () => {
    const out = stderrOf(`log.info('one'); log.error('two');`, { JOURNAL_STREAM: '8:1' });
    assert.deepEqual(out.split('\n').filter(Boolean), ['<6>t: one', '<3>t: two']);
  });
});
