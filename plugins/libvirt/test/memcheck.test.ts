// The memory-safety check in the suite: the valgrind run of memcheck/
// (also `npm run test:memcheck`). It takes a few minutes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatReport, runMemcheck } from './memcheck/memcheck.js';

test(
  'hundreds of connection cycles leave no memory error or leak in the addon or libvirt',
  { timeout: 20 * 60_000 },
  async (t) => {
    const report = await runMemcheck({ log: (line) => t.diagnostic(line) });
    const summary = formatReport(report);
    for (const line of summary.split('\n')) t.diagnostic(line);
    assert.ok(report.workload, `the workload did not finish:\n${summary}`);
    assert.equal(report.workload.testCycles, report.config.testCycles);
    assert.equal(report.workload.qemuCycles, report.config.qemu?.cycles ?? 0);
    assert.deepEqual(report.workload.nonZeroCloses, [], 'every close() resolves 0');
    assert.deepEqual(report.ours, [], summary);
    assert.equal(report.exitCode, 0, summary);
    assert.ok(report.passed, summary);
  },
);
