/** libvirt's domain states and lifecycle events in vmdevd's state vocabulary. */
import type { VmState } from 'vmdevd/plugin-api';
import { constants as C } from './binding.js';

/** A `VIR_DOMAIN_<STATE>` as a vmdevd state. */
export function domainState(state: number): VmState {
  switch (state) {
    case C.VIR_DOMAIN_RUNNING:
      return 'running';
    case C.VIR_DOMAIN_BLOCKED:
      return 'blocked';
    case C.VIR_DOMAIN_PAUSED:
      return 'paused';
    case C.VIR_DOMAIN_SHUTDOWN:
      return 'shutdown';
    case C.VIR_DOMAIN_SHUTOFF:
      return 'shutoff';
    case C.VIR_DOMAIN_CRASHED:
      return 'crashed';
    case C.VIR_DOMAIN_PMSUSPENDED:
      return 'pmsuspended';
    default:
      return 'nostate';
  }
}

/**
 * The state a lifecycle event leaves the domain in, or undefined when the
 * event says nothing about it (defined, undefined: those change which
 * domains exist and are looked up instead).
 */
export function stateAfterEvent(event: number): VmState | undefined {
  switch (event) {
    case C.VIR_DOMAIN_EVENT_STARTED:
    case C.VIR_DOMAIN_EVENT_RESUMED:
      return 'running';
    case C.VIR_DOMAIN_EVENT_SUSPENDED:
      return 'paused';
    case C.VIR_DOMAIN_EVENT_STOPPED:
      return 'shutoff';
    case C.VIR_DOMAIN_EVENT_SHUTDOWN:
      return 'shutdown';
    case C.VIR_DOMAIN_EVENT_PMSUSPENDED:
      return 'pmsuspended';
    case C.VIR_DOMAIN_EVENT_CRASHED:
      return 'crashed';
    default:
      return undefined;
  }
}
