/**
 * The README's "Try it from a checkout" and every example marked to run
 * there, as printed: the setup block starts the bus and vmdevd exactly as
 * written (with the socket moved into a temporary directory), then each
 * `console` transcript is run command by command and its output compared
 * with the lines printed under it, and the Node and Python programs are run
 * and their output compared with the "prints" block after them. An example
 * that drifts from the code fails here.
 */
import assert from 'node:assert/strict';
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestClient } from '../harness/bus-client.js';
import { run, startProcess, type ManagedProcess } from '../harness/process.js';
import { makeTempDir, type TempDir } from '../harness/temp-dir.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
const TRY_SOCKET = '/tmp/vmdevd-try.sock';

/** The code block after `<!-- example: NAME -->`, and the plain block that follows it (what it prints), if any. */
function example(name: string): { lang: string; code: string; prints: string | undefined } {
  const m = new RegExp(
    `<!-- example: ${name} -->\\s*\`\`\`(\\w*)\\n([\\s\\S]*?)\\n\`\`\`(?:\\s*prints\\s*\`\`\`\\n([\\s\\S]*?)\\n\`\`\`)?`,
  ).exec(README);
  assert.ok(m, `the README has the ${name} example`);
  return { lang: m[1]!, code: m[2]!, prints: m[3] };
}

/** A console transcript: `$ command` lines, each followed by the lines it prints. */
function transcript(code: string): Array<{ command: string; output: string }> {
  const steps: Array<{ command: string; output: string[] }> = [];
  for (const line of code.split('\n')) {
    if (line.startsWith('$ ')) steps.push({ command: line.slice(2), output: [] });
    else steps.at(-1)!.output.push(line);
  }
  return steps.map((s) => ({ command: s.command, output: s.output.map((l) => `${l}\n`).join('') }));
}

describe('the README, tried from a checkout', () => {
  let dir: TempDir;
  let socket: string;
  const processes: ManagedProcess[] = [];
  let env: NodeJS.ProcessEnv;

  before(async () => {
    dir = makeTempDir('vmdevd-try-');
    socket = dir.file('try.sock');
    const setup = example('try-setup');
    assert.equal(setup.lang, 'sh');
    const lines = setup.code.split('\n');
    // The suite runs on a built checkout: the first line is what made it.
    assert.equal(lines[0], 'npm ci && npm run build');
    for (const line of lines.slice(1)) {
      const argv = line.replace(/ &$/, '').replaceAll(TRY_SOCKET, socket).split(' ');
      const proc = startProcess(argv[0]!, argv.slice(1), { cwd: REPO_ROOT });
      processes.push(proc);
      if (argv[0] === 'dbus-daemon') {
        await until(() => run('test', ['-S', socket]).then((r) => r.code === 0), 'the bus socket');
      }
    }
    env = { ...process.env, DBUS_SESSION_BUS_ADDRESS: `unix:path=${socket}` };
    const client = await TestClient.connect(`unix:path=${socket}`);
    try {
      await until(async () => (await client.nameOwner()) !== undefined, 'vmdevd on the bus');
    } finally {
      client.close();
    }
  });
  after(async () => {
    for (const p of processes.reverse()) await p.stop();
    dir?.remove();
  });

  for (const name of ['try-vmdevctl', 'try-busctl']) {
    it(`${name}: every command prints what the README shows`, async () => {
      const { lang, code } = example(name);
      assert.equal(lang, 'console');
      for (const step of transcript(code)) {
        const r = await run('bash', ['-c', step.command], { cwd: REPO_ROOT, env });
        assert.equal(r.code, 0, `${step.command}\n${r.stderr}`);
        assert.equal(r.stdout, step.output, step.command);
      }
    });
  }

  it('try-node: the client program prints what the README shows', async () => {
    const { lang, code, prints } = example('try-node');
    assert.equal(lang, 'js');
    // As in the checkout: vmdevd resolves to the checkout's package.
    const where = dir.file('node');
    await run('mkdir', ['-p', join(where, 'node_modules')]);
    symlinkSync(REPO_ROOT, join(where, 'node_modules', 'vmdevd'));
    writeFileSync(join(where, 'try-client.mjs'), code);
    const r = await run(process.execPath, ['try-client.mjs'], { cwd: where, env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${prints}\n`);
  });

  it('try-python: the Python program prints what the README shows', async () => {
    const { lang, code, prints } = example('try-python');
    assert.equal(lang, 'python');
    const script = dir.file('try_client.py');
    writeFileSync(script, code);
    const r = await run('/usr/bin/python3', [script], { cwd: REPO_ROOT, env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${prints}\n`);
  });

  it('minimal-backend: the plugin example is examples/memory-backend, which the try-it config loads', () => {
    const { code } = example('minimal-backend');
    assert.equal(`${code}\n`, readFileSync(join(REPO_ROOT, 'examples/memory-backend/src/index.ts'), 'utf8'));
    const config = JSON.parse(readFileSync(join(REPO_ROOT, 'examples/try-it.json'), 'utf8')) as {
      backends: Array<{ plugin: string }>;
    };
    assert.ok(config.backends.some((b) => b.plugin === './memory-backend'));
  });
});

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`${what}: not there within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
