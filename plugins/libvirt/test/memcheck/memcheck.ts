/**
 * Runs workload.ts under valgrind's memcheck and reads its XML report.
 *
 * Node itself is not valgrind-clean (V8 scans stacks conservatively, and
 * leaves allocations behind at exit), so findings are split by their
 * stack: a finding is ours when a frame of its stack (the allocation stack
 * for a leak) lies in the addon or in libvirt, which the process only
 * reaches through the addon. The check fails on any finding of ours:
 * invalid reads or writes, uses of uninitialised memory, bad frees, and
 * definitely lost blocks.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startLibvirtd } from 'vmdevd/testing/libvirtd';
import { createTestVm } from 'vmdevd/testing/test-vms';
import { create } from 'xmlbuilder2';
import { Connection } from '../../src/binding.js';
import type { WorkloadConfig, WorkloadResult } from './workload.js';

export interface MemcheckOptions {
  /** Open/call/close cycles on test:///default. Default 300. */
  readonly testCycles?: number;
  /** Detach/re-attach cycles on a QEMU VM (needs libvirtd and QEMU); 0 skips them. Default 100. */
  readonly qemuCycles?: number;
  /** Connections left to the garbage collector, on test:///default and (with QEMU cycles) on the daemon. Default 20. */
  readonly gcConnections?: number;
  /** Default 3. */
  readonly workerConnections?: number;
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

export interface Finding {
  readonly kind: string;
  readonly what: string;
  /** For leaks. */
  readonly bytes: number;
  /** `function (object file)`, innermost first. */
  readonly frames: readonly string[];
  readonly ours: boolean;
}

export interface MemcheckReport {
  readonly config: WorkloadConfig;
  readonly workload: WorkloadResult | undefined;
  readonly exitCode: number | null;
  readonly stderr: string;
  readonly seconds: number;
  readonly findings: readonly Finding[];
  /** The findings of ours: each one fails the check. */
  readonly ours: readonly Finding[];
  readonly definitelyLostBytes: { readonly ours: number; readonly other: number };
  /** Whether the whole check passed: workload done, every close() 0, nothing of ours. */
  readonly passed: boolean;
}

const WORKLOAD = fileURLToPath(new URL('./workload.js', import.meta.url));
const OUR_OBJECTS = /vmdevd_libvirt\.node$|\/libvirt\.so[.0-9]*$/;

/** The little of the DOM that xmlbuilder2's parsed document offers and this file reads. */
interface XmlElement {
  readonly textContent: string | null;
  getElementsByTagName(tag: string): ArrayLike<XmlElement | undefined>;
}

function first(element: XmlElement | undefined, tag: string): XmlElement | undefined {
  return element?.getElementsByTagName(tag)[0];
}

function text(element: XmlElement | undefined, tag: string): string {
  return first(element, tag)?.textContent?.trim() ?? '';
}

/** The findings in a valgrind `--xml=yes` report. */
export function parseValgrindXml(xml: string): Finding[] {
  const document = create(xml).node as unknown as XmlElement;
  const findings: Finding[] = [];
  for (const error of Array.from(document.getElementsByTagName('error'))) {
    const kind = text(error, 'kind');
    const what = text(error, 'what') || text(first(error, 'xwhat'), 'text');
    const leakedBytes = Number(text(first(error, 'xwhat'), 'leakedbytes') || 0);
    // The first stack is the one the finding is about (for a leak, where
    // the block was allocated); auxiliary stacks follow.
    const stack = first(error, 'stack');
    const frames = Array.from(stack?.getElementsByTagName('frame') ?? []).map((frame) => {
      const object = text(frame, 'obj');
      return { fn: text(frame, 'fn') || text(frame, 'ip'), object };
    });
    findings.push({
      kind,
      what,
      bytes: leakedBytes,
      frames: frames.map((frame) => `${frame.fn} (${frame.object.split('/').pop() ?? ''})`),
      ours: frames.some((frame) => OUR_OBJECTS.test(frame.object)),
    });
  }
  return findings;
}

function run(
  command: string,
  args: string[],
  timeoutMs: number,
): Promise<{ exitCode: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (exitCode) => {
      clearTimeout(timer);
      resolve({ exitCode, stdout, stderr });
    });
  });
}

async function runValgrind(config: WorkloadConfig, dir: string): Promise<Omit<MemcheckReport, 'config' | 'passed'>> {
  const configFile = join(dir, 'workload.json');
  const xmlFile = join(dir, 'memcheck.xml');
  await writeFile(configFile, JSON.stringify(config));
  const started = Date.now();
  const result = await run(
    'valgrind',
    [
      '--tool=memcheck',
      '--leak-check=full',
      '--show-leak-kinds=definite,indirect',
      '--errors-for-leak-kinds=definite,indirect',
      '--num-callers=40',
      '--xml=yes',
      `--xml-file=${xmlFile}`,
      process.execPath,
      '--expose-gc',
      WORKLOAD,
      configFile,
    ],
    30 * 60_000,
  );
  const seconds = (Date.now() - started) / 1000;
  const line = /^memcheck-workload: (.*)$/m.exec(result.stdout)?.[1];
  const workload = line === undefined ? undefined : (JSON.parse(line) as WorkloadResult);
  const findings = parseValgrindXml(await readFile(xmlFile, 'utf8'));
  const ours = findings.filter((finding) => finding.ours);
  const lost = (mine: boolean): number =>
    findings
      .filter((finding) => finding.kind === 'Leak_DefinitelyLost' && finding.ours === mine)
      .reduce((sum, finding) => sum + finding.bytes, 0);
  return {
    workload,
    exitCode: result.exitCode,
    stderr: result.stderr,
    seconds,
    findings,
    ours,
    definitelyLostBytes: { ours: lost(true), other: lost(false) },
  };
}

/**
 * Runs the workload under valgrind; with QEMU cycles, against a test VM on
 * a libvirtd started (or found) for the purpose, all removed afterwards.
 */
export async function runMemcheck(options: MemcheckOptions = {}): Promise<MemcheckReport> {
  const log = options.log ?? (() => {});
  const qemuCycles = options.qemuCycles ?? 100;
  const dir = await mkdtemp(join(tmpdir(), 'vmdevd-memcheck-'));
  const cleanups: Array<() => Promise<unknown>> = [() => rm(dir, { recursive: true, force: true })];
  try {
    let qemu: WorkloadConfig['qemu'];
    if (qemuCycles > 0) {
      const libvirtd = await startLibvirtd();
      cleanups.unshift(() => libvirtd.stop());
      const connection = await Connection.open(libvirtd.uri);
      cleanups.unshift(() => connection.close());
      const vm = await createTestVm(connection, { type: 'memcheck' });
      cleanups.unshift(() => vm.remove());
      log(
        `test VM ${vm.name} (${vm.virtType}) on ${libvirtd.uri}, libvirtd ${libvirtd.owned ? 'started here' : 'of the host'}`,
      );
      qemu = {
        uri: libvirtd.uri,
        uuid: vm.uuid,
        deviceXml: vm.devices.usbDisk.xml,
        alias: vm.devices.usbDisk.alias,
        cycles: qemuCycles,
        gcConnections: options.gcConnections ?? 20,
      };
    }
    const config: WorkloadConfig = {
      testCycles: options.testCycles ?? 300,
      ...(qemu === undefined ? {} : { qemu }),
      gcConnections: options.gcConnections ?? 20,
      workerConnections: options.workerConnections ?? 3,
    };
    log(
      `valgrind: ${config.testCycles} test:///default cycles, ${qemuCycles} QEMU detach/attach cycles, ` +
        `${config.gcConnections} connections left to GC (as many again on the daemon with QEMU cycles), ` +
        `${config.workerConnections} in a terminated worker`,
    );
    const report = await runValgrind(config, dir);
    const passed =
      report.exitCode === 0 &&
      report.workload !== undefined &&
      report.workload.testCycles === config.testCycles &&
      report.workload.qemuCycles === (config.qemu?.cycles ?? 0) &&
      report.workload.nonZeroCloses.length === 0 &&
      report.ours.length === 0;
    return { config, ...report, passed };
  } finally {
    for (const cleanup of cleanups) {
      try {
        await cleanup();
      } catch (error) {
        log(`cleanup failed: ${String(error)}`);
      }
    }
  }
}

/** A report for people. */
export function formatReport(report: MemcheckReport): string {
  const lines: string[] = [];
  const workload = report.workload;
  lines.push(
    `memcheck ${report.passed ? 'PASSED' : 'FAILED'} in ${report.seconds.toFixed(1)} s (valgrind exit code ${report.exitCode})`,
  );
  if (workload === undefined) {
    lines.push('the workload did not finish; its stderr:', report.stderr.slice(-4000));
  } else {
    lines.push(
      `cycles: ${workload.testCycles} on test:///default, ${workload.qemuCycles} detach/attach on QEMU; ` +
        `${workload.eventsReceived} events received; workload ${(workload.durationMs / 1000).toFixed(1)} s under valgrind`,
      `close() results other than 0: ${workload.nonZeroCloses.length === 0 ? 'none' : workload.nonZeroCloses.join(', ')}`,
    );
  }
  const byKind = (findings: readonly Finding[]): string => {
    const counts = new Map<string, number>();
    for (const finding of findings) counts.set(finding.kind, (counts.get(finding.kind) ?? 0) + 1);
    return counts.size === 0 ? 'none' : [...counts].map(([kind, count]) => `${kind} x${count}`).join(', ');
  };
  lines.push(
    `findings in the addon or libvirt: ${byKind(report.ours)}; definitely lost ${report.definitelyLostBytes.ours} bytes`,
    `findings elsewhere (Node/V8, not failing): ${byKind(report.findings.filter((finding) => !finding.ours))}; definitely lost ${report.definitelyLostBytes.other} bytes`,
  );
  for (const finding of report.ours) {
    lines.push('', `${finding.kind}: ${finding.what}`, ...finding.frames.slice(0, 16).map((frame) => `    ${frame}`));
  }
  return lines.join('\n');
}
