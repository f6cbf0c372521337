// `npm run test:memcheck -w plugins/libvirt [-- --test-cycles N --qemu-cycles N]`:
// the valgrind check on its own, with a report for people.
import { parseArgs } from 'node:util';
import { formatReport, runMemcheck } from './memcheck.js';

const { values } = parseArgs({
  options: {
    'test-cycles': { type: 'string' },
    'qemu-cycles': { type: 'string' },
  },
});

function count(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0) throw new Error(`not a count: ${value}`);
  return parsed;
}

const testCycles = count(values['test-cycles']);
const qemuCycles = count(values['qemu-cycles']);
const report = await runMemcheck({
  ...(testCycles === undefined ? {} : { testCycles }),
  ...(qemuCycles === undefined ? {} : { qemuCycles }),
  log: (line) => console.log(line),
});
console.log(formatReport(report));
process.exitCode = report.passed ? 0 : 1;
