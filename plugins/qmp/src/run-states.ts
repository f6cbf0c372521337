/**
 * QEMU's run states and state events in vmdevd's state vocabulary, mapped
 * as libvirt's QEMU driver maps them.
 */
import type { VmState } from 'vmdevd/plugin-api';

/** The `status` of `query-status` as a vmdevd state. */
export function runState(status: string): VmState {
  switch (status) {
    case 'running':
      return 'running';
    case 'paused':
    case 'prelaunch':
    case 'inmigrate':
    case 'postmigrate':
    case 'finish-migrate':
    case 'io-error':
    case 'save-vm':
    case 'watchdog':
    case 'debug':
    case 'internal-error':
    case 'restore-vm':
    case 'colo':
      return 'paused';
    case 'shutdown':
      return 'shutdown';
    case 'guest-panicked':
      return 'crashed';
    case 'suspended':
      return 'pmsuspended';
    default:
      return 'nostate';
  }
}

/** What a state event means for the VM. */
export type EventEffect =
  /** The VM is now in this state. */
  | { readonly state: VmState }
  /** Ask `query-status`: the event does not say (a reset). */
  | { readonly refresh: true }
  /** Not a state event, or one that changes nothing. */
  | undefined;

/**
 * The effect of an event on a VM in state `current`. A `STOP` that follows
 * a guest's shutdown or panic (QEMU stops the CPUs after both) leaves the
 * VM shut down or crashed, as `query-status` then says.
 */
export function eventEffect(event: string, data: Readonly<Record<string, unknown>>, current: VmState): EventEffect {
  switch (event) {
    case 'STOP':
      return current === 'shutdown' || current === 'crashed' ? undefined : { state: 'paused' };
    case 'RESUME':
    case 'WAKEUP':
      return { state: 'running' };
    case 'SHUTDOWN':
      return { state: 'shutdown' };
    case 'SUSPEND':
      return { state: 'pmsuspended' };
    case 'GUEST_PANICKED':
      // action "run": QEMU was told to let the guest go on.
      return data['action'] === 'run' ? undefined : { state: 'crashed' };
    case 'RESET':
      // From a shut-down or panicked state a reset leaves the VM in prelaunch
      // (paused); from running it stays running.
      return { refresh: true };
    case 'POWERDOWN':
      // Only a request to the guest (the ACPI power button): nothing changed yet.
      return undefined;
    default:
      return undefined;
  }
}
